"""Fast tests of the flow's parts without running Metaflow: the data step, the report step, the cards,
and the checkpoint staging that connects the trainer's checkpoints to ``@checkpoint``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "flows"))


def _comps_json(components) -> str:
    return json.dumps([c.render() for c in components], default=str, ensure_ascii=False)


def test_prepare_data_manifest_and_branches():
    from steps.data import eval_branches, prepare_data

    data = {"train": {"format": "synthetic", "n": 6, "seed": 3, "image_size": 64}}
    ev = {"benchmarks": [{"name": "synthetic_id", "limit": 2}, {"name": "synthetic_ood", "limit": 3}]}
    p = prepare_data(data, ev)
    again = prepare_data(data, ev)
    assert len(p.train_items) == 6 and p.manifest["train"]["count"] == 6
    assert p.manifest["train"]["content_hash"] == again.manifest["train"]["content_hash"]  # deterministic
    other = prepare_data({"train": {**data["train"], "seed": 4}}, ev)
    assert other.manifest["train"]["content_hash"] != p.manifest["train"]["content_hash"]
    assert [b["name"] for b in p.benchmarks] == ["synthetic_id", "synthetic_ood"]
    assert p.manifest["benchmarks"]["synthetic_ood"]["count"] == 3
    branches = eval_branches(p.benchmarks, ["base", "trained"])
    assert [(b["benchmark"]["name"], b["model"]) for b in branches] == [
        ("synthetic_id", "base"), ("synthetic_id", "trained"), ("synthetic_ood", "base"), ("synthetic_ood", "trained")]
    with pytest.raises(ValueError, match="no items"):
        prepare_data({"train": {"format": "synthetic", "n": 1, "limit": 0}}, ev)


def test_prepare_data_takes_the_typed_sections_and_checks_plain_ones():
    from ptdpo.run_config import RunConfigError, data_section, eval_section
    from steps.data import prepare_data

    data = {"train": {"format": "synthetic", "n": 6, "seed": 3, "image_size": 64}}
    ev = {"benchmarks": [{"name": "synthetic_id", "limit": 2}], "models": ["trained"]}
    typed = prepare_data(data_section(data), eval_section(ev), seed=1)
    plain = prepare_data(data, ev, seed=1)
    assert typed.manifest == plain.manifest and [b["name"] for b in typed.benchmarks] == ["synthetic_id"]
    assert typed.manifest["train"]["spec"] == data["train"]  # the keys given (all differ from the defaults)
    shuffled = prepare_data({**data, "shuffle": True}, ev, seed=1)
    assert sorted(it.id for it in shuffled.train_items) == sorted(it.id for it in plain.train_items)
    with pytest.raises(RunConfigError, match=r'data\.shuffle: expected true or false, got "yes"'):
        prepare_data({**data, "shuffle": "yes"}, ev)
    with pytest.raises(RunConfigError, match=r"data\.train\.n: expected an integer or null"):
        prepare_data({"train": {**data["train"], "n": "6"}}, ev)


def _results() -> pd.DataFrame:
    rows = []
    for bench, base, trained in [("a", 0.5, 0.6), ("b", 0.2, 0.1)]:
        for model, v in (("base", base), ("trained", trained)):
            rows.append({"benchmark": bench, "model": model, "metric": "accuracy", "value": v, "n": 10})
    return pd.DataFrame(rows)


def test_report_comparison_and_summary_with_a_baseline_run():
    from steps.report import build_summary, comparison_table

    ev = _results()
    grpo = ev.copy()
    grpo.loc[grpo["model"] == "trained", "value"] = [0.55, 0.15]
    table = comparison_table(ev, {"grpo": grpo})
    assert list(table.columns[:4]) == ["benchmark", "base", "trained", "grpo"]
    row = table[table["benchmark"] == "a"].iloc[0]
    assert row["trained Δabs"] == pytest.approx(0.1) and row["grpo Δabs"] == pytest.approx(0.05)
    metrics = pd.DataFrame({"step": [1, 2], "reward": [0.1, 0.3], "accuracy": [0.0, 0.5], "ptd_loss": [0.2, 0.1]})
    s = build_summary({"name": "x", "train": {"policy": "tiny:0.5m"}}, {"train": {"count": 4, "content_hash": "h"}},
                      {"pass_rate": 1.0}, metrics, ev, table, {"final_step": 2})
    assert s["training"]["steps"] == 2 and s["training"]["reward_first"] == pytest.approx(0.1)
    assert s["results"]["a"]["trained"] == pytest.approx(0.6)
    json.dumps(s)  # JSON-able


def test_cards_embed_png_plots_and_tables():
    from _cards import audit_components, results_components, training_components

    from steps.report import comparison_table

    metrics = pd.DataFrame({"step": [1, 2, 3], "reward": [0.1, 0.2, 0.4], "accuracy": [0, 0.5, 0.5],
                            "ptd_loss": [0.3, 0.2, 0.1], "student_entropy": [2.0, 1.9, 1.7],
                            "informative_groups": [0.5, 0.5, 1.0], "response_length": [8, 9, 7]})
    text = _comps_json(training_components(metrics, info={"final step": 3}))
    assert text.count("data:image/png;base64,") == 1 and "informative_groups" in text
    verdicts = pd.DataFrame([
        {"item_id": "i1", "passed": True, "reasons": [], "severity": "ok", "details": [], "text": "look left"},
        {"item_id": "i2", "passed": False, "reasons": ["answer_value"], "severity": "hard",
         "details": ["answer_value (hard) in steps[0]: '7'"], "text": "the answer is 7"},
    ])
    report = {"pass_rate": 0.5, "n_items": 2, "reason_counts": {"answer_value": 1}, "summary": "1/2 pass"}
    text = _comps_json(audit_components(report, verdicts))
    assert text.count("data:image/png;base64,") == 2 and "the answer is 7" in text and "Rejected examples (1 of 2" in text
    ev = _results()
    text = _comps_json(results_components({"name": "x", "eval_errors": []}, comparison_table(ev), ev, metrics))
    assert text.count("data:image/png;base64,") == 2 and "trained Δabs" in text


class _FakeCheckpointer:
    """Stands in for ``current.checkpoint``: copies what is saved, as the datastore would."""

    def __init__(self, store: Path):
        self.store, self.saved = store, []

    def save(self, path, name, metadata, latest):
        import shutil

        dst = self.store / f"{len(self.saved)}"
        shutil.copytree(path, dst)
        self.saved.append((dst, name, metadata))


def test_checkpoint_staging_gives_a_folder_run_training_can_resume_from(tmp_path):
    import torch
    from _checkpoints import checkpoint_saver

    from ptdpo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    root = tmp_path / "ckpt"
    fake = SimpleNamespace(checkpoint=_FakeCheckpointer(tmp_path / "store"))
    on_checkpoint = checkpoint_saver(fake, tmp_path / "staging")
    for step in (2, 4):
        path = save_checkpoint(root, step, {"w": torch.full((2,), float(step))}, {"step": step}, keep=1)
        on_checkpoint(path)
    assert [(n, m["step"]) for _, n, m in fake.checkpoint.saved] == [("train", 2), ("train", 4)]
    restored = fake.checkpoint.saved[-1][0]
    assert sorted(p.name for p in restored.iterdir()) == ["latest", "step-00000004"]  # one step, own pointer
    model_state, _, step = load_checkpoint(latest_checkpoint(restored))
    assert step == 4 and model_state["w"].tolist() == [4.0, 4.0]
    assert not list((tmp_path / "staging").iterdir())  # staging cleaned up


class _FakeLoader:
    """Stands in for ``current.checkpoint`` on a node of a ``@parallel`` step: nothing auto-loaded; ``load``
    writes the checkpoint a reference names into the folder asked for, as the datastore copy would be
    (a ``step-*`` folder and its ``latest`` pointer), corrupt when the reference says so."""

    is_loaded = False

    def __init__(self):
        self.loaded = []

    def load(self, ref, path):
        import torch

        from ptdpo.checkpoint import save_checkpoint

        self.loaded.append(ref)
        step = ref["metadata"]["step"]
        folder = save_checkpoint(path, step, {"w": torch.full((4,), float(step))}, {"step": step})
        if ref.get("corrupt"):
            (folder / "model.pt").write_bytes(b"x" * (folder / "model.pt").stat().st_size)


def _node(retry_count: int, origin: str | None = None, node_index: int = 1):
    return SimpleNamespace(
        flow_name="PTDPOFlow", run_id="7", step_name="train_nodes", task_id=f"12_node_{node_index}",
        retry_count=retry_count, origin_run_id=origin, checkpoint=_FakeLoader(),
        parallel=SimpleNamespace(num_nodes=2, node_index=node_index, main_ip="10.0.0.5", control_task_id="12"),
    )


def test_every_node_restores_node0s_checkpoint_on_retry_and_the_origin_runs_on_resume(monkeypatch, tmp_path):
    import _checkpoints
    import _lineage

    asked = []
    saved = {("PTDPOFlow/7/train_nodes/12", 1): [{"name": "train", "metadata": {"step": 6}, "url": "ds://7/a1"}],
             ("PTDPOFlow/7/train_nodes/12", 0): [{"name": "train", "metadata": {"step": 4}, "url": "ds://7/a0"}],
             ("PTDPOFlow/5/train_nodes/12", 0): [{"name": "train", "metadata": {"step": 4}, "url": "ds://5/a0"}]}

    def refs(pathspec, attempt):
        asked.append((pathspec, attempt))
        return saved.get((pathspec, attempt), [])

    monkeypatch.setattr(_checkpoints, "_refs", refs)
    monkeypatch.setattr(_checkpoints, "_run_tasks", lambda flow, run_id, step: [
        SimpleNamespace(pathspec=f"{flow}/{run_id}/{step}/12", current_attempt=0)])
    monkeypatch.setattr(_lineage, "run_chain", lambda current: [current.origin_run_id] if current.origin_run_id else [])
    # a retry (attempt 2): the control task's earlier attempts, newest first, on any node
    node = _node(retry_count=2)
    restored = _checkpoints.restore_for_training(node, "PTDPOFlow", tmp_path / "a", "train_nodes", control_task_id="12")
    assert restored.path == str(tmp_path / "a" / "candidate-0" / "step-00000006") and restored.step == 6
    assert restored.source == "retry of PTDPOFlow/7/train_nodes/12 (step 6)"
    assert asked == [("PTDPOFlow/7/train_nodes/12", 1)]  # the newest attempt had a usable one
    assert node.checkpoint.loaded == saved[("PTDPOFlow/7/train_nodes/12", 1)]
    # the same retry with attempt 1's checkpoint corrupt: skipped, attempt 0's used
    saved[("PTDPOFlow/7/train_nodes/12", 1)][0]["corrupt"] = True
    asked.clear()
    restored = _checkpoints.restore_for_training(_node(2), "PTDPOFlow", tmp_path / "b", "train_nodes", "12")
    assert restored.source == "retry of PTDPOFlow/7/train_nodes/12 (step 4)"
    assert asked == [("PTDPOFlow/7/train_nodes/12", 1), ("PTDPOFlow/7/train_nodes/12", 0)]
    assert [(e["attempt"], e["step"], e["outcome"]) for e in restored.chain] == [(1, 6, "skipped"), (0, 4, "used")]
    # a resume (first attempt of the new run): the origin run's newest checkpoint of the same step
    node = _node(retry_count=0, origin="5")
    restored = _checkpoints.restore_for_training(node, "PTDPOFlow", tmp_path / "c", "train_nodes", control_task_id="12")
    assert restored.source == "resume of run 5 (step 4)" and node.checkpoint.loaded[0]["url"] == "ds://5/a0"
    # a first attempt of a fresh run: the base policy
    restored = _checkpoints.restore_for_training(_node(0), "PTDPOFlow", tmp_path / "d", "train_nodes", "12")
    assert (restored.path, restored.source, restored.step, restored.chain) == (None, None, 0, [])


def test_gang_port_is_the_same_on_every_node_and_new_on_a_retry(monkeypatch):
    from _checkpoints import Gang

    monkeypatch.delenv("PTDPO_MASTER_PORT", raising=False)
    g0, g1 = Gang.from_current(_node(0, node_index=0)), Gang.from_current(_node(0, node_index=1))
    assert (g0.num_nodes, g0.node_index, g1.node_index, g0.main_ip) == (2, 0, 1, "10.0.0.5")
    assert g0.master_port == g1.master_port and 20000 <= g0.master_port < 30000
    assert Gang.from_current(_node(1, node_index=0)).master_port != g0.master_port
    monkeypatch.setenv("PTDPO_MASTER_PORT", "29400")
    assert Gang.from_current(_node(0)).master_port == 29400
