"""The default run (issue 16, item 4): ``flows/ptdpo_flow.py run`` with configs/tiny.json starts from the
committed warm-started base (models/grid-base-0.5m, scripts/build_base.py) and ends with base and trained
accuracy on >= 64 held-out items per benchmark, each with a 95% interval, and a sentence on whether the
interval of trained minus base excludes 0.

Fast: the intervals against reference values computed here independently (a bisection of the score test
for Wilson; published worked examples for Newcombe's intervals) and their edge cases; the report's rows
and sentences from a hand-made evaluation; the default config and its base model.
Slow: the base rebuilt by ``scripts/build_base.py --check`` equals the committed weights; the default
run end to end through ``metaflow.Runner`` (about three minutes).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ptdpo.study.stats import (
    binomial_interval,
    difference_interval,
    fmt_interval,
    paired_counts,
    paired_difference_interval,
)
from steps.report import accuracy_intervals, end_of_run_lines, item_scores

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.json"
Z = 1.959963984540054  # the exact 0.975 normal quantile, as the published examples use
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_flow_e2e import _restore_typing, card_payloads, components, flow_env  # noqa: E402


# ------------------------------------------------------------------------------------------ intervals
def _wilson_by_bisection(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval from its definition: the p where the score statistic |k/n - p| / sqrt(p(1-p)/n)
    equals z, found by bisection on each side of k/n (independent of the closed form under test)."""
    phat = k / n

    def score(p: float) -> float:
        return abs(phat - p) / math.sqrt(p * (1 - p) / n) - z

    def root(lo: float, hi: float) -> float:  # score(lo) and score(hi) have opposite signs
        for _ in range(200):
            mid = (lo + hi) / 2
            if (score(mid) > 0) == (score(lo) > 0):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    eps = 1e-15
    low = 0.0 if k == 0 else root(eps, phat)
    high = 1.0 if k == n else root(phat, 1 - eps)
    return low, high


@pytest.mark.parametrize("k,n", [(1, 10), (7, 34), (50, 128), (127, 128), (3, 64)])
def test_wilson_interval_equals_the_score_test_inversion(k, n):
    p, low, high = binomial_interval(k, n, Z)
    ref_low, ref_high = _wilson_by_bisection(k, n, Z)
    assert p == k / n
    assert low == pytest.approx(ref_low, abs=1e-12) and high == pytest.approx(ref_high, abs=1e-12)


def test_wilson_edge_cases():
    assert binomial_interval(0, 64)[:2] == (0.0, 0.0) and 0.0 < binomial_interval(0, 64)[2] < 0.06
    assert binomial_interval(64, 64)[1:] == (pytest.approx(1 - binomial_interval(0, 64)[2]), 1.0)
    assert all(math.isnan(v) for v in binomial_interval(0, 0))


def test_newcombe_independent_matches_a_published_example():
    """Perondi et al. (2004) as worked in Fagerland, Lydersen & Laake, Statistical Analysis of Contingency
    Tables (ch. 4): 7/34 vs 1/34, Newcombe hybrid score interval 0.1765 (0.0189 to 0.3404)."""
    d, low, high = difference_interval(1 / 34, 34, 7 / 34, 34)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.1765, 0.0189, 0.3404)


def test_newcombe_paired_matches_a_published_example():
    """Cavo et al. (2012) as worked in Fagerland et al. (ch. 8), the paired table [[59, 6], [16, 80]]:
    Newcombe square-and-add estimate -0.0621 (-0.1186 to -0.0046) for row margin minus column margin. Here
    1 = the row (59 + 6 right), 2 = the column (59 + 16 right): p2 - p1 = +0.0621 (0.0046 to 0.1186)."""
    d, low, high = paired_difference_interval(59, 6, 16, 80, z=Z)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.0621, 0.0046, 0.1186)


def test_paired_interval_is_narrower_than_independent_when_the_models_agree():
    """Same marginals (40/128 vs 60/128), strong agreement: the paired interval is the narrower one; with no
    association (phi = 0 after the continuity correction) it is Newcombe's independent interval."""
    a, b, c, d = 38, 2, 22, 66
    paired = paired_difference_interval(a, b, c, d)
    indep = difference_interval(40 / 128, 128, 60 / 128, 128)
    assert paired[0] == pytest.approx(indep[0])
    assert paired[2] - paired[1] < 0.8 * (indep[2] - indep[1])
    # ad - bc = 0: no correlation, so the two intervals are the same
    assert paired_difference_interval(10, 10, 10, 10) == pytest.approx(difference_interval(0.5, 40, 0.5, 40))


def test_paired_interval_edge_cases():
    assert all(math.isnan(v) for v in paired_difference_interval(0, 0, 0, 0))
    # both models right on every item, or wrong on every item: difference 0, a finite interval around it
    for table in ((64, 0, 0, 0), (0, 0, 0, 64)):
        d, low, high = paired_difference_interval(*table)
        assert d == 0.0 and -0.06 < low < 0.0 < high < 0.06
    # base wrong on all, trained right on all (0/n vs n/n): difference 1, the upper bound clipped at 1
    d, low, high = paired_difference_interval(0, 0, 64, 0)
    assert d == 1.0 and 0.9 < low < 1.0 and high == 1.0
    assert paired_counts([1, 0, 1, 0], [1, 1, 0, 0]) == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        paired_counts([1, 0], [1])


# ------------------------------------------------------------------------------------------ report
def _eval(base_right: list[int], trained_right: list[int], bench: str = "grid_id") -> tuple[pd.DataFrame, pd.DataFrame]:
    """eval_results and eval_item_scores of two models on the same items, as the flow stores them."""
    preds = [pd.DataFrame({"benchmark": bench, "model": m, "item_id": [f"i{j}" for j in range(len(r))], "sample": 0,
                           "correct": [float(x) for x in r]}) for m, r in (("base", base_right), ("trained", trained_right))]
    results = pd.DataFrame([{"benchmark": bench, "model": m, "metric": "accuracy", "value": sum(r) / len(r), "n": len(r)}
                            for m, r in (("base", base_right), ("trained", trained_right))])
    return results, item_scores(preds)


def test_accuracy_intervals_paired_sentence_says_whether_the_difference_excludes_0():
    base = [1] * 40 + [0] * 88
    trained = [1] * 38 + [0] * 2 + [1] * 40 + [0] * 48  # 78/128: 2 lost, 40 gained
    results, scores = _eval(base, trained)
    (row,) = accuracy_intervals(results, scores)
    assert row["delta_method"] == "paired" and row["n_trained"] == 128
    assert (row["both_right"], row["base_only"], row["trained_only"], row["both_wrong"]) == (38, 2, 40, 48)
    assert (row["delta"], row["delta_low"], row["delta_high"]) == pytest.approx(paired_difference_interval(38, 2, 40, 48))
    assert row["delta_excludes_0"] and row["delta_low"] > 0
    assert "128 held-out items" in row["sentence"] and "excludes 0" in row["sentence"]
    assert "raised the accuracy" in row["sentence"]
    assert fmt_interval(row["base"], row["base_low"], row["base_high"]) in row["sentence"]
    # a small change on the same items: the interval includes 0, and the sentence says no change is shown
    (same,) = accuracy_intervals(*_eval(base, [1] * 41 + [0] * 87))
    assert not same["delta_excludes_0"] and "includes 0" in same["sentence"] and "does not show" in same["sentence"]
    lines = end_of_run_lines("PTDPOFlow/7", {"results": {}, "accuracy_intervals": [row, same]})
    assert any("grid_id (128 items): base 0.312 [" in line and "paired 95% interval, excludes 0" in line for line in lines)


def test_accuracy_intervals_fall_back_to_independent_without_item_scores():
    results, scores = _eval([1] * 40 + [0] * 88, [1] * 60 + [0] * 68)
    (row,) = accuracy_intervals(results)
    assert row["delta_method"] == "independent"
    assert (row["delta"], row["delta_low"], row["delta_high"]) == pytest.approx(
        difference_interval(40 / 128, 128, 60 / 128, 128))
    # k > 1 samples (scores that are not 0/1): no paired table, the independent interval
    scores.loc[0, "score"] = 0.5
    assert accuracy_intervals(results, scores)[0]["delta_method"] == "independent"
    assert accuracy_intervals(pd.DataFrame(), None) == []


# ------------------------------------------------------------------------------------------ the default run
def test_default_config_measures_on_enough_items_from_the_committed_base():
    from ptdpo.run_config import load_run_config

    rc = load_run_config(str(TINY))
    assert len(rc.eval.benchmarks) >= 1 and set(rc.eval.models) == {"base", "trained"}
    for b in rc.eval.benchmarks:
        spec = b if isinstance(b, dict) else b.to_dict()
        assert spec["dataset"]["n"] >= 64, spec["name"]
    policy = Path(rc.train.policy)
    assert policy.is_dir() and policy.name == "grid-base-0.5m"
    text = json.loads((policy / "config.json").read_text())["text_config"]
    assert text["head_dim"] >= 32  # a size vLLM serves
    manifest = json.loads((policy / "build_manifest.json").read_text())
    assert manifest["recipe"]["data"]["image_size"] == rc.data.train.image_size  # trained on what RL sees
    assert 0.1 <= manifest["heldout_greedy_accuracy"] <= 0.6  # part of the way: RL has something to learn


@pytest.mark.slow
def test_build_base_check_rebuilds_the_committed_weights():
    """``scripts/build_base.py --check`` (about 30 s): the committed base is what the recipe builds."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_base.py"), "--check"], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["same"] and result["fingerprint_rebuilt"] == result["fingerprint_committed"]


@pytest.mark.slow
def test_default_run_shows_base_and_trained_with_intervals(tmp_path, monkeypatch):
    """The README's first command, through ``metaflow.Runner`` in a temporary folder: the summary has base
    and trained accuracy with 95% intervals on >= 64 items per benchmark, the paired difference and its
    sentence, and the report card has the sentences and an accuracy chart with data."""
    from metaflow import Runner, namespace
    from metaflow.cards import get_cards

    (tmp_path / ".metaflow").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USERNAME", "ptdpo-test")
    env = flow_env(tmp_path)  # a local datastore in tmp_path, no user profile, one thread per process
    t0 = time.time()
    # no --config: the default (configs/tiny.json), as the README's command runs it
    r = Runner(str(ROOT / "flows" / "ptdpo_flow.py"), cwd=str(tmp_path), env=env, show_output=False)
    _restore_typing()
    try:
        with r:
            result = r.run()
            status, stderr = result.status, result.stderr  # the logs go with the context
            logs = result.stdout + stderr  # the tasks' prints, wherever Metaflow routes them
    finally:
        _restore_typing()
    print(f"\n[timing] default run (configs/tiny.json): {time.time() - t0:.0f}s", file=sys.stderr)
    assert status == "successful", stderr[-4000:]
    run = result.run
    namespace(None)
    summary = run.data.summary
    rows = summary["accuracy_intervals"]
    assert {r["benchmark"] for r in rows} == {"grid_id", "grid_ood"}
    for row in rows:
        assert row["n_base"] == row["n_trained"] >= 64 and row["delta_method"] == "paired"
        assert row["base_low"] <= row["base"] <= row["base_high"] and row["trained_low"] <= row["trained"] <= row["trained_high"]
        assert ("excludes 0" if row["delta_excludes_0"] else "includes 0") in row["sentence"]
        assert f"{row['benchmark']} ({row['n_trained']} items): base " in logs  # the end-of-run print
    assert "paired 95% interval" in logs
    # the point of the default run: it shows learning on the in-distribution benchmark
    grid_id = next(r for r in rows if r["benchmark"] == "grid_id")
    assert grid_id["delta_excludes_0"] and grid_id["delta_low"] > 0, grid_id["sentence"]
    html = next(c for c in get_cards(run["report"].task) if c.id == "report").get()
    comps = components(card_payloads(html))  # the card's component tree
    text = json.dumps(comps, ensure_ascii=False)
    assert all(row["sentence"] in text for row in rows)
    assert "Base vs trained, with 95% intervals" in text and "would fall in 95 times out of 100" in text
    chart = [c for c in comps if c.get("type") == "image" and c.get("label") == "accuracy by benchmark"]
    assert chart and len(chart[0]["src"]) > 2000 and "Accuracy chart:** not drawn" not in text

