"""The learning-signal study (flows/study_flow.py, ptdpo/study/, steps/study.py).

Fast: the study config's branches and checks, the all-fail -> solvable statistics, the report tables.
Slow: a two-arm, one-seed, few-step run of the whole study flow through ``metaflow.Runner``
(configs/study_smoke.json) in a temporary folder; every artifact the report relies on is there and
sensible.
"""

from __future__ import annotations

import base64
import json
import math
import re
import typing
from pathlib import Path

import pandas as pd
import pytest
import torch  # noqa: F401

from ptdpo.study.arms import StudyConfigError, branches, check_study_config, load_study_config
from ptdpo.study.report import curve_table, final_table, headline, late_training_table, solvable_table
from ptdpo.study.tracking import GroupTracker, solvable_stats

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "study_flow.py"
SMOKE = ROOT / "configs" / "study_smoke.json"
_COLLECT_PARAMETERS = getattr(typing, "_collect_parameters", None)  # see tests/test_flow_e2e.py


def _restore_typing() -> None:
    if _COLLECT_PARAMETERS is not None:
        typing._collect_parameters = _COLLECT_PARAMETERS


# ------------------------------------------------------------------------------------------ config
def test_study_config_has_every_arm_and_seed():
    cfg = load_study_config(ROOT / "configs" / "study.json")
    assert set(cfg["arms"]) == {"grpo", "ptd_structured", "ptd_unstructured", "answer_distill", "grpo_kl_masked"}
    bs = branches(cfg)
    assert len(bs) == len(cfg["arms"]) * len(cfg["seeds"])
    by = {(b["arm"], b["seed"]): b for b in bs}
    assert by[("grpo", 0)]["train"]["ptd"]["enabled"] is False
    assert by[("ptd_unstructured", 1)]["hints"] == "unstructured" and by[("ptd_unstructured", 1)]["train"]["seed"] == 1
    assert by[("answer_distill", 0)]["train"]["ptd"]["teacher_context"] == "answer"
    assert by[("grpo_kl_masked", 0)]["train"]["ptd"]["mask_only"] is True
    # every arm shares everything else
    shared = {k: v for k, v in by[("grpo", 0)]["train"].items() if k != "ptd"}
    for b in bs:
        assert {k: v for k, v in b["train"].items() if k not in ("ptd", "seed")} == {k: v for k, v in shared.items() if k != "seed"}


def test_study_config_errors_are_collected():
    cfg = json.loads(SMOKE.read_text())
    cfg["arms"]["bad"] = {"hints": "sometimes", "train": {"ptd": {"lamda_ptd": 1}}}
    cfg["arms"]["nohints"] = {"hints": None, "train": {"ptd": {"enabled": True}}}
    with pytest.raises(StudyConfigError) as e:
        check_study_config(cfg)
    msg = str(e.value)
    assert "sometimes" in msg and "lamda_ptd" in msg and "needs hints" in msg


# ---------------------------------------------------------------------------------------- base model
def test_warm_start_mixture_is_answer_free_and_has_the_requested_shares():
    from ptdpo.hints.render import ANSWER_PREFIX, HINT_HEADER
    from ptdpo.study.base_model import (
        DataSpec,
        WarmStartSpec,
        oracle_hints,
        reasoning_for,
        warm_start_examples,
    )

    items = DataSpec(families=["spatial"], difficulty=[2, 2]).generate(40, split="warm")
    hints = oracle_hints(items)
    assert len(hints) >= 35
    spec = WarmStartSpec(hint_frac=0.5, answer_frac=0.25, reasoning="coords")
    xs, ys, cs = warm_start_examples(items, hints, spec)
    n_hint = sum(c is not None and c.startswith(HINT_HEADER) for c in cs)
    n_ans = sum(c is not None and c.startswith(ANSWER_PREFIX) for c in cs)
    assert 10 <= n_hint <= 30 and 3 <= n_ans <= 18 and n_hint + n_ans < len(items)
    for it, y, c in zip(xs, ys, cs):
        assert y.endswith(f"<answer>{it.answer}</answer>")
        if c is not None and c.startswith(HINT_HEADER):  # the hint never carries the yes/no answer
            assert it.answer not in c.lower().split()
    r = reasoning_for(items[0], "coords")
    assert r.startswith("a ") and " b " in r and reasoning_for(items[0], "look") == "look"


def test_boxes_reasoning_is_copied_from_the_hint_and_decides_the_relation():
    """The "boxes" think block holds the relation and the first corner of both hint boxes: every number in
    it appears in the rendered hint (a reader of the hint can copy it), it never says yes or no, and the
    leading digits of the relation's axis give the answer for almost every item."""
    from ptdpo.hints import render_hint
    from ptdpo.study.base_model import DataSpec, oracle_hints, reasoning_for

    items = DataSpec(families=["spatial"], difficulty=[2, 2]).generate(60, split="warm")
    hints = oracle_hints(items)
    decided = 0
    for it in items:
        if it.meta["query"]["type"] != "relation" or it.id not in hints:
            continue
        text = render_hint(hints[it.id])
        r = reasoning_for(it, "boxes")
        rel = it.meta["query"]["relation"]
        assert r.startswith(rel + " (") and not ({"yes", "no"} & set(r.split()))
        corners = re.findall(r"\((\d+),(\d+)\)", r)
        assert len(corners) == 2
        for x, y in corners:
            assert f"({x},{y})" in text
        axis = 0 if rel in ("left of", "right of") else 1
        a, b = (int(c[axis]) for c in corners)
        smaller_first = a < b if rel in ("left of", "above") else a > b
        decided += ("yes" if smaller_first else "no") == it.answer
        lead = reasoning_for(it, "coords_rel").split()
        assert " ".join(lead[:-2]) == rel and [int(d) for d in lead[-2:]] == [a // 100, b // 100]
    assert decided >= 0.9 * sum(it.meta["query"]["type"] == "relation" for it in items)


def test_box_reasoning_error_exact_malformed_and_clipped():
    from ptdpo.study.base_model import DataSpec, reasoning_for
    from ptdpo.study.diagnostics import box_reasoning_error

    items = [it for it in DataSpec(families=["spatial"], difficulty=[2, 2]).generate(20, split="warm")
             if it.meta["query"]["type"] == "relation"][:3]
    gold = [f"<think>{reasoning_for(it, 'boxes')}</think><answer>{it.answer}</answer>" for it in items]
    assert box_reasoning_error(gold, items) == {"think_parsed": 1.0, "think_exact": 1.0, "corner_abs_error": 0.0, "n": 3}
    rel = items[0].meta["query"]["relation"]
    wrong = [gold[0], "<think>left of56)56)</think><answer>no</answer>",
             f"<think>{rel} (99999999,0) (0,0)</think><answer>no</answer>"]
    r = box_reasoning_error(wrong, items)
    assert r["think_parsed"] == 2 / 3 and r["think_exact"] == 1 / 3
    want = [int(v) for c in re.findall(r"\((\d+),(\d+)\)", reasoning_for(items[2], "boxes")) for v in c]
    clipped = [abs(1000 - want[0])] + [abs(0 - w) for w in want[1:]]
    assert r["corner_abs_error"] == pytest.approx(sum(clipped) / 8) and r["corner_abs_error"] <= 1000


# ---------------------------------------------------------------------------------------- tracking
class _R:
    def __init__(self, item_index, accuracy, ptd=False):
        self.item_index, self.accuracy, self.ptd = item_index, accuracy, ptd


def test_solvable_stats_first_vs_last_appearance():
    t = GroupTracker()
    t.update(1, [_R(0, 0), _R(0, 0), _R(1, 0), _R(1, 0), _R(2, 1), _R(2, 0)])
    t.update(2, [_R(3, 0), _R(3, 0)])  # seen once: not counted
    t.update(5, [_R(0, 1), _R(0, 0), _R(1, 0), _R(1, 0), _R(2, 0), _R(2, 0)])
    s = solvable_stats(t.table())
    assert s["items_seen_twice"] == 3 and s["initial_all_fail"] == 2 and s["became_solvable"] == 1
    assert s["frac_all_fail_became_solvable"] == 0.5 and s["frac_solvable_became_all_fail"] == 1.0
    assert math.isnan(solvable_stats(pd.DataFrame())["frac_all_fail_became_solvable"])


def test_report_tables_mean_and_spread_over_seeds():
    m = pd.DataFrame([{"arm": a, "seed": s, "step": k, "accuracy": acc + 0.1 * s, "response_length": 10.0}
                      for a, acc in (("grpo", 0.2), ("ptd", 0.4)) for s in (0, 1) for k in (1, 2, 3)])
    c = curve_table(m, "accuracy")
    row = c[(c["arm"] == "ptd") & (c["step"] == 2)].iloc[0]
    assert row["mean"] == pytest.approx(0.45) and row["std"] == pytest.approx(0.05) and row["n"] == 2
    assert set(late_training_table(m)["arm"]) == {"grpo", "ptd"}
    ev = pd.DataFrame([{"arm": a, "seed": s, "split": sp, "metric": "greedy_accuracy", "value": v + s * 0.1}
                       for a, v in (("grpo", 0.5), ("ptd", 0.6)) for s in (0, 1) for sp in ("id", "ood")])
    ft = final_table(ev)
    assert list(ft.columns) == ["arm", "split", "greedy_accuracy"] and len(ft) == 4
    assert headline(ev)["id"]["ptd"] == pytest.approx(0.1)
    sv = pd.DataFrame([{"arm": "grpo", "seed": 0, "initial_all_fail": 2, "became_solvable": 1,
                        "frac_all_fail_became_solvable": 0.5, "frac_solvable_became_all_fail": 0.0}])
    assert solvable_table(sv).iloc[0]["frac_all_fail_became_solvable"] == 0.5


# ------------------------------------------------------------------------------------- flow (slow)
@pytest.mark.slow
def test_study_flow_two_arms_one_seed(tmp_path, monkeypatch):
    """The whole DAG on configs/study_smoke.json: start -> prepare_data -> build_base -> train x2 ->
    evaluate x2 -> join -> report -> end, with the artifacts the report reads."""
    from metaflow import Flow, Runner, namespace

    (tmp_path / ".metaflow").mkdir()
    (tmp_path / "mfhome").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USERNAME", "ptdpo-test")
    env = {"USERNAME": "ptdpo-test", "METAFLOW_USER": "ptdpo-test", "METAFLOW_HOME": str(tmp_path / "mfhome"),
           "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
           "PTDPO_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        with Runner(str(FLOW), show_output=False, env=env, cwd=str(tmp_path),
                    config=[("config", str(SMOKE))]) as r:
            result = r.run(max_workers=2)
            status, stderr = result.status, result.stderr
    finally:
        _restore_typing()
    assert status == "successful", stderr[-3000:]
    namespace(None)
    run = Flow("StudyFlow").latest_run
    d = run.data
    cfg = json.loads(SMOKE.read_text())
    # base model: a versioned model reference and its hint-ability measurement
    assert d.base_model and d.base_report["hint_ability"]["n"] > 0
    for k in ("acc_with_hint", "acc_without_hint", "acc_with_unstructured_hint"):
        assert 0.0 <= d.base_report["hint_ability"][k] <= 1.0
    # one trained policy per (arm, seed)
    assert set(d.policies) == {"grpo/0", "ptd_structured/0"}
    m = d.train_metrics
    assert set(m["arm"]) == {"grpo", "ptd_structured"} and len(m) == 2 * cfg["train"]["max_steps"]
    assert (m[m["arm"] == "grpo"]["ptd_rollout_frac"] == 0).all()
    assert (m[m["arm"] == "grpo"]["kl_masked_rollout_frac"] == 0).all()
    for col in ("accuracy", "student_entropy", "response_length", "informative_groups"):
        assert m[col].notna().all(), col
    # evaluation: base + both arms on both splits
    ev = d.eval_results
    assert set(ev["arm"]) == {"base", "grpo", "ptd_structured"} and set(ev["split"]) == {"id", "ood"}
    assert ev[ev["metric"] == "greedy_accuracy"]["value"].between(0, 1).all()
    n_eval = cfg["n_eval"]
    assert ev[ev["metric"] == "greedy_top_answer_share"]["value"].between(1 / n_eval, 1).all()
    assert len(d.solvable) == 2 and len(d.groups) > 0
    assert "delta_vs_grpo" in d.summary and len(d.final_table) == 6
    from metaflow.cards import get_cards

    cards = [c for c in get_cards(run["report"].task) if c.id == "study"]
    assert cards
    payloads = [json.loads(base64.b64decode(b)) for b in
                re.findall(r'window\.__MF_DATA__\["[^"]+"\]\s*=\s*"([A-Za-z0-9+/=]+)"', cards[0].get())]
    text = json.dumps(payloads)
    assert "data:image/png;base64" in text and "Base model: can it use a hint?" in text
    _restore_typing()
