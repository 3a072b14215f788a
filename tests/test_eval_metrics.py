"""avg@k, unbiased pass@k, per-benchmark summaries and the model comparison, against hand computation."""

from __future__ import annotations

import math
from itertools import combinations

import pandas as pd
import pytest

from ptdpo.eval import (
    OVERALL_MEAN,
    OVERALL_REL,
    PREDICTION_COLUMNS,
    RESULT_COLUMNS,
    avg_at_k,
    compare_models,
    pass_at_k,
    results_table,
    summarize_predictions,
)
from steps.evaluate import compare_results, join_results


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer wrong samples than k: certain
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (8, 1, 8, 1.0),
        (8, 1, 4, 0.5),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_subset_probability():
    # brute force: the fraction of k-subsets of the n samples containing at least one correct sample
    n, c = 7, 3
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)


def test_avg_at_k():
    assert avg_at_k([1, 0, 0, 1]) == 0.5
    assert avg_at_k([1.0]) == 1.0
    with pytest.raises(ValueError):
        avg_at_k([])


def _preds(correct_by_item: dict[str, list[int]], tokens: int = 10) -> pd.DataFrame:
    rows = []
    for item, cs in correct_by_item.items():
        for j, c in enumerate(cs):
            rows.append(
                {
                    "benchmark": "b",
                    "model": "m",
                    "item_id": item,
                    "sample": j,
                    "question": "q",
                    "gold": "1",
                    "choices": None,
                    "answer_type": "number",
                    "raw_output": "x",
                    "extracted": "1" if c else None,
                    "extracted_by": "answer_tag",
                    "correct": float(c),
                    "format": 1.0,
                    "reward": 0.9 * c + 0.1,
                    "reason": "exact" if c else "no_answer",
                    "format_reason": "ok",
                    "response_tokens": tokens + j,
                    "truncated": j == 3,
                }
            )
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def test_summary_matches_hand_computation():
    df = _preds({"a": [1, 0, 0, 1], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1]})
    rows = summarize_predictions(df, "b", "m", pass_k=[1, 2, 4, 16])
    got = {r["metric"]: r["value"] for r in rows}
    assert all(r["n"] == 3 for r in rows)
    assert got["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert got["avg@4"] == pytest.approx(got["accuracy"])
    assert got["pass@1"] == pytest.approx(got["accuracy"])
    # item a: 1 - C(2,2)/C(4,2) = 5/6; b: 0; c: 1
    assert got["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert got["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert "pass@16" not in got  # more than the samples drawn: not reported
    assert got["mean_response_tokens"] == pytest.approx(11.5)
    assert got["extraction_rate"] == pytest.approx(6 / 12)
    assert got["truncation_rate"] == pytest.approx(0.25)
    assert got["format_rate"] == 1.0
    table = results_table(rows)
    assert list(table.columns) == RESULT_COLUMNS
    rates = table[table["metric"] != "mean_response_tokens"]
    assert rates["value"].between(0, 1).all()


def _result_rows():
    rows = []
    for bench, base, ptd in [("geo", 0.5, 0.6), ("vista", 0.2, 0.3), ("logic", 0.4, 0.4)]:
        rows.append({"benchmark": bench, "model": "grpo", "metric": "accuracy", "value": base, "n": 10})
        rows.append({"benchmark": bench, "model": "ptdpo", "metric": "accuracy", "value": ptd, "n": 10})
        rows.append({"benchmark": bench, "model": "ptdpo", "metric": "pass@1", "value": ptd, "n": 10})
    rows.append({"benchmark": "broken", "model": "grpo", "metric": "error", "value": float("nan"), "n": 0})
    rows.append({"benchmark": "broken", "model": "ptdpo", "metric": "accuracy", "value": 0.9, "n": 10})
    return rows


def test_compare_models_deltas_and_both_overalls():
    table = compare_models(_result_rows(), baseline="grpo")
    t = table.set_index("benchmark")
    assert list(table.columns) == ["benchmark", "grpo", "ptdpo", "ptdpo Δabs", "ptdpo Δrel%"]
    assert t.loc["geo", "ptdpo Δabs"] == pytest.approx(0.1)
    assert t.loc["geo", "ptdpo Δrel%"] == pytest.approx(20.0)
    assert t.loc["vista", "ptdpo Δrel%"] == pytest.approx(50.0)
    assert t.loc["logic", "ptdpo Δrel%"] == pytest.approx(0.0)
    assert math.isnan(t.loc["broken", "grpo"])  # crashed for the baseline: shown, not averaged
    # overall as mean accuracy over benchmarks both models have
    assert t.loc[OVERALL_MEAN, "grpo"] == pytest.approx((0.5 + 0.2 + 0.4) / 3)
    assert t.loc[OVERALL_MEAN, "ptdpo"] == pytest.approx((0.6 + 0.3 + 0.4) / 3)
    assert t.loc[OVERALL_MEAN, "ptdpo Δabs"] == pytest.approx(0.2 / 3)
    assert t.loc[OVERALL_MEAN, "ptdpo Δrel%"] == pytest.approx((1.3 - 1.1) / 1.1 * 100)
    # overall as the mean of per-benchmark relative improvements (the paper's convention)
    assert t.loc[OVERALL_REL, "ptdpo Δrel%"] == pytest.approx((20 + 50 + 0) / 3)
    assert math.isnan(t.loc[OVERALL_REL, "grpo"])


def test_compare_default_baseline_and_step_wrappers():
    joined = join_results([_result_rows()[:3], pd.DataFrame(_result_rows()[3:])])
    assert list(joined.columns) == RESULT_COLUMNS and len(joined) == len(_result_rows())
    table = compare_results(joined)  # baseline: the first model seen
    assert "ptdpo Δabs" in table.columns
    table = compare_results(joined, baseline="ptdpo")
    assert "grpo Δrel%" in table.columns
    with pytest.raises(ValueError):
        compare_results(joined, baseline="nope")
