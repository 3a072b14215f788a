"""End-to-end runs of flows/ptdpo_flow.py through ``metaflow.Runner`` on the local datastore, each in a
temporary folder (its own ``.metaflow``, METAFLOW_HOME and user), so nothing lands in the checkout.

- the default tiny config runs the whole DAG; every named artifact is there and sensible; the cards
  carry the plots (PNG images embedded as base64) and the tables;
- a run made to fail inside ``train`` after a checkpoint, then resumed, continues training from that
  checkpoint (not from step 0);
- with ``resources.train.nodes = 2`` the multi-node branch (``launch_nodes`` -> ``train_nodes``, a
  ``@parallel`` step run as two local processes, one gloo rank each -> ``join_nodes``) trains as one job
  of world size 2, equal to one process up to float rounding; a ``@retry`` of the gang (made to fail after
  a checkpoint) makes both nodes restore node 0's checkpoint; a ``resume`` of a failed multi-node run
  makes both nodes restore the origin run's checkpoint.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import time
import typing
from pathlib import Path

import pytest
import torch

# Metaflow's Runner checks argument types with its vendored typeguard, which imports Metaflow's vendored
# typing_extensions, which replaces typing._collect_parameters for the whole process with a version
# that does not know the real typing_extensions' TypeVar defaults (PEP 696). Any torch / transformers
# module imported after that fails ("Type parameter ~_R without a default follows type parameter with
# a default"). The flow's own task processes are not affected; in this test process the original is
# put back after every Runner call, so later tests can still import torch modules.
_COLLECT_PARAMETERS = getattr(typing, "_collect_parameters", None)


def _restore_typing() -> None:
    if _COLLECT_PARAMETERS is not None:
        typing._collect_parameters = _COLLECT_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "ptdpo_flow.py"
TINY = ROOT / "configs" / "tiny-test.json"  # the fast test config (tiny.json: the default run)
TINY_2NODE = ROOT / "configs" / "tiny-2node.json"
RESULT_COLUMNS = ["benchmark", "model", "metric", "value", "n"]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def client_user(monkeypatch, tmp_path):
    """Runs keep their local datastore in ``tmp_path/.metaflow`` (the flow runs with cwd=tmp_path; the
    folder exists beforehand so no ``.metaflow`` in a parent folder is picked up). This process reads
    it from the same folder (models and cards are found from the working directory), as a user, across
    namespaces."""
    from metaflow import namespace

    (tmp_path / ".metaflow").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USERNAME", "ptdpo-test")
    namespace(None)
    yield
    _restore_typing()


def flow_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "mfhome"
    home.mkdir(exist_ok=True)
    return {
        "USERNAME": "ptdpo-test",
        "METAFLOW_USER": "ptdpo-test",
        "METAFLOW_HOME": str(home),  # no user profile (e.g. one pointing at a metadata service)
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "PTDPO_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PTDPO_HINT_CACHE": str(tmp_path / "hint-cache"),
    }


def runner(tmp_path: Path, config: Path | None):
    """A Runner for the flow; ``config=None`` for ``resume`` (it reuses the origin run's config and
    refuses ``--config``)."""
    from metaflow import Runner

    kwargs = {"config": [("config", str(config))]} if config is not None else {}
    r = Runner(str(FLOW), show_output=False, env=flow_env(tmp_path), cwd=str(tmp_path), **kwargs)
    _restore_typing()
    return r


def small_config(tmp_path: Path, base: Path = TINY, **overrides) -> Path:
    """tiny-test.json (or ``base``), smaller still: one hint shard, one benchmark of two items, the trained model
    only."""
    cfg = {
        "extends": str(base), "name": "tiny-test",
        "hints": {"shards": 1},
        "train": {"max_steps": 4, "checkpoint_every": 2},
        "eval": {"benchmarks": [{"name": "synthetic_id", "limit": 2}], "models": ["trained"]},
    }
    for k, v in overrides.items():
        cfg[k] = v if not isinstance(v, dict) else {**cfg.get(k, {}), **v}
    path = tmp_path / "test-config.json"
    path.write_text(json.dumps(cfg))
    return path


def card_payloads(html: str) -> list[dict]:
    """The card's component tree (Metaflow embeds it in the HTML as base64-encoded JSON)."""
    out = []
    for b64 in re.findall(r'window\.__MF_DATA__\["[^"]+"\]\s*=\s*"([A-Za-z0-9+/=]+)"', html):
        out.append(json.loads(base64.b64decode(b64)))
    return out


def components(tree) -> list[dict]:
    found = []
    if isinstance(tree, dict):
        if "type" in tree:
            found.append(tree)
        for v in tree.values():
            found.extend(components(v))
    elif isinstance(tree, list):
        for v in tree:
            found.extend(components(v))
    return found


def card_of(task, card_id: str) -> tuple[str, list[dict]]:
    from metaflow.cards import get_cards

    cards = [c for c in get_cards(task) if c.id == card_id]
    assert cards, f"no card {card_id!r} on {task.pathspec}"
    html = cards[0].get()
    return html, components(card_payloads(html))


def assert_card_has_plot_and_table(task, card_id: str, *words: str) -> None:
    html, comps = card_of(task, card_id)
    images = [c for c in comps if c.get("type") == "image"]
    assert images and all(str(c.get("src", "")).startswith("data:image/png;base64,") for c in images), card_id
    assert any(len(c["src"]) > 2000 for c in images), "the PNG is suspiciously small"
    assert any(c.get("type") == "table" for c in comps), card_id
    text = json.dumps(comps, ensure_ascii=False)
    for w in words:
        assert w in text, f"{w!r} not in card {card_id}"
    assert "<html" in html.lower()


def test_tiny_config_runs_the_whole_dag(tmp_path):
    import pandas as pd

    t0 = time.time()
    with runner(tmp_path, TINY) as r:
        result = r.run()
        status, stderr = result.status, result.stderr  # the logs go with the Runner's context
    _restore_typing()
    print(f"\n[timing] tiny full DAG: {time.time() - t0:.0f}s", file=sys.stderr)
    run = result.run
    assert status == "successful", stderr[-4000:]
    assert run.successful
    steps = {s.id for s in run}
    assert steps == {"start", "prepare_data", "generate_hints", "join_hints", "audit", "train", "trained",
                     "evaluate", "join_eval", "report", "end"}  # the one-node branch: no @parallel step
    assert len(list(run["generate_hints"])) == 2 and len(list(run["evaluate"])) == 4  # 2 shards; 2 x 2
    d = run.data

    cfg = json.loads(TINY.read_text())
    assert d.config["name"] == "tiny" and d.config["train"] == cfg["train"]
    assert d.train_config["policy"] == "tiny:0.5m" and d.train_config["clip_low"] == 0.2  # resolved

    man = d.data_manifest
    assert man["train"]["count"] == cfg["data"]["train"]["n"] and re.fullmatch(r"[0-9a-f]{64}", man["train"]["content_hash"])
    assert set(man["benchmarks"]) == {"synthetic_id", "synthetic_ood"}
    assert man["train"]["filtered_overlong"] == 0 and man["train"]["prompt_tokens"]["policy"] == "tiny:0.5m"
    assert all(b["count"] == 4 for b in man["benchmarks"].values())

    hints = d.hints
    assert isinstance(hints, pd.DataFrame) and len(hints) == man["train"]["count"]
    assert hints["item_id"].is_unique and hints["usable"].all()
    assert re.fullmatch(r"[0-9a-f]{64}", d.hints_hash)

    rep = d.audit_report
    assert rep["n_items"] == man["train"]["count"] and rep["pass_rate"] >= cfg["hints"]["audit"]["floor"]
    assert len(d.audit_verdicts) == man["train"]["count"]

    tm = d.train_metrics
    assert list(tm["step"]) == list(range(1, cfg["train"]["max_steps"] + 1))
    for col in ("reward", "accuracy", "ptd_loss", "student_entropy", "informative_groups", "response_length"):
        assert col in tm and tm[col].map(math.isfinite).all(), col
    assert d.final_step == cfg["train"]["max_steps"] and d.resumed_from_step == 0
    assert d.train_layout == "one_node" and d.train_world_size == 1

    assert d.policy["type"] == "model" and d.policy["key"]
    ev = d.eval_results
    assert list(ev.columns) == RESULT_COLUMNS
    assert set(ev["benchmark"]) == {"synthetic_id", "synthetic_ood"} and set(ev["model"]) == {"base", "trained"}
    acc = ev[ev["metric"] == "accuracy"]
    assert len(acc) == 4 and acc["value"].between(0, 1).all() and (acc["n"] == 4).all()
    assert "trained Δabs" in d.eval_comparison.columns
    s = d.summary
    assert s["name"] == "tiny" and s["training"]["final_step"] == cfg["train"]["max_steps"]
    assert set(s["results"]) >= {"synthetic_id", "synthetic_ood", "overall (mean accuracy)"}
    assert s["train_config"] == d.train_config and s["ptd"] == d.train_config["ptd"]  # resolved, not the raw JSON
    assert d.versions["metaflow"] == "2.19.39"

    # every checkpoint went through @checkpoint; the trained weights through @model and load back
    from metaflow import Checkpoint, load_model

    train_task = run["train"].task
    steps_saved = sorted(c["metadata"]["step"] for c in Checkpoint().list(task=train_task))
    assert steps_saved == [2, 4]
    from ptdpo.models import load_policy

    load_model(d.policy, str(tmp_path / "policy"))
    model, _ = load_policy(str(tmp_path / "policy"))
    assert sum(p.numel() for p in model.parameters()) > 100_000

    # cards: plots as PNG images, tables as tables
    assert_card_has_plot_and_table(train_task, "training", "reward", "ptd_loss", "informative_groups", "student_entropy",
                                   "Training config (resolved)", "ptd.lambda_ptd", "clip_high")
    assert_card_has_plot_and_table(run["audit"].task, "audit", "pass_rate")
    assert_card_has_plot_and_table(run["report"].task, "report", "synthetic_ood", "trained Δabs")


def test_kl_masking_ablation_generates_hints_and_masks_the_reference_kl(tmp_path):
    """``train.ptd = {"mask_only": true, "lambda_ptd": 0}`` (METHOD.md 2.7): no distillation, but the
    reference KL is switched off on the groups PTD would select, so the run needs the audited hints its
    mask is made of. The tiny random policy fails its groups, so some rollouts lose their KL term."""
    config = small_config(tmp_path, train={"max_steps": 2, "ptd": {"mask_only": True, "lambda_ptd": 0}})
    with runner(tmp_path, config) as r:
        result = r.run()
        status, stderr = result.status, result.stderr
    _restore_typing()
    assert status == "successful", stderr[-4000:]
    d = result.run.data
    ptd = d.run_config.train.ptd
    assert ptd.mask_only and ptd.lambda_ptd == 0 and ptd.uses_hints and not ptd.distills
    assert len(d.hints) == d.data_manifest["train"]["count"] and d.hints["usable"].any()  # hints were made
    assert "pass_rate" in d.audit_report and d.audit_verdicts is not None  # and audited
    tm = d.train_metrics
    assert list(tm["step"]) == [1, 2]
    assert (tm["kl_masked_rollout_frac"] > 0).any(), tm[["step", "accuracy", "kl_masked_rollout_frac"]]
    assert (tm["ptd_loss"] == 0).all()  # nothing distilled


def fail_then_resume(tmp_path, config):
    """Run ``config`` made to fail after training step 2 (no retries left), then ``resume`` it; returns
    (the failed origin run, the resumed run) once the resume has succeeded."""
    t0 = time.time()
    with runner(tmp_path, config) as r:
        failed = r.run(fail_after_step=2)
    _restore_typing()
    t1 = time.time()
    assert failed.status == "failed"
    origin = failed.run
    assert not origin.successful
    with runner(tmp_path, None) as r:
        resumed = r.resume(origin_run_id=origin.id)
        status, stderr = resumed.status, resumed.stderr
    _restore_typing()
    print(f"\n[timing] failing run: {t1 - t0:.0f}s, resume: {time.time() - t1:.0f}s", file=sys.stderr)
    assert status == "successful", stderr[-4000:]
    return origin, resumed.run


def test_failed_train_resumes_from_its_checkpoint(tmp_path):
    """Train fails after step 2 (its checkpoint saved) with no retries left; ``resume`` clones the steps
    before train and continues training at step 3 from the origin run's checkpoint."""
    config = small_config(tmp_path, retry={"train": {"times": 0}})
    origin, run = fail_then_resume(tmp_path, config)
    assert "injected failure after step 2" in str(origin["train"].task.exception)
    assert run.id != origin.id and run.successful
    # the steps before train were cloned, not re-run
    assert run["audit"].task.metadata_dict.get("origin-run-id") == origin.id
    d = run.data
    assert d.config["name"] == "tiny-test"  # resume reuses the origin run's config
    assert len(list(run["evaluate"])) == 1
    assert d.resumed_from_step == 2, d.resumed_from
    assert f"resume of run {origin.id}" in d.resumed_from
    assert d.final_step == 4
    steps = list(d.train_metrics["step"])
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the origin run's checkpoint, 3-4 trained here
    assert list(d.eval_results.columns) == RESULT_COLUMNS


# ------------------------------------------------------------------------------------ several nodes
MULTI_NODE_STEPS = {"start", "prepare_data", "generate_hints", "join_hints", "audit", "launch_nodes", "train_nodes",
                    "join_nodes", "trained", "evaluate", "join_eval", "report", "end"}


def _one_process_training(d, tmp_path: Path):
    """The run's training again, in this process (world size 1), from the run's own inputs."""
    from steps.audit import usable_hints
    from steps.train import run_training

    hints = usable_hints(d.hints.to_dict("records"), d.audit_verdicts)
    return run_training(d.config["train"], d.train_items, hints, tmp_path / "one-process", progress=False)


def _assert_same_training(d, tmp_path: Path) -> None:
    """Two gloo ranks on two nodes train like one process: metrics and weight updates (the trainer's
    rollouts do not depend on the rank count; see tests/test_trainer.py)."""
    from metaflow import load_model

    from ptdpo.models import load_policy

    one = _one_process_training(d, tmp_path)
    cols = ["reward", "ptd_loss", "response_length", "grad_norm", "student_entropy"]
    a = torch.tensor(one.metrics[cols].values, dtype=torch.float64)
    b = torch.tensor(d.train_metrics[cols].values, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-8), (a, b)
    load_model(d.policy, str(tmp_path / "two-nodes-policy"))
    m0, _ = load_policy(d.config["train"]["policy"])
    m1, _ = load_policy(str(one.model_dir))
    m2, _ = load_policy(str(tmp_path / "two-nodes-policy"))
    for (n, p0), (_, p1), (_, p2) in zip(m0.named_parameters(), m1.named_parameters(), m2.named_parameters()):
        d1, d2 = (p1 - p0).detach(), (p2 - p0).detach()
        assert float((d1 - d2).norm() / d1.norm().clamp(min=1e-12)) < 1e-3, n


def test_two_nodes_train_as_one_job_and_a_retry_restores_node0s_checkpoint_on_both(tmp_path):
    """tiny-2node.json with one retry: both nodes fail after step 2 (node 0 saved that checkpoint); the
    retry of the gang restores it on both nodes and trains steps 3-4; the result equals one process."""
    from metaflow import Checkpoint

    config = small_config(tmp_path, base=TINY_2NODE, retry={"train": {"times": 1, "minutes_between_retries": 0}})
    t0 = time.time()
    with runner(tmp_path, config) as r:
        result = r.run(fail_after_step=2)
        status, stderr, stdout = result.status, result.stderr, result.stdout
    _restore_typing()
    print(f"\n[timing] 2-node run with one retry: {time.time() - t0:.0f}s", file=sys.stderr)
    assert status == "successful", stderr[-4000:]
    assert "injected failure after step 2" in stdout + stderr  # attempt 0 did fail
    run = result.run
    assert {s.id for s in run} == MULTI_NODE_STEPS  # the multi-node branch only
    d = run.data
    assert d.train_layout == "multi_node" and d.train_nodes_count == 2
    nodes = sorted(run["train_nodes"], key=lambda t: t.data.node_index)
    assert [t.data.node_index for t in nodes] == [0, 1]
    assert all(int(t.metadata_dict["attempt"]) == 1 for t in nodes)  # the whole gang was retried
    node0 = nodes[0]
    # both nodes continued from node 0's checkpoint of attempt 0
    assert d.nodes_resumed_from == [d.resumed_from] * 2 and d.resumed_from.startswith("retry of ")
    assert node0.pathspec in d.resumed_from and "(step 2)" in d.resumed_from
    assert d.train_world_size == 2 and d.final_step == 4 and d.resumed_from_step == 2
    assert list(d.train_metrics["step"]) == [1, 2, 3, 4]
    # only node 0 saved checkpoints: step 2 (attempt 0, before failing), step 4 (attempt 1)
    assert sorted(c["metadata"]["step"] for c in Checkpoint().list(task=node0, attempt=0)) == [2]
    assert sorted(c["metadata"]["step"] for c in Checkpoint().list(task=node0, attempt=1)) == [4]
    assert d.policy["type"] == "model"
    assert list(d.eval_results.columns) == RESULT_COLUMNS and len(list(run["evaluate"])) == 1
    assert_card_has_plot_and_table(run["join_nodes"].task, "training", "reward", "ptd_loss")
    _assert_same_training(d, tmp_path)


def test_resumed_multi_node_run_restores_the_origin_checkpoint_on_every_node(tmp_path):
    """A 2-node run fails after step 2 with no retries left; ``resume`` re-runs the gang, and both nodes
    continue from the origin run's node-0 checkpoint."""
    config = small_config(tmp_path, base=TINY_2NODE, retry={"train": {"times": 0}}, train={"max_steps": 3})
    origin, run = fail_then_resume(tmp_path, config)
    assert run.successful and run["audit"].task.metadata_dict.get("origin-run-id") == origin.id
    d = run.data
    assert d.nodes_resumed_from == [d.resumed_from] * 2
    assert d.resumed_from.startswith(f"resume of run {origin.id}") and d.resumed_from_step == 2
    assert d.train_world_size == 2 and d.final_step == 3 and list(d.train_metrics["step"]) == [1, 2, 3]
