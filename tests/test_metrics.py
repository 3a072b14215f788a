"""One home for the training metrics: every name the trainer emits is registered once (ptdpo/metrics.py),
no other module holds (column, label) pairs, the reports take their labels from the registry, and the
accumulators give the hand-computed values."""

from __future__ import annotations

import ast
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from ptdpo import metrics as M
from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.hints.schema import Hint, Region
from ptdpo.objectives import LossCounts

ROOT = Path(__file__).resolve().parents[1]


def test_registry_names_labels_and_meanings():
    names = [m.name for m in M.METRICS]
    assert len(names) == len(set(names))
    for m in M.METRICS:
        assert m.name.isidentifier() and m.label.strip() and m.meaning.strip(), m
    assert M.label("ptd_loss_weighted") == "lambda_ptd * PTD loss"
    assert M.curves("reward", "kl_ref") == (("reward", "reward"), ("kl_ref", "KL to reference"))
    with pytest.raises(KeyError, match="unknown training metric 'ptd_los'"):
        M.curves("ptd_los")
    assert dict(M.glossary(["ptd_loss"]))["ptd_loss"].startswith("L_PTD")


def _label_pairs(tree: ast.AST, names: set[str]) -> list[int]:
    """Line numbers of list/tuple literals of (metric name, label) pairs, and of dicts mapping metric
    names to string labels (at least two entries)."""
    def is_pair(e) -> bool:
        return (isinstance(e, ast.Tuple) and len(e.elts) == 2
                and all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in e.elts)
                and e.elts[0].value in names)

    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple) and sum(is_pair(e) for e in node.elts) >= 2:
            hits.append(node.lineno)
        if isinstance(node, ast.Dict):
            labelled = [k for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value in names
                        and isinstance(v, ast.Constant) and isinstance(v.value, str)]
            if len(labelled) >= 2:
                hits.append(node.lineno)
    return hits


def test_no_other_module_defines_metric_labels():
    names = set(M.BY_NAME)
    offenders = []
    for folder in ("ptdpo", "steps", "flows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "ptdpo" / "metrics.py":
                continue
            for line in _label_pairs(ast.parse(path.read_text()), names):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"(metric, label) pairs outside ptdpo/metrics.py: {offenders}"
    # the check finds what it looks for
    assert _label_pairs(ast.parse('CURVES = (("reward", "reward"), ("accuracy", "acc"))'), names) == [1]
    assert _label_pairs(ast.parse('LABELS = {"reward": "R", "kl_ref": "KL"}'), names) == [1]


def test_reports_take_their_labels_from_the_registry():
    sys.path.insert(0, str(ROOT / "flows"))
    from ptdpo.study.report import CURVES as STUDY_CURVES
    from steps.report import CURVES as RUN_CURVES

    for curves in (RUN_CURVES, STUDY_CURVES):
        assert curves and all(label == M.label(name) for name, label in curves)
    assert "ptd_loss_weighted" in dict(RUN_CURVES)


def _hints(items):
    return {
        it.id: Hint(item_id=it.id, regions=[Region(bbox=[100, 100, 500, 500], label="shapes", why="the objects")],
                    steps=["Look at every shape.", "Keep the ones asked about."], traps=["Other colours."],
                    generator={"name": "test", "model": "none", "prompt_version": "0"})
        for it in items
    }


def _parity_reward(texts, items):
    return [(float(len(t) % 2 == 0), 1.0) for t in texts]


@pytest.mark.parametrize("train", [
    {"algorithm": "grpo", "kl_coef": 0.01, "ptd": {"lambda_ptd": 0.5}, "mini_batch_prompts": 1, "epochs_per_batch": 2},
    {"algorithm": "gspo", "ptd": {"lambda_ptd": 0.25}},
    {"algorithm": "dapo", "dynamic_sampling": True, "ptd": {"lambda_ptd": 0.5}},
])
def test_every_metric_the_trainer_emits_is_registered(tiny_policy, train):
    from ptdpo.trainer import Trainer

    train = copy.deepcopy(train)
    ptd = train.pop("ptd")
    cfg = TrainConfig(policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=4,
                      max_response_length=8, lr=1e-2, weight_decay=0.0, seed=3, **{"kl_coef": 0.0, **train},
                      ptd=PTDConfig(k=8, **ptd)).resolved()
    items = generate_synthetic(4, seed=0, families=["count_attr"], image_size=64)
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    trainer = Trainer(cfg, model, processor, items, hints=_hints(items), reward_fn=_parity_reward)
    m = trainer.train_step().metrics
    unregistered = sorted(set(m) - set(M.BY_NAME))
    assert not unregistered, f"metrics emitted but not in ptdpo/metrics.py: {unregistered}"
    assert {"ptd_loss", "ptd_loss_weighted", "teacher_entropy", "student_entropy_failed", "grad_norm"} <= set(m)
    assert m["ptd_loss"] > 0 and m["ptd_loss_weighted"] == pytest.approx(cfg.ptd.lambda_ptd * m["ptd_loss"])


def test_outcome_entropy_split_by_hand():
    e = M.OutcomeEntropy()
    e.add(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, False]))
    e.add(torch.tensor([4.0]), torch.tensor([True]))
    assert (e.sum_correct, e.sum_failed, e.n_correct, e.n_failed) == (5.0, 5.0, 2, 2)
    assert e.metrics("x") == {"x": 2.5, "x_correct": 2.5, "x_failed": 2.5}
    doubled = e.reduce(lambda v: 2 * v)  # stands for the sum over two identical ranks
    assert doubled.n == 8 and doubled.metrics("x")["x"] == 2.5
    only_failed = M.OutcomeEntropy()
    only_failed.add(torch.tensor([0.5, 1.5]), torch.tensor([False, False]))
    out = only_failed.metrics("t")
    assert math.isnan(out["t_correct"]) and out["t_failed"] == 1.0 and out["t"] == 1.0


def test_update_totals_by_hand():
    t = M.UpdateTotals()
    t.add({"pg_loss": torch.tensor(0.5), "pg_clipfrac": torch.tensor(0.25), "kl_ref_sum": torch.tensor(3.0),
           "kl_ref": torch.tensor(0.3), "ptd_loss_sum": torch.tensor(2.0), "ptd_loss": torch.tensor(0.2)}, pg_tokens=4)
    t.add({"pg_loss": torch.tensor(-0.1), "pg_clipfrac": torch.tensor(1.0)}, pg_tokens=12)
    t.add({"ptd_loss_sum": torch.tensor(1.0), "ptd_loss": torch.tensor(0.1)}, pg_tokens=0)  # PTD-only micro-batch
    out = t.metrics(LossCounts(pg_tokens=16, pg_seqs=4, kl_tokens=10, ptd_tokens=6), lambda_ptd=0.5)
    assert out["pg_clipfrac"] == pytest.approx((0.25 * 4 + 1.0 * 12) / 16)
    assert out["pg_loss"] == pytest.approx(0.4)
    assert out["kl_ref"] == pytest.approx(0.3) and out["ptd_loss"] == pytest.approx(0.5)
    assert out["ptd_loss_weighted"] == pytest.approx(0.25)
    assert math.isnan(out["student_entropy_correct"])  # no tokens were added
    assert M.mean_over_updates([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 2.0, "b": 2.0}
