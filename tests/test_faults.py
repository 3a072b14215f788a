"""The fault-injection matrix: every step of the DAG survives an exception, and ``generate_hints``, ``train`` and
``evaluate`` a SIGKILL of their task process, each followed by ``resume``; the resumed run ends with the
same result as one uninterrupted reference run. Also: a corrupt newest checkpoint, a truncated ``latest``
pointer, a resume of a failed resume, a resume with every checkpoint corrupt (fails loudly; starts over
only when asked), a lost machine's hint cache, and ``train`` killed on the S3 datastore (a local moto server).

"Same result": ``train_metrics`` equal in every non-timing column, the trained policy's weight fingerprint
(``ptdpo.models.policy_fingerprint``), ``eval_results`` and the hints table's hash.

How it stays within a few minutes on 2 cores: all local faults form one resume chain. The ``fault``
Parameter holds one entry per run of the chain (``flows/_faults.py``); ``resume`` re-runs from the failed
step and clones the rest, so each link costs one failed task plus Metaflow's start-up, and the chain ends
in a run that completed. The reference run and the S3 chain run in the background while the local chain
runs (separate processes and datastores; 2 cores). The config is minimal: 8 items in 2 hint shards, 3
training steps with a checkpoint after each, one benchmark of 2 items on the trained model only, no
retries.

docs/reliability.md has the matrix as a table, with what a user does after each fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "ptdpo_flow.py"
TINY = ROOT / "configs" / "tiny-test.json"  # the fast test config
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
@dataclass
class Workspace:
    """A datastore (local folder or S3 bucket), the tasks' temp dir, and the flow's environment."""

    root: Path
    env: dict[str, str]
    config: Path

    @property
    def tmp(self) -> Path:
        return Path(self.env["TMPDIR"])


@dataclass
class Link:
    """One run of a chain: its id, exit status and the whole run's logs."""

    run_id: str
    returncode: int
    logs: str

    @property
    def run(self):
        from metaflow import Run

        return Run(f"PTDPOFlow/{self.run_id}")


class Background(threading.Thread):
    """``fn()`` in a thread (it only waits on subprocesses); :meth:`result` joins and re-raises."""

    def __init__(self, fn: Callable[[], object]):
        super().__init__(daemon=True)
        self.fn, self.value, self.error, self.seconds = fn, None, None, 0.0
        self.start()

    def run(self) -> None:
        t0 = time.time()
        try:
            self.value = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test that waits
            self.error = e
        self.seconds = time.time() - t0

    def result(self, timeout: float = 1800):
        self.join(timeout)
        assert not self.is_alive(), "the background job did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def _env(root: Path, **extra: str) -> dict[str, str]:
    (root / "mfhome").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return {
        "USERNAME": "ptdpo-test", "METAFLOW_USER": "ptdpo-test", "METAFLOW_HOME": str(root / "mfhome"),
        "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
        "PTDPO_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        # the tasks' temp dir: training folders and the local hint cache land here, where the test sees them
        "TMPDIR": str(root / "tmp"), **extra,
    }


def _flow(w: Workspace, args: list[str]) -> Link:
    rid = w.root / f"run-id-{time.time_ns()}"
    out = subprocess.run([sys.executable, str(FLOW), *args, "--run-id-file", str(rid)], env={**os.environ, **w.env},
                         cwd=w.root, capture_output=True, text=True, timeout=900)
    assert rid.exists(), (out.stdout + out.stderr)[-4000:]
    return Link(rid.read_text().strip(), out.returncode, out.stdout + out.stderr)


def _start(w: Workspace, fault: str = "") -> Link:
    return _flow(w, ["--config", "config", str(w.config), "run", *(["--fault", fault] if fault else [])])


def _resume(w: Workspace, origin: str, tags: tuple[str, ...] = ()) -> Link:
    return _flow(w, ["resume", "--origin-run-id", origin, *[a for t in tags for a in ("--tag", t)]])


def _assert_failed_at(link: Link, step: str, what: str) -> None:
    assert link.returncode != 0, f"expected a failure at {step}: {link.logs[-3000:]}"
    failed = {s.id for s in link.run for t in s if not t.successful}
    assert step in failed, (step, failed, link.logs[-3000:])
    assert what in link.logs, (what, link.logs[-3000:])


def _train_result(d) -> dict:
    from metaflow import load_model

    from ptdpo.models import load_policy, policy_fingerprint

    cols = [c for c in d.train_metrics.columns if not c.startswith(TIMING)]
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"policy-{time.time_ns()}"
    load_model(d.policy, str(folder))
    model, _ = load_policy(str(folder))
    shutil.rmtree(folder, ignore_errors=True)
    return {"train_metrics": d.train_metrics[cols].to_csv(index=False, float_format="%.17g"),
            "policy": policy_fingerprint(model, length=64)}


def _result(run) -> dict:
    """What "the same result" compares, as plain values."""
    d = run.data
    return {**_train_result(d), "eval_results": d.eval_results.to_csv(index=False, float_format="%.17g"),
            "hints_hash": d.hints_hash}


def _result_json(pathspec: str) -> str:
    """:func:`_result` of a run read in a subprocess (the S3 datastore needs its own Metaflow settings)."""
    from metaflow import Run, namespace

    namespace(None)
    return json.dumps(_result(Run(pathspec)))


def _assert_same(result: dict, reference: dict) -> None:
    for key in ("hints_hash", "train_metrics", "policy", "eval_results"):
        if key in result:
            assert result[key] == reference[key], (key, result[key], reference[key])


def _no_training_folders_left(w: Workspace) -> None:
    left = sorted(p.name for p in w.tmp.glob("ptdpo-train-*"))
    assert left == [], left


def _checkpoint_refs(run) -> dict[int, dict]:
    """step -> checkpoint reference saved by the run's train task."""
    from metaflow import Checkpoint

    task = run["train"].task
    return {int(r["metadata"]["step"]): r for r in Checkpoint().list(task=task, attempt=int(task.current_attempt))}


def _stored(ref: dict, step: int) -> Path:
    """The checkpoint's step folder in the local datastore (metaflow-checkpoint stores files as they are)."""
    return Path(ref["url"]) / f"step-{step:08d}"


def _flip(path: Path) -> None:
    """Flip 16 bytes in the middle of ``path`` (same size: only the hash can tell)."""
    b = bytearray(path.read_bytes())
    b[len(b) // 2:len(b) // 2 + 16] = bytes(x ^ 0xFF for x in b[len(b) // 2:len(b) // 2 + 16])
    path.write_bytes(bytes(b))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The local datastore of the reference run and the chain (runs stay apart by run id); this process
    reads it from its folder, as a user, across namespaces."""
    from metaflow import namespace
    from metaflow.plugins.datastores.local_storage import LocalStorage

    root = tmp_path_factory.mktemp("faults")
    (root / ".metaflow").mkdir()
    config = root / "fault-config.json"
    config.write_text(json.dumps(FAULT_CONFIG))
    here = os.getcwd()
    # The client caches the local datastore's folder the first time any test of this process reads a run:
    # point it at this workspace's (and give the earlier one back afterwards).
    cached = LocalStorage.datastore_root
    LocalStorage.datastore_root = str(root / ".metaflow")
    os.chdir(root)
    namespace(None)
    try:
        yield Workspace(root, _env(root), config)
    finally:
        os.chdir(here)
        LocalStorage.datastore_root = cached


@pytest.fixture(scope="module")
def reference_job(ws) -> Background:
    """The uninterrupted reference run, started in the background."""
    return Background(lambda: _start(ws))


def _reference(job: Background) -> dict:
    """The reference result, once the background run is done (read once)."""
    if not hasattr(job, "reference"):
        link = job.result()
        assert link.returncode == 0, link.logs[-4000:]
        d = link.run.data
        assert list(d.train_metrics["step"]) == [1, 2, 3] and d.resumed_from_step == 0 and d.resumed_from is None
        assert d.resume_chain == [] and len(d.hints) == 8
        print(f"\n[timing] reference run (in the background): {job.seconds:.0f}s", file=sys.stderr)
        job.reference = _result(link.run)
    return job.reference


@pytest.fixture(scope="module")
def reference(reference_job) -> dict:
    return _reference(reference_job)


@pytest.fixture(scope="module")
def s3_job(ws, tmp_path_factory) -> Background:
    """The S3 chain (test_kills_on_the_s3_datastore_then_resume), started in the background: a moto S3
    server on 127.0.0.1, started and stopped here, holds the runs' datastore."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        # scripts/setup.sh installs moto[server]: without it the environment is broken, not the test optional
        pytest.fail("moto_server is not installed (scripts/setup.sh installs 'moto[server]')")
    root = tmp_path_factory.mktemp("faults-s3")
    return Background(lambda: _s3_chain(moto, root, ws.config))


# ------------------------------------------------------------------------------------------ the matrix
def test_every_step_raises_and_three_are_killed_each_then_resumed(ws, reference_job, s3_job):
    """One resume chain, one fault per run (the ``fault`` Parameter), each run resuming the one before:

    - ``start``, ``prepare_data``: raise;
    - ``generate_hints``: killed after 2 of its shard's 4 hints, then the machine's local hint cache is
      deleted (the resume runs "on another pod"); the resume reuses those 2 hints from the datastore, then
      raises; ``join_hints``, ``audit``: raise;
    - ``train``: raises after checkpoint 2; every checkpoint is then corrupted: the resume fails loudly at
      ``train``, naming each, and does not start over on its own; the next resume, tagged
      ``restart_training``, trains from the base policy as asked and is killed after checkpoint 2; that
      checkpoint's model file is corrupted and checkpoint 1's ``latest`` pointer cut short; the resume
      skips checkpoint 2 (naming its path and step), restores checkpoint 1 and is killed before saving
      anything; the resume of that failed resume walks back past it to checkpoint 1, trains steps 2-3 (the
      same metrics and weights as the reference), and ``trained`` raises;
    - ``evaluate``: killed, then raises; ``join_eval``, ``report``, ``end``: raise;
    - the last resume completes: the same result as the reference, and no training folder is left.
    """
    t0 = time.time()
    entries = ["start:raise", "prepare_data:raise", "generate_hints:kill@2", "generate_hints:raise",
               "join_hints:raise", "audit:raise", "train:raise@2", "-", "train:kill@2", "train:kill@0",
               "trained:raise", "evaluate:kill", "evaluate:raise", "join_eval:raise", "report:raise", "end:raise"]
    links = [_start(ws, ",".join(entries))]

    def resume(**kw) -> Link:
        links.append(_resume(ws, links[-1].run_id, **kw))
        return links[-1]

    _assert_failed_at(links[0], "start", "injected fault: start:raise (end of start)")
    _assert_failed_at(resume(), "prepare_data", "injected fault: prepare_data:raise")
    link = resume()
    _assert_failed_at(link, "generate_hints", "[ptdpo] fault: SIGKILL of this task (after 2 hint(s) of shard 0)")
    shutil.rmtree(ws.tmp / "ptdpo-hint-cache")  # the next attempt runs on a machine without it
    link = resume()
    _assert_failed_at(link, "generate_hints", "injected fault: generate_hints:raise")
    assert "'reused': 2, 'from_mirror': 2, 'generated': 2" in link.logs, link.logs[-3000:]
    _assert_failed_at(resume(), "join_hints", "injected fault: join_hints:raise")
    _assert_failed_at(resume(), "audit", "injected fault: audit:raise")

    # train: raises after checkpoint 2; every checkpoint then corrupted
    link = resume()
    _assert_failed_at(link, "train", "injected failure after step 2")
    first_train = link.run
    refs = _checkpoint_refs(first_train)
    assert sorted(refs) == [1, 2]
    for step, ref in refs.items():
        _flip(_stored(ref, step) / "model.pt")
    link = resume()
    _assert_failed_at(link, "train", "none is usable, so training cannot continue; it is not started over silently")
    for step, ref in refs.items():
        assert f"checkpoint {ref['url']} (step {step}): skipped: file model.pt has another sha256" in link.logs
    assert "resume with --tag restart_training" in link.logs

    # asked to start over: from the base policy; killed after checkpoint 2
    link = resume(tags=("restart_training",))
    _assert_failed_at(link, "train", "[ptdpo] fault: SIGKILL of this task (after checkpoint 2 was saved)")
    assert "starting from the base policy, as asked (restart_training)" in link.logs
    restarted = link.run
    refs = _checkpoint_refs(restarted)
    assert sorted(refs) == [1, 2]
    _flip(_stored(refs[2], 2) / "model.pt")
    (Path(refs[1]["url"]) / "latest").write_text("step-000")  # a pointer cut short

    link = resume()
    _assert_failed_at(link, "train", "[ptdpo] fault: SIGKILL of this task (after the restore")
    killed_resume = link.run_id
    pathspec = restarted["train"].task.pathspec
    assert (f"skipping checkpoint {refs[2]['url']}/step-00000002 (step 2, {pathspec} attempt 0): file model.pt has "
            "another sha256 than at save (corrupt)") in link.logs
    assert f"continuing from checkpoint {refs[1]['url']}/step-00000001 (step 1, {pathspec}" in link.logs

    # the resume of the failed resume finds checkpoint 1 two runs back, and trains on exactly
    link = resume()
    _assert_failed_at(link, "trained", "injected fault: trained:raise")
    d = link.run["train"].task.data
    assert d.resumed_from == f"resume of run {restarted.id} (step 1)" and d.resumed_from_step == 1
    walked = [(e["run"], e.get("step"), e["outcome"]) for e in d.resume_chain]
    assert walked == [(killed_resume, None, "no checkpoint saved"), (restarted.id, 2, "skipped"),
                      (restarted.id, 1, "used")], d.resume_chain
    _assert_same(_train_result(d), _reference(reference_job))

    link = resume()
    _assert_failed_at(link, "evaluate", "[ptdpo] fault: SIGKILL of this task (end of evaluate)")
    for step in ("evaluate", "join_eval", "report", "end"):
        _assert_failed_at(resume(), step, f"injected fault: {step}:raise")
    last = resume()
    assert last.returncode == 0, last.logs[-4000:]
    assert len(links) == len(entries) + 1
    # every resume re-ran from the failed step: the tasks before it were cloned
    for prev, link in zip(links[:-1], links[1:]):
        failed = {s.id for s in prev.run for t in s if not t.successful}
        step = next(s for s in STEPS if s in failed)
        if step != "start":
            before = STEPS[STEPS.index(step) - 1]
            assert all(t.metadata_dict.get("origin-task-id") for t in link.run[before]), (link.run_id, before)
    _assert_same(_result(last.run), _reference(reference_job))
    _no_training_folders_left(ws)
    print(f"\n[timing] local chain of {len(links)} runs: {time.time() - t0:.0f}s", file=sys.stderr)


# ------------------------------------------------------------------------------------------ on S3
def _s3_chain(moto: Path, root: Path, config: Path) -> dict:
    """``generate_hints`` killed after one hint (its local cache then deleted), ``train`` killed after
    checkpoint 2, each resumed, on the S3 datastore. Returns the logs and the last run's result."""
    import boto3
    from test_flow_cluster import BUCKET, _free_port

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
        w = Workspace(root, _env(root, METAFLOW_DEFAULT_DATASTORE="s3",
                                 METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/metaflow",
                                 METAFLOW_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                                 AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                                 AWS_EC2_METADATA_DISABLED="true"), config)
        links = [_start(w, "generate_hints:kill@1,train:kill@2")]
        shutil.rmtree(w.tmp / "ptdpo-hint-cache")
        links.append(_resume(w, links[-1].run_id))
        links.append(_resume(w, links[-1].run_id))
        read = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from test_faults import "
                                   "_result_json; print(_result_json(sys.argv[2]))",
             str(ROOT / "tests"), f"PTDPOFlow/{links[-1].run_id}"],
            env={**os.environ, **w.env, "PYTHONPATH": str(ROOT)}, cwd=root, capture_output=True, text=True, timeout=600)
        return {"links": links, "read": read, "left": sorted(p.name for p in w.tmp.glob("ptdpo-train-*"))}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_kills_on_the_s3_datastore_then_resume(s3_job, reference):
    """On S3: each resume restores from S3 (the finished hint from the datastore copy of the cache, the
    checkpoint from metaflow-checkpoint's store) and the last run equals the reference."""
    out = s3_job.result()
    first, second, last = out["links"]
    assert first.returncode != 0 and "SIGKILL of this task (after 1 hint(s) of shard 0)" in first.logs, first.logs[-3000:]
    assert second.returncode != 0 and "SIGKILL of this task (after checkpoint 2 was saved)" in second.logs
    assert "'reused': 1, 'from_mirror': 1, 'generated': 3" in second.logs, second.logs[-3000:]
    assert last.returncode == 0, last.logs[-4000:]
    assert "continuing from checkpoint s3://" in last.logs and "(step 2, " in last.logs, last.logs[-3000:]
    assert out["read"].returncode == 0, out["read"].stderr[-3000:]
    _assert_same(json.loads(out["read"].stdout.strip().splitlines()[-1]), reference)
    assert out["left"] == []
    print(f"\n[timing] S3 chain of 3 runs (in the background): {s3_job.seconds:.0f}s", file=sys.stderr)


def test_result_comparison_can_fail(reference):
    """The comparison is not vacuous: a changed hash or one changed metric value is a difference."""
    with pytest.raises(AssertionError):
        _assert_same(dict(reference, hints_hash=hashlib.sha256(b"other").hexdigest()), reference)
    lines = reference["train_metrics"].splitlines()
    lines[-1] = "999" + lines[-1][lines[-1].index(","):]
    with pytest.raises(AssertionError):
        _assert_same(dict(reference, train_metrics="\n".join(lines)), reference)
