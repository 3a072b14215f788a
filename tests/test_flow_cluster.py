"""The cluster side of flows/ptdpo_flow.py, offline, against a local S3 server (moto) on 127.0.0.1:

- the code package holds the library (``ptdpo/``, ``steps/``, the tiny tokenizer's corpus);
- ``argo-workflows create --only-json`` compiles the 2B config into an Argo WorkflowTemplate whose
  per-step pods carry the config's GPUs, memory, image, node selectors, tolerations, shared memory,
  PVC, secrets, retries, deadlines, and the schedule;
- the 2-node config compiles too: its ``train_nodes`` step (``@parallel``) becomes a JobSet (one control
  job, ``num_parallel - 1`` workers) whose pods carry the same GPU, image, node selector, tolerations,
  shared memory, PVC and NCCL environment as ``train``; the audit step switches between the branches;
- the same flow runs once on the S3 datastore, and a ``@retry`` inside train restores the checkpoint of
  the failed attempt from S3.

No Kubernetes cluster is involved: nothing here proves that pods start on a real cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "ptdpo_flow.py"
PY = sys.executable
BUCKET = "ptdpo-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on a free local port, a bucket, and the environment that points Metaflow at it.
    The server is stopped by its PID at teardown."""
    moto = Path(PY).with_name("moto_server")
    if not moto.exists():
        # scripts/setup.sh installs moto[server]: without it the environment is broken, not the test optional
        pytest.fail("moto_server is not installed (scripts/setup.sh installs 'moto[server]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        home = tmp_path_factory.mktemp("mfhome")
        env = {
            "USERNAME": "ptdpo-test",
            "METAFLOW_USER": "ptdpo-test",
            "METAFLOW_HOME": str(home),
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_S3_ENDPOINT_URL": endpoint,
            "METAFLOW_KUBERNETES_NAMESPACE": "ptdpo",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PTDPO_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def flow_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([PY, str(FLOW), *args], env=full_env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------ code package
def test_code_package_ships_the_library(tmp_path):
    env = {"USERNAME": "ptdpo-test", "METAFLOW_HOME": str(tmp_path)}
    out = flow_cli(["package", "list"], env, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    files = [line.strip() for line in (out.stdout + out.stderr).splitlines()]
    rel = [os.path.relpath(f, ROOT) for f in files if f.startswith(str(ROOT))]
    assert any(r.startswith("ptdpo/") for r in rel) and any(r.startswith("steps/") for r in rel)
    for needed in ("flows/ptdpo_flow.py", "flows/_common.py", "ptdpo/trainer.py", "ptdpo/config.py",
                   "steps/train.py", "steps/data.py", "steps/hints.py", "steps/audit.py", "steps/evaluate.py",
                   "steps/report.py", "ptdpo/models/assets/corpus.txt", "ptdpo/eval/benchmarks.json",
                   "ptdpo/run_config.py"):
        assert needed in rel, f"{needed} is not in the code package"
    assert not any(r.startswith("tests/") for r in rel)
    # from the virtualenv only Metaflow itself and its extensions (Metaflow ships its own code)
    venv = [r for r in rel if r.startswith(".venv/")]
    assert all("/site-packages/metaflow" in r for r in venv), [r for r in venv if "/site-packages/metaflow" not in r][:5]


# ------------------------------------------------------------------------------------ argo compile
def compile_argo(s3_env, cwd, config: str | None = None) -> dict:
    """The Argo WorkflowTemplate of the flow (``argo-workflows create --only-json``), for ``configs/<config>``
    or the default config."""
    args = (["--config", "config", str(ROOT / "configs" / config)] if config else []) + [
        "argo-workflows", "create", "--only-json"]
    out = flow_cli(args, s3_env, cwd, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


@pytest.fixture(scope="module")
def argo_2b(s3_env, tmp_path_factory):
    return compile_argo(s3_env, tmp_path_factory.mktemp("argo"), "qwen3vl-2b.json")


def _templates(wf: dict) -> dict[str, dict]:
    return {t["name"]: t for t in wf["spec"]["templates"] if "container" in t}


def _mem_mb(v: str) -> float:
    assert v.endswith("M"), v
    return float(v[:-1])


def test_argo_spec_carries_the_2b_config_per_step(argo_2b):
    from ptdpo.run_config import load_config_file

    cfg = load_config_file(ROOT / "configs" / "qwen3vl-2b.json")
    wf = argo_2b
    assert wf["kind"] == "WorkflowTemplate"
    assert wf["metadata"]["name"].startswith("ptdpo.")  # @project(name=config.project)
    assert wf["metadata"]["namespace"] == "ptdpo"
    tpl = _templates(wf)
    steps = {"start", "prepare-data", "generate-hints", "join-hints", "audit", "train", "evaluate", "join-eval",
             "report", "end"}
    assert steps <= set(tpl)
    k8s = cfg["kubernetes"]
    for name in steps:
        t, c = tpl[name], tpl[name]["container"]
        step = name.replace("-", "_")
        res = cfg["resources"].get(step, {})
        per = k8s["steps"].get(step, {})
        assert c["image"] == k8s["image"], name
        assert c.get("imagePullPolicy") == k8s["image_pull_policy"], name
        assert t["serviceAccountName"] == k8s["service_account"], name
        assert t["nodeSelector"] == per.get("node_selector", k8s["node_selector"]), name
        assert (t.get("tolerations") or []) == per.get("tolerations", []), name
        # resources from config.resources.<step> (bookkeeping steps keep Metaflow's defaults)
        limits, requests = c["resources"].get("limits") or {}, c["resources"]["requests"]
        assert limits.get("nvidia.com/gpu") == (str(res["gpu"]) if res.get("gpu") else None), name
        if res:
            assert float(requests["cpu"]) == res["cpu"], name
            assert _mem_mb(requests["memory"]) == res["memory"], name
        # the model cache PVC, mounted where the config says
        vols = {v["name"]: v for v in t["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        for claim, path in k8s["persistent_volume_claims"].items():
            assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in vols.values()), name
            assert path in mounts.values(), name
        # shared memory where configured
        shm = res.get("shared_memory")
        if shm:
            assert vols["dhsm"]["emptyDir"] == {"sizeLimit": f"{shm}Mi", "medium": "Memory"}, name
            assert mounts["dhsm"] == "/dev/shm", name
        else:
            assert "dhsm" not in mounts, name
        # secrets as environment, and the config's environment variables
        secrets = [e["secretRef"]["name"] for e in c.get("envFrom") or [] if e.get("secretRef")]
        assert secrets == per.get("secrets", k8s["secrets"]), name
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        for key, value in k8s["env"].items():
            assert env.get(key) == value, (name, key)
        # retries and deadlines from config.retry / config.timeout
        retry = cfg["retry"].get(step)
        if retry:
            assert t["retryStrategy"]["limit"] == retry["times"], name
            assert t["retryStrategy"]["backoff"]["duration"] == f"{retry['minutes_between_retries']}m", name
        else:
            assert not t.get("retryStrategy"), name
        if step in cfg["timeout"]:
            assert t["activeDeadlineSeconds"] == cfg["timeout"][step], name

    train = tpl["train"]
    assert train["container"]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "python ptdpo_flow.py" in " ".join(train["container"]["command"])
    # the schedule (Argo CronWorkflow created from this annotation at deploy time)
    cron = json.loads(wf["metadata"]["annotations"]["metaflow/cron"])
    assert cron["schedule"] == cfg["schedule"]["cron"]
    # the testing knob exists with its inert default
    params = {p["name"]: p for p in wf["spec"]["arguments"]["parameters"]}
    assert params["fail_after_step"]["value"] == "-1"


def _jobset(wf: dict, template: str) -> dict:
    """The JobSet manifest of an Argo resource template (Argo expressions in unquoted values quoted first,
    so the YAML parses)."""
    import re

    import yaml

    t = next(t for t in wf["spec"]["templates"] if t["name"] == template)
    manifest = re.sub(r": (\{\{=[^\n]*\}\})$", r": '\1'", t["resource"]["manifest"], flags=re.M)
    return yaml.safe_load(manifest)


def test_single_node_config_takes_the_one_node_branch(argo_2b):
    """The 2B config trains on one node: ``train`` runs when audit's switch says so; the multi-node branch
    is compiled too (a JobSet resource template) but only created when taken."""
    tasks = {t["name"]: t for t in next(t for t in argo_2b["spec"]["templates"] if t["name"] == "PTDPOFlow")["dag"]["tasks"]}
    assert "'train'" in tasks["train"]["when"] and "'launch_nodes'" in tasks["launch-nodes"]["when"]
    assert tasks["trained"]["depends"] == "join-nodes.Succeeded || train.Succeeded"
    assert _jobset(argo_2b, "train-nodes")["kind"] == "JobSet"


@pytest.fixture(scope="module")
def argo_2node(s3_env, tmp_path_factory):
    return compile_argo(s3_env, tmp_path_factory.mktemp("argo2"), "qwen3vl-8b-2node.json")


def test_two_node_config_compiles_train_nodes_to_a_jobset(argo_2node):
    from ptdpo.run_config import kubernetes_attributes, load_config_file

    cfg = load_config_file(ROOT / "configs" / "qwen3vl-8b-2node.json")
    assert cfg["resources"]["train"]["nodes"] == 2
    res = cfg["resources"]["train"]
    attrs, env = kubernetes_attributes(cfg, "train")
    wf = argo_2node
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    # the switch in audit picks the branch at run time; both meet in `trained`, which fans out evaluate
    tasks = {t["name"]: t for t in templates["PTDPOFlow"]["dag"]["tasks"]}
    assert "'launch_nodes'" in tasks["launch-nodes"]["when"] and "'train'" in tasks["train"]["when"]
    assert tasks["launch-nodes-foreach-parallel"]["depends"] == "launch-nodes.Succeeded"
    assert tasks["join-nodes"]["depends"] == "launch-nodes-foreach-parallel.Succeeded"
    assert tasks["trained"]["depends"] == "join-nodes.Succeeded || train.Succeeded"
    assert tasks["trained-foreach-eval-branches"]["depends"] == "trained.Succeeded"
    # launch_nodes decides num_parallel at run time (resources.train.nodes); the JobSet gets one control
    # job and num_parallel - 1 workers
    assert any(p["name"] == "num-parallel" for p in templates["launch-nodes"]["outputs"]["parameters"])
    par = templates["launch-nodes-foreach-parallel"]["dag"]["tasks"][0]
    args = {a["name"]: a["value"] for a in par["arguments"]["parameters"]}
    assert par["template"] == "train-nodes"
    assert args["workerCount"] == "{{=sprig.int(sprig.sub(sprig.int(inputs.parameters['num-parallel']),1))}}"
    t = templates["train-nodes"]
    assert t["resource"]["action"] == "create"
    assert t["retryStrategy"]["limit"] == cfg["retry"]["train"]["times"]
    js = _jobset(wf, "train-nodes")
    assert js["kind"] == "JobSet" and js["apiVersion"].startswith("jobset.x-k8s.io/")
    jobs = {j["name"]: j for j in js["spec"]["replicatedJobs"]}
    assert set(jobs) == {"control", "worker"}
    assert jobs["control"]["replicas"] == 1
    assert jobs["worker"]["replicas"] == "{{=asInt(inputs.parameters.workerCount)}}"
    for name, job in jobs.items():
        pod = job["template"]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"] == attrs["image"] and c["imagePullPolicy"] == attrs["image_pull_policy"], name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(res["gpu"]), name
        assert float(c["resources"]["requests"]["cpu"]) == res["cpu"], name
        assert _mem_mb(c["resources"]["requests"]["memory"]) == res["memory"], name
        assert pod["nodeSelector"] == attrs["node_selector"], name
        assert pod["tolerations"] == attrs["tolerations"], name
        assert pod["serviceAccountName"] == attrs["service_account"], name
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert vols["dhsm"]["emptyDir"] == {"sizeLimit": f"{res['shared_memory']}Mi", "medium": "Memory"}, name
        assert mounts["dhsm"] == "/dev/shm", name
        assert vols["ptdpo-model-cache"]["persistentVolumeClaim"]["claimName"] == "ptdpo-model-cache", name
        assert mounts["ptdpo-model-cache"] == "/cache", name
        pod_env = {e["name"]: e.get("value") for e in c.get("env") or []}
        assert pod_env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_SOCKET_IFNAME"] == "eth0", name
        assert pod_env["HF_HOME"] == "/cache/huggingface", name
        secrets = [e["secretRef"]["name"] for e in c.get("envFrom") or [] if e.get("secretRef")]
        assert secrets == attrs["secrets"], name
        command = " ".join(c["command"])
        assert "step train_nodes" in command and "--ubf-context" in command, name
    # the single-node training step is still there, for the other branch, without the JobSet
    assert templates["train"]["container"]["resources"]["limits"]["nvidia.com/gpu"] == str(res["gpu"])


def test_tiny_config_compiles_without_gpus_or_schedule(s3_env, tmp_path):
    wf = compile_argo(s3_env, tmp_path)
    assert "metaflow/cron" not in wf["metadata"].get("annotations", {})
    for t in _templates(wf).values():
        assert (t["container"]["resources"].get("limits") or {}).get("nvidia.com/gpu", "0") == "0"


def test_with_kubernetes_run_gives_the_pods_the_config(s3_env, tmp_path):
    """``--with kubernetes run`` (the documented cluster command) up to the point where Metaflow launches
    the first pod: there is no cluster, so the launch fails, but the ``kubernetes step`` command it
    builds (printed with METAFLOW_DEBUG_SUBCOMMAND) must carry the config's pod settings."""
    env = {**s3_env, "METAFLOW_DEBUG_SUBCOMMAND": "1", "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    out = flow_cli(["--config", "config", str(ROOT / "configs" / "qwen3vl-2b.json"), "--with", "kubernetes",
                    "run"], env, tmp_path, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0  # no cluster
    line = next((ln for ln in text.splitlines() if " kubernetes step start " in ln), None)
    assert line, text[-3000:]
    for arg in ("--image ghcr.io/ptdpo/ptdpo:0.1.0-cuda13.0", "--image-pull-policy IfNotPresent",
                "--service-account ptdpo-metaflow", "--secrets ptdpo-hub-token",
                "--node-selector ptdpo.io/pool=cpu", "--k8s-namespace ptdpo",
                '--persistent-volume-claims {"ptdpo-model-cache": "/cache"}'):
        assert arg in line, arg


# ------------------------------------------------------------------------------- run on S3 + retry
READ_RUN = r"""
import json, sys
from metaflow import Run, Checkpoint, namespace
namespace(None)
run = Run(sys.argv[1])
train = run["train"].task
print(json.dumps({
    "successful": run.successful,
    "ds_type": train.metadata_dict.get("ds-type"),
    "attempt": int(train.metadata_dict.get("attempt", -1)),
    "resumed_from_step": run.data.resumed_from_step,
    "resumed_from": run.data.resumed_from,
    "steps": [int(s) for s in run.data.train_metrics["step"]],
    "eval_columns": list(run.data.eval_results.columns),
    "policy_url": run.data.policy["url"],
    "checkpoints": sorted(int(c["metadata"]["step"]) for c in Checkpoint().list(task=train, attempt=0)),
}))
"""


@pytest.mark.slow
def test_flow_runs_on_s3_and_retry_restores_the_checkpoint(s3_env, tmp_path):
    """The whole DAG on the S3 datastore (moto). Train fails after step 2 on its first attempt; the
    ``@retry`` attempt gets that checkpoint back from S3 and trains step 3 only."""
    cfg = {
        "extends": str(ROOT / "configs" / "tiny-test.json"), "name": "tiny-s3",
        "hints": {"shards": 1},
        "train": {"max_steps": 3, "checkpoint_every": 2},
        "eval": {"benchmarks": [{"name": "synthetic_ood", "limit": 2}], "models": ["trained"]},
    }
    config = tmp_path / "s3-config.json"
    config.write_text(json.dumps(cfg))
    t0 = time.time()
    out = flow_cli(["--config", "config", str(config), "run", "--fail_after_step", "2",
                    "--run-id-file", str(tmp_path / "run-id")], s3_env, tmp_path, timeout=1200)
    print(f"\n[timing] S3 run with one retry: {time.time() - t0:.0f}s", file=sys.stderr)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    run_id = (tmp_path / "run-id").read_text().strip()
    assert "injected failure after step 2" in out.stdout + out.stderr  # attempt 0 did fail
    read = subprocess.run([PY, "-c", READ_RUN, f"PTDPOFlow/{run_id}"], env={**os.environ, **s3_env},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    info = json.loads(read.stdout.strip().splitlines()[-1])
    assert info["successful"] and info["ds_type"] == "s3"
    assert info["attempt"] == 1
    assert info["resumed_from_step"] == 2 and info["resumed_from"].startswith("retry")
    assert info["steps"] == [1, 2, 3]
    assert set(info["checkpoints"]) == {2}  # attempt 0 saved step 2 (before failing), nothing later
    assert info["policy_url"].startswith(f"s3://{BUCKET}/")
    assert info["eval_columns"] == ["benchmark", "model", "metric", "value", "n"]
