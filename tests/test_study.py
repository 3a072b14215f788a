"""The learning-signal study (flows/study_flow.py, ptdpo/study/, steps/study.py).

Fast: the study config's branches and checks, the all-fail -> solvable statistics, the report tables.
Slow: a two-arm, one-seed, few-step run of the whole study flow through ``metaflow.Runner``
(configs/study_smoke.json) in a temporary folder; every artifact the report relies on is there and
sensible.
"""

from __future__ import annotations

import json
import math
import re
import sys
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_flow_e2e import _restore_typing, card_payloads, flow_env  # noqa: E402


# ------------------------------------------------------------------------------------------ config
def test_study_config_has_every_arm_and_seed():
    """The issue-8 (yes/no) study's config, kept to reproduce docs/study.md's numbers of that study."""
    cfg = load_study_config(ROOT / "configs" / "study_yesno.json")
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
def test_study_flow_fails_in_one_branch_and_resume_finishes_it(tmp_path, monkeypatch):
    """The whole DAG on configs/study_smoke.json (4 arms, one seed): start -> prepare_data -> build_base ->
    train x5 (3 arms + a 2-point KL sweep) -> evaluate x5 -> join -> match_kl -> launch_matched ->
    train_matched -> evaluate_matched -> join_matched -> report -> end. The run is made to fail in the ``ptd_shuffled/0``
    branch (``--fail_branch``); ``resume`` clones the finished tasks, trains that branch again and ends
    with every artifact the report reads."""
    from metaflow import Flow, Runner, namespace

    (tmp_path / ".metaflow").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USERNAME", "ptdpo-test")
    env = flow_env(tmp_path)
    try:
        with Runner(str(FLOW), show_output=False, env=env, cwd=str(tmp_path),
                    config=[("config", str(SMOKE))]) as r:
            failed = r.run(max_workers=2, fail_branch="ptd_shuffled/0")
            assert failed.status == "failed"
            origin = failed.run
        _restore_typing()
        with Runner(str(FLOW), show_output=False, env=env, cwd=str(tmp_path)) as r:
            resumed = r.resume(origin_run_id=origin.id, max_workers=2)
            status, stderr = resumed.status, resumed.stderr
    finally:
        _restore_typing()
    assert status == "successful", stderr[-3000:]
    namespace(None)
    run = Flow("StudyFlow").latest_run
    assert run.id != origin.id and run.successful
    assert "injected failure in branch ptd_shuffled/0" in str([t.exception for t in origin["train"] if not t.successful])
    trains = {t.data.branch["arm"]: t for t in run["train"]}
    # the branches that had finished were cloned from the failed run (they name the origin task), the failed
    # one trained again (every task of a resumed run names the origin run)
    assert trains["grpo"].metadata_dict.get("origin-run-id") == origin.id
    assert trains["grpo"].metadata_dict.get("origin-task-id")
    assert trains["ptd_shuffled"].metadata_dict.get("origin-task-id") is None
    d = run.data
    cfg = json.loads(SMOKE.read_text())
    assert d.base_model and d.base_report["hint_ability"]["n"] > 0
    for k in ("acc_with_hint", "acc_without_hint", "acc_with_unstructured_hint"):
        assert 0.0 <= d.base_report["hint_ability"][k] <= 1.0
    gate = d.base_report["gate"]
    assert gate["margins"]["n_candidates"] >= 20 and 0 <= gate["groups"]["all_fail_frac"] <= 1
    assert set(gate["verdict"]) >= {"margin_met", "all_fail_met", "passed"}
    assert d.data_manifest["audit"]["pass_rate"] == 1.0
    arms = {"grpo", "ptd_structured", "ptd_shuffled", "grpo_kl_matched"}
    assert set(d.policies) == {f"{a}/0" for a in arms}
    m = d.train_metrics
    assert set(m["arm"]) == arms and len(m) == 4 * cfg["train"]["max_steps"]  # the sweep's runs are kept apart
    assert [r["kl_coef"] for r in sorted(d.kl_sweep_runs, key=lambda r: r["kl_coef"])] == cfg["kl_sweep"]["coefs"]
    chosen = d.kl_match["sweep"]["kl_coef"]
    assert {t.data.branch["train"]["kl_coef"] for t in run["train_matched"]} == {chosen}
    assert d.kl_match["arm"] == "grpo_kl_matched" and d.kl_match["target"] == "ptd_structured"
    assert (m[m["arm"] == "grpo"]["ptd_rollout_frac"] == 0).all()
    assert (m[m["arm"] == "grpo"]["kl_masked_rollout_frac"] == 0).all()
    for col in ("accuracy", "student_entropy", "response_length", "informative_groups", "kl_ref_true"):
        assert m[col].notna().all(), col
    assert (m["kl_ref_true"] >= 0).all()  # k3 on every rollout: non-negative term by term
    ev = d.eval_results
    assert set(ev["arm"]) == arms | {"base"} and set(ev["split"]) == {"id", "ood"}
    assert ev[ev["metric"] == "greedy_accuracy"]["value"].between(0, 1).all()
    n_eval = cfg["n_eval"]
    assert ev[ev["metric"] == "greedy_top_answer_share"]["value"].between(1 / n_eval, 1).all()
    assert len(d.solvable) == 4 and len(d.groups) > 0
    assert "delta_vs_grpo" in d.summary and len(d.final_table) == 10
    assert set(d.accuracy_table["id"]["arm"]) == arms | {"base"}
    assert len(d.claims) == 5 and d.summary["run"] == f"StudyFlow/{run.id}"
    assert d.wall_time_s >= d.summary["train_time_s"] > 0  # counted from the origin run's start
    from metaflow.cards import get_cards

    cards = [c for c in get_cards(run["report"].task) if c.id == "study"]
    assert cards
    payloads = card_payloads(cards[0].get())
    text = json.dumps(payloads)
    assert "data:image/png;base64" in text and "The gate" in text and "The paper's claims" in text
    assert "KL sweep" in text
    _restore_typing()


# --------------------------------------------------------------------------- issue 16: the open-answer study
def test_open_answer_study_config_arms_and_what_each_isolates():
    cfg = load_study_config(ROOT / "configs" / "study.json")
    assert set(cfg["arms"]) == {"grpo", "ptd_structured", "ptd_shuffled", "grpo_kl_matched", "answer_distill",
                                "ptd_unstructured"}
    assert len(cfg["seeds"]) >= 5 and cfg["data"]["families"] == ["grid_color"] and cfg["eval"]["k"] == 8
    by = {(b["arm"], b["seed"]): b for b in branches(cfg)}
    s = cfg["seeds"][0]
    assert by[("ptd_shuffled", s)]["hints"] == "shuffled" and by[("ptd_shuffled", s)]["train"]["ptd"]["enabled"]
    assert by[("ptd_unstructured", s)]["hints"] == "unstructured"
    assert by[("answer_distill", s)]["train"]["ptd"]["teacher_context"] == "answer"
    from ptdpo.study.arms import matched_branches

    # the KL-matched arm is phase 2: GRPO with the coefficient the sweep chooses (here any value)
    matched, grpo = matched_branches(cfg, 0.5)[0]["train"], by[("grpo", s)]["train"]
    assert matched["kl_coef"] == 0.5 and not matched["ptd"]["enabled"] and ("grpo_kl_matched", s) not in by
    # the arms differ only in hints, ptd and the KL coefficient
    for b in [*by.values(), *matched_branches(cfg, 0.5)]:
        rest = {k: v for k, v in b["train"].items() if k not in ("ptd", "seed", "kl_coef")}
        assert rest == {k: v for k, v in grpo.items() if k not in ("ptd", "seed", "kl_coef")}
    assert cfg["base"]["dots"] == "random" and cfg["base"]["answer_frac"] > 0  # see docs/study.md, the gate


def test_shuffled_hints_are_a_derangement_readdressed_to_each_item():
    from ptdpo.hints import render_context
    from ptdpo.study.base_model import DataSpec, oracle_hints
    from ptdpo.study.hint_modes import derangement, prepare_hints

    items = DataSpec(families=["grid_color"], difficulty=[1, 1], image_size=96).generate(12, split="train")
    dicts = {k: h.to_dict() for k, h in oracle_hints(items).items()}
    assert len(dicts) == 12
    perm = derangement(list(dicts), seed=3)
    assert sorted(perm.values()) == sorted(perm) and all(k != v for k, v in perm.items())
    assert derangement(list(dicts), seed=3) == perm and derangement(list(dicts), seed=4) != perm
    shuffled = prepare_hints("shuffled", dicts, seed=3)
    by_id = {it.id: it for it in items}
    for item_id, h in shuffled.items():
        src = perm[item_id]
        assert h.item_id == item_id and h.generator["shuffled_from"] == src
        assert h.regions[0].bbox == dicts[src]["regions"][0]["bbox"]  # another item's box
        render_context(by_id[item_id], h, "hint")  # the teacher accepts it as this item's hint
    assert prepare_hints(None, dicts) == {} and prepare_hints("unstructured", dicts)[items[0].id].kind == "unstructured"
    with pytest.raises(ValueError, match="at least 2"):
        derangement(["one"], 0)
    with pytest.raises(ValueError, match="hints kind"):
        prepare_hints("sometimes", dicts)


def test_t_and_wilson_intervals_by_hand():
    from ptdpo.study.stats import binomial_interval, fmt_interval, t_interval

    m, lo, hi = t_interval([0.1, 0.2, 0.3, 0.4, 0.5])
    sd = math.sqrt(sum((x - 0.3) ** 2 for x in [0.1, 0.2, 0.3, 0.4, 0.5]) / 4)
    assert m == pytest.approx(0.3) and hi - m == pytest.approx(2.776 * sd / math.sqrt(5)) and m - lo == pytest.approx(hi - m)
    assert math.isnan(t_interval([0.5])[1]) and math.isnan(t_interval([])[0])
    p, lo, hi = binomial_interval(32, 64)
    assert p == 0.5 and lo == pytest.approx(0.3810, abs=1e-3) and hi == pytest.approx(0.6190, abs=1e-3)
    assert binomial_interval(0, 64)[1] == 0.0 and binomial_interval(0, 64)[2] == pytest.approx(0.0565, abs=1e-3)
    assert fmt_interval(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]" and fmt_interval(0.5, float("nan"), 1) == "0.500"


def _eval_rows(values: dict[str, list[float]], metric: str = "avg@8") -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, "seed": s, "split": "id", "metric": metric, "value": v}
                         for arm, vs in values.items() for s, v in enumerate(vs)])


def test_paired_intervals_and_the_claims_verdicts():
    from ptdpo.study.tables import claims_table, interval_table, kl_match, paired_delta, paired_table

    ev = _eval_rows({"grpo": [0.10, 0.20, 0.15, 0.30, 0.25], "ptd_structured": [0.20, 0.31, 0.24, 0.41, 0.35],
                     "ptd_shuffled": [0.05, 0.35, 0.10, 0.40, 0.20], "ptd_unstructured": [0.0, 0.1, 0.05, 0.2, 0.15]})
    d = paired_delta(ev, "ptd_structured", "grpo", "avg@8")
    assert d["n_pairs"] == 5 and d["mean"] == pytest.approx(0.102) and d["low"] > 0  # paired: a small spread
    t = interval_table(ev, "avg@8")
    assert list(t["arm"]) == ["grpo", "ptd_structured", "ptd_shuffled", "ptd_unstructured"] and (t["n_seeds"] == 5).all()
    pt = paired_table(ev, "avg@8")
    assert dict(zip(pt["arm"], pt["excludes_0"]))["ptd_structured"] == "above 0"
    tm = pd.DataFrame([{"arm": a, "seed": s, "step": k, "student_entropy": e - 0.01 * k * (a == "answer_distill"),
                        "kl_ref_true": kl} for a, e, kl in (("ptd_structured", 0.5, 0.02), ("answer_distill", 0.5, 0.5),
                                                             ("grpo_kl_matched", 0.4, 0.022))
                       for s in range(5) for k in range(20)])
    claims = dict(zip(*claims_table(ev, tm)[["claim", "verdict"]].values.T))
    assert claims["PTD-PO > GRPO when groups fail"] == "supported"
    assert claims["PTD-PO > PTD-PO with shuffled hints (privileged information, not the pull)"].startswith("not shown")
    assert claims["structured hints > unstructured hints"] == "supported"
    assert claims["hints keep entropy where answer-conditioning collapses it"] == "supported"
    # trained but not evaluated: no held-out pairs, so no verdict
    assert claims["PTD-PO > GRPO with its KL to the reference matched (not regularisation alone)"] == "not measured"
    km = kl_match(tm)
    assert km["matched"] is True and km["ratio"] == pytest.approx(1.1)
    assert kl_match(tm, arm="answer_distill")["matched"] is False


def test_gate_margins_by_hand_and_marginalised_over_the_think_block():
    from ptdpo.models.tiny import build_tiny_qwen3vl
    from ptdpo.study.base_model import DataSpec, oracle_hints
    from ptdpo.study.gate import (
        answer_logprobs,
        answer_margins,
        candidate_logprobs,
        gate_verdict,
        group_outcomes,
        margins_from_logprobs,
        think_options,
    )

    lp = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    r = margins_from_logprobs(lp, [0, 2])
    assert r["margin"] == pytest.approx([math.log(3.5), math.log(0.6)]) and r["top1"] == [1.0, 0.0]
    assert r["p_gold"] == pytest.approx([0.7, 0.3])
    items = DataSpec(families=["grid_color"], difficulty=[1, 1], image_size=96).generate(2, split="val")
    model, proc = build_tiny_qwen3vl("0.5m", seed=0)
    cands = ["teal", "rose", items[0].answer, items[1].answer]
    opts = think_options(items[0], "corner")
    assert len(opts) == 9 and "({},{})".format(*items[0].meta["evidence"][0]["bbox"][:2]) in opts
    joint = candidate_logprobs(model, proc, [items[0]] * 9, [None] * 9, cands, opts)
    marg = answer_logprobs(model, proc, items[:1], [None], cands, reasoning="corner")
    assert torch.allclose(marg[0], joint.logsumexp(0), atol=1e-5)
    hints = oracle_hints(items)
    m = answer_margins(model, proc, items, hints, sorted(set(cands)), reasoning="corner")
    assert m["n"] == 2 and set(m) >= {"margin_student", "margin_hint", "margin_answer", "margin_gain", "p_gold_gain"}
    g = group_outcomes(model, proc, items, group_size=4, max_new_tokens=4)
    assert g["all_fail_frac"] == 1.0 and g["rollout_accuracy"] == 0.0  # a random model answers nothing
    v = gate_verdict({"margin_gain": 1.5, "p_gold_gain": 0.2}, {"all_fail_frac": 0.5})
    assert v["passed"] and not gate_verdict({"margin_gain": 1.5, "p_gold_gain": -0.1}, {"all_fail_frac": 0.5})["passed"]


def test_true_kl_counts_every_rollout_masked_or_not():
    """``kl_ref_true`` is KL(pi || pi_ref) by k3 on EVERY policy-gradient token, where kl_ref_all counts
    masked tokens as 0: checked in float64 by hand, through the loss and the step's totals."""
    from ptdpo import metrics as M
    from ptdpo.objectives import ptdpo_loss
    from ptdpo.objectives.loss import LossCounts

    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    ref = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    pg_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    kl_mask = pg_mask & torch.tensor([[True], [False], [False]])  # PTD masked the KL on rollouts 1 and 2
    counts = LossCounts(pg_tokens=int(pg_mask.sum()), pg_seqs=3, kl_tokens=int(kl_mask.sum()), ptd_tokens=0)
    _, parts = ptdpo_loss(counts, log_prob=lp, old_log_prob=lp.detach(), advantages=torch.zeros(3, dtype=torch.float64),
                          pg_mask=pg_mask, ref_log_prob=ref, kl_mask=kl_mask, kl_coef=0.01)
    r = ref - lp
    k3 = (r.exp() - r - 1)[pg_mask].sum()
    assert parts["kl_ref_true_sum"].item() == pytest.approx(k3.item(), rel=1e-12)
    t = M.UpdateTotals(true_kl=True)
    t.add(parts, pg_tokens=int(pg_mask.sum()))
    out = t.metrics(counts, lambda_ptd=0.0)
    assert out["kl_ref_true"] == pytest.approx(k3.item() / 9) and "kl_ref_true" in M.BY_NAME
    assert out["kl_ref_all"] < out["kl_ref_true"]  # the masked rollouts count as zero there
    assert "kl_ref_true" not in M.UpdateTotals().metrics(counts, lambda_ptd=0.0)  # no reference, no row


def test_kl_sweep_coefficient_by_log_log_interpolation_and_its_limits():
    import math

    from ptdpo.study.kl_sweep import choose_kl_coef

    # KL = 0.2 * coef^-0.5 exactly: the log-log line recovers the coefficient of any target in the range
    sweep = {c: 0.2 * c ** -0.5 for c in (0.03, 0.1, 0.3, 1.0)}
    for target_coef in (0.05, 0.2, 0.7):
        got = choose_kl_coef(sweep, 0.2 * target_coef ** -0.5)
        assert got["how"] == "bracketed" and math.isclose(got["kl_coef"], target_coef, rel_tol=1e-9)
    # outside the swept KLs: the nearest swept coefficient, never a point past the sweep
    past = choose_kl_coef(sweep, 0.2 * 2.0 ** -0.5)
    assert past["how"] == "nearest" and past["kl_coef"] == 1.0
    assert choose_kl_coef(sweep, 50.0)["kl_coef"] == 0.03
    # a flat, noisy sweep (the first 96-px run's): the bracket where there is one, else the nearest
    flat = {0.0003: 0.00289, 0.001: 0.00301, 0.003: 0.00351, 0.01: 0.00299, 0.03: 0.00242}
    got = choose_kl_coef(flat, 0.0092)
    assert got["how"] == "nearest" and got["kl_coef"] == 0.003
    inside = choose_kl_coef(flat, 0.0033)
    assert inside["how"] == "bracketed" and 0.001 < inside["kl_coef"] < 0.003
    with pytest.raises(ValueError, match="two coefficients"):
        choose_kl_coef({0.1: 0.2, 0.3: float("nan")}, 0.1)
    with pytest.raises(ValueError, match="positive"):
        choose_kl_coef(sweep, 0.0)


def test_kl_sweep_branches_two_phases_and_config_errors():
    from ptdpo.study.arms import StudyConfigError, branches, check_study_config, matched_branches
    from ptdpo.study.kl_sweep import SWEEP_ARM

    cfg = json.loads((ROOT / "configs" / "study.json").read_text())
    sweep = cfg["kl_sweep"]
    first = branches(cfg)
    assert not [b for b in first if b["arm"] == sweep["arm"]]  # the matched arm waits for the sweep
    swept = [b for b in first if b["arm"] == SWEEP_ARM]
    assert [b["train"]["kl_coef"] for b in swept] == sweep["coefs"]
    assert {b["seed"] for b in swept} == {sweep["seed"]}
    second = matched_branches(cfg, 0.123)
    assert [b["seed"] for b in second] == cfg["seeds"]
    assert all(b["arm"] == sweep["arm"] and b["train"]["kl_coef"] == 0.123 for b in second)
    assert all(not b["train"]["ptd"]["enabled"] for b in second + swept)
    assert matched_branches({**cfg, "kl_sweep": None}, 0.1) == []
    bad = {**cfg, "kl_sweep": {"arm": "nope", "target": "grpo", "coefs": [0.1], "tolerance": 2, "x": 1}}
    with pytest.raises(StudyConfigError) as e:
        check_study_config(bad)
    for words in ("kl_sweep.arm", "kl_sweep.coefs", "kl_sweep.tolerance", "unknown key(s) ['x']"):
        assert words in str(e.value)
