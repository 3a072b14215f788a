"""The fault-injection matrix: every step of the DAG survives an exception, and ``generate_hints``, ``train`` and
``evaluate`` a SIGKILL of their task process, each followed by ``resume``; the resumed run ends with the
same result as one uninterrupted reference run. Also: a corrupt newest checkpoint, a truncated ``latest``
pointer, a resume of a failed resume, a resume with every checkpoint corrupt (fails loudly; starts over
only when asked), a lost machine's hint cache, and ``train`` killed on the S3 datastore (a local moto server).

"Same result": ``train_metrics`` equal in every non-timing column, the trained policy's weight fingerprint
(``ptdpo.models.policy_fingerprint``), ``eval_results`` and the hints table's hash.

How it stays within a few minutes on 2 cores: the faults of one test form one resume chain. The ``fault``
Parameter holds one entry per run of the chain (``flows/_faults.py``); ``resume`` re-runs from the failed
step and clones the rest, so each link costs one failed task plus Metaflow's start-up, and every chain
ends in a run that completed. The config is minimal: 8 items in 2 hint shards, 3 training steps with a
checkpoint after each, one benchmark of 2 items on the trained model only, no retries.

docs/reliability.md has the matrix as a table, with what a user does after each fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "ptdpo_flow.py"
TINY = ROOT / "configs" / "tiny.json"
STEPS = ["start", "prepare_data", "generate_hints", "join_hints", "audit", "train", "trained", "evaluate",
         "join_eval", "report", "end"]
TIMING = ("time_", "tokens_per_s")

pytestmark = pytest.mark.slow

FAULT_CONFIG = {
    "extends": str(TINY), "name": "fault-matrix",
    "data": {"train": {"format": "synthetic", "n": 8, "seed": 0, "split": "train", "difficulty": [1, 2],
                       "image_size": 64}},
    "hints": {"shards": 2, "cache_sync_s": 0},
    "train": {"max_steps": 3, "checkpoint_every": 1, "keep_checkpoints": 3},
    "retry": {"generate_hints": {"times": 0}, "train": {"times": 0}, "evaluate": {"times": 0}},
    "eval": {"benchmarks": [{"name": "synthetic_id", "limit": 2}], "models": ["trained"]},
}


# ------------------------------------------------------------------------------------------ plumbing
# Metaflow's Runner replaces typing._collect_parameters for the whole process (see tests/test_flow_e2e.py);
# the original, taken before any Runner exists, is put back after each Runner call.
_COLLECT_PARAMETERS = getattr(typing, "_collect_parameters", None)


def _restore_typing() -> None:
    if _COLLECT_PARAMETERS is not None:
        typing._collect_parameters = _COLLECT_PARAMETERS


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]
    config: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tmp(self) -> Path:
        return Path(self.env["TMPDIR"])


def _local_env(root: Path) -> dict[str, str]:
    (root / "mfhome").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return {
        "USERNAME": "ptdpo-test", "METAFLOW_USER": "ptdpo-test", "METAFLOW_HOME": str(root / "mfhome"),
        "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
        "PTDPO_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        # the tasks' temp dir: training folders and the local hint cache land here, where the test sees them
        "TMPDIR": str(root / "tmp"),
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One local datastore for the reference and every chain (runs stay apart by run id); this process
    reads it from its folder as a user across namespaces."""
    from metaflow import namespace

    root = tmp_path_factory.mktemp("faults")
    (root / ".metaflow").mkdir()
    config = root / "fault-config.json"
    config.write_text(json.dumps(FAULT_CONFIG))
    here = os.getcwd()
    os.chdir(root)
    namespace(None)
    try:
        yield Workspace(root, _local_env(root), config)
    finally:
        os.chdir(here)
        _restore_typing()


@dataclass
class Link:
    """One run of a chain: its Run and the whole run's logs."""

    run: object
    status: str
    stdout: str
    stderr: str

    @property
    def logs(self) -> str:
        return self.stdout + self.stderr


def _runner(ws: Workspace, fresh: bool, env: dict[str, str] | None = None):
    from metaflow import Runner

    kwargs = {"config": [("config", str(ws.config))]} if fresh else {}
    r = Runner(str(FLOW), show_output=False, env=env or ws.env, cwd=str(ws.root), **kwargs)
    _restore_typing()
    return r


def _start(ws: Workspace, fault: str) -> Link:
    with _runner(ws, True) as r:
        res = r.run(fault=fault) if fault else r.run()
        link = Link(res.run, res.status, res.stdout, res.stderr)
    _restore_typing()
    return link


def _resume(ws: Workspace, origin: str, tags: list[str] | None = None) -> Link:
    with _runner(ws, False) as r:
        res = r.resume(origin_run_id=origin, **({"tags": tags} if tags else {}))
        link = Link(res.run, res.status, res.stdout, res.stderr)
    _restore_typing()
    return link


def _failed_steps(run) -> set[str]:
    return {s.id for s in run for t in s if not t.successful}


def _assert_failed_at(link: Link, step: str, what: str) -> None:
    assert link.status == "failed", f"expected a failure at {step}: {link.logs[-3000:]}"
    failed = _failed_steps(link.run)
    assert step in failed, (step, failed, link.logs[-3000:])
    assert what in link.logs, (what, link.logs[-3000:])


def _result(run) -> dict:
    """What "the same result" compares, as plain values."""
    from metaflow import load_model

    from ptdpo.models import load_policy, policy_fingerprint

    d = run.data
    cols = [c for c in d.train_metrics.columns if not c.startswith(TIMING)]
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"policy-{run.id}"
    shutil.rmtree(folder, ignore_errors=True)
    load_model(d.policy, str(folder))
    model, _ = load_policy(str(folder))
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "train_metrics": d.train_metrics[cols].to_csv(index=False, float_format="%.17g"),
        "policy": policy_fingerprint(model, length=64),
        "eval_results": d.eval_results.to_csv(index=False, float_format="%.17g"),
        "hints_hash": d.hints_hash,
    }


def _result_json(pathspec: str) -> str:
    """:func:`_result` of a run read in a subprocess (the S3 datastore needs its own Metaflow settings)."""
    from metaflow import Run, namespace

    namespace(None)
    return json.dumps(_result(Run(pathspec)))


@pytest.fixture(scope="module")
def reference(ws):
    """The uninterrupted run every chain is compared with."""
    t0 = time.time()
    link = _start(ws, "")
    ws.timings["reference run"] = time.time() - t0
    assert link.status == "successful", link.logs[-4000:]
    d = link.run.data
    assert list(d.train_metrics["step"]) == [1, 2, 3] and d.resumed_from_step == 0 and d.resumed_from is None
    assert d.resume_chain == [] and len(d.hints) == 8
    return _result(link.run)


def _assert_same(result: dict, reference: dict) -> None:
    for key in ("hints_hash", "train_metrics", "policy", "eval_results"):
        assert result[key] == reference[key], (key, result[key], reference[key])


def _no_training_folders_left(ws: Workspace) -> None:
    left = sorted(p.name for p in ws.tmp.glob("ptdpo-train-*"))
    assert left == [], left


def _checkpoint_refs(run) -> dict[int, dict]:
    """step -> checkpoint reference saved by the run's train task."""
    from metaflow import Checkpoint

    task = run["train"].task
    return {int(r["metadata"]["step"]): r for r in Checkpoint().list(task=task, attempt=int(task.current_attempt))}


def _stored_folder(ref: dict) -> Path:
    """The checkpoint's files in the local datastore (stored as they are: metaflow-checkpoint's "files")."""
    return Path(ref["url"])


def _flip(path: Path) -> bytes:
    """Flip 16 bytes in the middle of ``path`` (same size); returns the original bytes."""
    original = path.read_bytes()
    b = bytearray(original)
    b[len(b) // 2:len(b) // 2 + 16] = bytes(x ^ 0xFF for x in b[len(b) // 2:len(b) // 2 + 16])
    path.write_bytes(bytes(b))
    return original


# ------------------------------------------------------------------------------------------ the matrix
def test_an_exception_at_every_step_then_resume(ws, reference):
    """One chain: each step of the DAG raises in turn (``<step>:raise``), and each failure is resumed. In the
    middle, every checkpoint of the failed ``train`` is corrupted: the next resume fails loudly at
    ``train`` (it never starts over on its own), and the one after, tagged ``restart_training``, trains
    from the base policy as asked. The chain's last run equals the reference."""
    t0 = time.time()
    train_at = STEPS.index("train")
    entries = [f"{s}:raise" for s in STEPS]
    # after train raises (at the end of the step: every checkpoint and the weights were saved): one run
    # that fails by itself at train, no fault needed
    entries.insert(train_at + 1, "-")
    link = _start(ws, ",".join(entries))
    runs = [link.run]
    for depth, entry in enumerate(entries):
        if entry == "-":  # every checkpoint corrupt: the resume must fail loudly, naming each
            _assert_failed_at(link, "train", "none is usable")
            for n in (1, 2, 3):
                assert f"(step {n})" in link.logs and "another sha256 than at save" in link.logs
            assert "restart_training" in link.logs
            link = _resume(ws, link.run.id, tags=["restart_training"])
        else:
            step = entry.split(":")[0]
            _assert_failed_at(link, step, f"injected fault: {entry}")
            if step == "train":  # corrupt every checkpoint it saved
                refs = _checkpoint_refs(link.run)
                assert sorted(refs) == [1, 2, 3]
                for step_no, ref in refs.items():
                    _flip(_stored_folder(ref) / f"step-{step_no:08d}" / "model.pt")
            link = _resume(ws, link.run.id)
        runs.append(link.run)
        # the resume re-ran from the failed step: the step before it was cloned
        failed = "train" if entry == "-" else entry.split(":")[0]
        if failed != "start":
            before = STEPS[STEPS.index(failed) - 1]
            assert all(t.metadata_dict.get("origin-task-id") for t in link.run[before]), (depth, before)
    assert link.status == "successful", link.logs[-4000:]
    assert len(runs) == len(entries) + 1
    d = link.run.data
    assert d.resumed_from == "restart (no usable checkpoint; restart_training)" and d.resumed_from_step == 0
    skipped = [e for e in d.resume_chain if e.get("outcome") == "skipped"]
    assert [e["step"] for e in skipped] == [3, 2, 1] and all("sha256" in e["reason"] for e in skipped)
    _assert_same(_result(link.run), reference)
    _no_training_folders_left(ws)
    ws.timings["exception at every step"] = time.time() - t0
    print(f"\n[timing] {ws.timings}", file=sys.stderr)


def test_kills_a_corrupt_checkpoint_a_cut_pointer_and_a_resume_of_a_failed_resume(ws, reference):
    """One chain of kills (SIGKILL of the task process):

    0. ``generate_hints`` killed after 2 of its shard's 4 hints; the machine's local hint cache is then
       deleted (the resume runs "on another pod");
    1. the resume reuses those 2 hints from the datastore; ``train`` is killed after checkpoint 2 was
       saved; then checkpoint 2's model file is corrupted and checkpoint 1's ``latest`` pointer cut short;
    2. the resume restores checkpoint 1 (skipping 2, naming its path and step) and is killed before it
       saves anything;
    3. the resume of that failed resume walks back past it to run 1's checkpoint 1, trains steps 2-3, and
       ``evaluate`` is killed;
    4. the last resume completes; it equals the reference, and no training folder is left behind.
    """
    t0 = time.time()
    entries = ["generate_hints:kill@2", "train:kill@2", "train:kill@0", "evaluate:kill"]
    link0 = _start(ws, ",".join(entries))
    _assert_failed_at(link0, "generate_hints", "[ptdpo] fault: SIGKILL of this task (after 2 hint(s) of shard 0)")
    shutil.rmtree(ws.tmp / "ptdpo-hint-cache")

    link1 = _resume(ws, link0.run.id)
    _assert_failed_at(link1, "train", "[ptdpo] fault: SIGKILL of this task (after checkpoint 2 was saved)")
    shard0 = next(t for t in link1.run["generate_hints"] if t.data.shard == 0)
    cache = shard0.data.shard_cache
    assert cache["from_mirror"] == 2 and cache["reused"] == 2 and cache["generated"] == 2, cache
    refs = _checkpoint_refs(link1.run)
    assert sorted(refs) == [1, 2]
    _flip(_stored_folder(refs[2]) / "step-00000002" / "model.pt")
    (_stored_folder(refs[1]) / "latest").write_text("step-000")

    link2 = _resume(ws, link1.run.id)
    _assert_failed_at(link2, "train", "[ptdpo] fault: SIGKILL of this task (after the restore")
    warning = f"skipping checkpoint {refs[2]['url']}/step-00000002 (step 2, {link1.run['train'].task.pathspec}"
    assert warning in link2.logs and "file model.pt has another sha256 than at save (corrupt)" in link2.logs
    assert f"continuing from checkpoint {refs[1]['url']}/step-00000001 (step 1" in link2.logs

    link3 = _resume(ws, link2.run.id)
    _assert_failed_at(link3, "evaluate", "[ptdpo] fault: SIGKILL of this task (end of evaluate)")
    train = link3.run["train"].task.data
    assert train.resumed_from == f"resume of run {link1.run.id} (step 1)" and train.resumed_from_step == 1
    outcomes = [(e["run"], e.get("step"), e["outcome"]) for e in train.resume_chain]
    assert outcomes == [(link2.run.id, None, "no checkpoint saved"), (link1.run.id, 2, "skipped"),
                        (link1.run.id, 1, "used")], train.resume_chain
    assert list(train.train_metrics["step"]) == [1, 2, 3]

    link4 = _resume(ws, link3.run.id)
    assert link4.status == "successful", link4.logs[-4000:]
    _assert_same(_result(link4.run), reference)
    _no_training_folders_left(ws)
    ws.timings["kills and checkpoints"] = time.time() - t0
    print(f"\n[timing] {ws.timings}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ on S3
@pytest.fixture(scope="module")
def s3_ws(ws, tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (started here, stopped at the end) and a workspace whose runs keep
    their datastore (artifacts, checkpoints, hint cache) in it."""
    import boto3
    from test_flow_cluster import BUCKET, _free_port

    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    root = tmp_path_factory.mktemp("faults-s3")
    port = _free_port()
    with open(root / "moto.log", "w") as fh:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                             aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {(root / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        env = {**_local_env(root), "METAFLOW_DEFAULT_DATASTORE": "s3",
               "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow", "METAFLOW_S3_ENDPOINT_URL": endpoint,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        yield Workspace(root, env, ws.config, ws.timings)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _flow_cli(s3: Workspace, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FLOW), *args], env={**os.environ, **s3.env}, cwd=s3.root,
                          capture_output=True, text=True, timeout=900)


def test_kills_on_the_s3_datastore_then_resume(s3_ws, reference):
    """On S3: ``generate_hints`` killed after one hint (its local cache then deleted), ``train`` killed after
    checkpoint 2; each resume restores from S3 (the hint from the datastore copy, the checkpoint from
    metaflow-checkpoint's store) and the last run equals the reference."""
    t0 = time.time()
    rid = s3_ws.root / "run-id"
    out = _flow_cli(s3_ws, ["--config", "config", str(s3_ws.config), "run", "--run-id-file", str(rid),
                            "--fault", "generate_hints:kill@1,train:kill@2"])
    assert out.returncode != 0 and "SIGKILL of this task (after 1 hint(s) of shard 0)" in out.stdout + out.stderr
    shutil.rmtree(s3_ws.tmp / "ptdpo-hint-cache")
    origin = rid.read_text().strip()
    out = _flow_cli(s3_ws, ["resume", "--origin-run-id", origin, "--run-id-file", str(rid)])
    logs = out.stdout + out.stderr
    assert out.returncode != 0 and "SIGKILL of this task (after checkpoint 2 was saved)" in logs, logs[-3000:]
    assert "'reused': 1, 'from_mirror': 1, 'generated': 3" in logs, logs[-3000:]
    first = rid.read_text().strip()
    out = _flow_cli(s3_ws, ["resume", "--origin-run-id", first, "--run-id-file", str(rid)])
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-4000:]
    assert "continuing from checkpoint s3://" in logs and "(step 2, " in logs, logs[-3000:]
    last = rid.read_text().strip()
    read = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from test_faults import _result_json; "
                               "print(_result_json(sys.argv[2]))", str(ROOT / "tests"), f"PTDPOFlow/{last}"],
        env={**os.environ, **s3_ws.env, "PYTHONPATH": str(ROOT)}, cwd=s3_ws.root, capture_output=True, text=True,
        timeout=600)
    assert read.returncode == 0, read.stderr[-3000:]
    _assert_same(json.loads(read.stdout.strip().splitlines()[-1]), reference)
    _no_training_folders_left(s3_ws)
    s3_ws.timings["S3 kills"] = time.time() - t0
    print(f"\n[timing] {s3_ws.timings}", file=sys.stderr)


def test_result_comparison_can_fail(reference):
    """The comparison is not vacuous: a changed hash or one changed metric value is a difference."""
    changed = dict(reference, hints_hash=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(AssertionError):
        _assert_same(changed, reference)
    lines = reference["train_metrics"].splitlines()
    lines[-1] = lines[-1].replace(lines[-1].split(",")[0], "999", 1)
    with pytest.raises(AssertionError):
        _assert_same(dict(reference, train_metrics="\n".join(lines)), reference)
