"""The study's numbers with intervals over seeds, and the verdict on each of the paper's claims.

Every table takes the flow's long tables: ``eval_results`` (arm, seed, split, metric, value; the base
model is arm ``base`` with seed -1) and ``train_metrics`` (arm, seed, step, one column per training metric).
Seeds are paired across arms (the same seed draws the same data order), so a comparison of two arms is
the interval of the per-seed differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ptdpo.study.stats import fmt_interval, t_interval

# (claim, arm, against, what is compared): the paper's claims as comparisons of two arms
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("PTD-PO > GRPO when groups fail", "ptd_structured", "grpo", "avg"),
    ("PTD-PO > PTD-PO with shuffled hints (privileged information, not the pull)", "ptd_structured",
     "ptd_shuffled", "avg"),
    ("PTD-PO > GRPO with its KL to the reference matched (not regularisation alone)", "ptd_structured",
     "grpo_kl_matched", "avg"),
    ("hints keep entropy where answer-conditioning collapses it", "ptd_structured", "answer_distill", "entropy"),
    ("structured hints > unstructured hints", "ptd_structured", "ptd_unstructured", "avg"),
)


def _per_seed(eval_rows: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    df = eval_rows[(eval_rows["metric"] == metric) & (eval_rows["split"] == split)]
    return df.pivot_table(index="seed", columns="arm", values="value", aggfunc="mean")


def interval_table(eval_rows: pd.DataFrame, metric: str, split: str = "id") -> pd.DataFrame:
    """Per arm (base model first): seeds, mean and 95% t-interval over seeds of ``metric`` on ``split``, and
    the per-seed values."""
    rows = []
    df = eval_rows[(eval_rows["metric"] == metric) & (eval_rows["split"] == split)]
    for arm in dict.fromkeys(df["arm"]):
        vals = list(df[df["arm"] == arm].sort_values("seed")["value"])
        m, lo, hi = t_interval(vals)
        rows.append({"arm": arm, "n_seeds": len(vals), "mean": m, "low": lo, "high": hi,
                     metric: fmt_interval(m, lo, hi), "per_seed": " ".join(f"{v:.3f}" for v in vals)})
    return pd.DataFrame(rows)


def paired_delta(eval_rows: pd.DataFrame, arm: str, against: str, metric: str, split: str = "id") -> dict[str, Any]:
    """``arm`` minus ``against`` on the seeds both have: mean, 95% t-interval of the paired differences."""
    wide = _per_seed(eval_rows, metric, split)
    if arm not in wide or against not in wide:
        return {"n_pairs": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    diffs = (wide[arm] - wide[against]).dropna()
    m, lo, hi = t_interval(list(diffs))
    return {"n_pairs": len(diffs), "mean": m, "low": lo, "high": hi}


def paired_table(eval_rows: pd.DataFrame, metric: str, reference: str = "grpo", split: str = "id") -> pd.DataFrame:
    """Every other arm against ``reference`` (paired seeds)."""
    arms = [a for a in dict.fromkeys(eval_rows["arm"]) if a not in (reference, "base")]
    rows = []
    for arm in arms:
        d = paired_delta(eval_rows, arm, reference, metric, split)
        rows.append({"arm": arm, "vs": reference, "n_pairs": d["n_pairs"],
                     f"delta {metric}": fmt_interval(d["mean"], d["low"], d["high"]), "excludes_0": excludes_zero(d)})
    return pd.DataFrame(rows)


def excludes_zero(d: dict[str, Any]) -> str:
    """``above 0`` / ``below 0`` when the interval excludes 0, else ``no``."""
    lo, hi = d.get("low", float("nan")), d.get("high", float("nan"))
    if math.isnan(lo) or math.isnan(hi):
        return "unknown"
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "no"


def run_means(train_metrics: pd.DataFrame, column: str, steps: slice | None = None) -> pd.DataFrame:
    """Per (arm, seed): the mean of ``column`` over the run's steps (``steps``: a slice of each run's
    steps in order, e.g. ``slice(-10, None)`` for the last ten)."""
    if column not in train_metrics:
        return pd.DataFrame(columns=["arm", "seed", column])
    out = []
    for (arm, seed), g in train_metrics.sort_values("step").groupby(["arm", "seed"], sort=False):
        vals = g[column].iloc[steps] if steps is not None else g[column]
        out.append({"arm": arm, "seed": seed, column: float(vals.mean())})
    return pd.DataFrame(out)


def training_table(train_metrics: pd.DataFrame, window: int = 10) -> pd.DataFrame:
    """Per arm, with 95% intervals over seeds: the KL to the reference over the whole run (``kl_ref_true``:
    every rollout; ``kl_ref_all`` and ``kl_ref`` as the loss counts them), the student's entropy over the
    first and the last ``window`` steps, the teacher's entropy, and the all-fail group share of the first
    ``window`` steps."""
    cols = [("kl_ref_true", None, "KL(policy||ref), every rollout"), ("kl_ref_all", None, "kl_ref_all (masked = 0)"),
            ("kl_ref", None, "kl_ref (unmasked tokens)"),
            ("student_entropy", slice(0, window), f"entropy, first {window}"),
            ("student_entropy", slice(-window, None), f"entropy, last {window}"),
            ("teacher_entropy", None, "teacher entropy"), ("all_fail_groups", slice(0, window), f"all-fail, first {window}"),
            ("accuracy", slice(-window, None), f"rollout accuracy, last {window}")]
    rows: dict[str, dict[str, Any]] = {}
    for col, steps, label in cols:
        per = run_means(train_metrics, col, steps)
        for arm, g in per.groupby("arm", sort=False):
            rows.setdefault(arm, {"arm": arm})[label] = fmt_interval(*t_interval(list(g[col])))
    return pd.DataFrame(list(rows.values()))


def kl_match(train_metrics: pd.DataFrame, arm: str = "grpo_kl_matched", target: str = "ptd_structured",
             column: str = "kl_ref_true", tolerance: float = 0.2) -> dict[str, Any]:
    """Whether ``arm``'s KL to the reference over every rollout (mean over the run and the seeds) is within
    ``tolerance`` of ``target``'s."""
    per = run_means(train_metrics, column)
    means = per.groupby("arm")[column].mean() if len(per) else pd.Series(dtype=float)
    if arm not in means or target not in means:
        return {"arm": arm, "target": target, "matched": None}
    ratio = float(means[arm] / means[target]) if means[target] else float("nan")
    return {"arm": arm, "target": target, "column": column, f"{arm}": float(means[arm]), f"{target}": float(means[target]),
            "ratio": ratio, "tolerance": tolerance, "matched": bool(abs(ratio - 1) <= tolerance)}


def solvable_interval_table(solvable: pd.DataFrame) -> pd.DataFrame:
    """Per arm: items whose first group was all-fail, and the share of them solvable at their last
    appearance, with a 95% interval over seeds."""
    if solvable is None or len(solvable) == 0:
        return pd.DataFrame()
    rows = []
    for arm, g in solvable.groupby("arm", sort=False):
        rows.append({"arm": arm, "initial all-fail items (mean)": float(g["initial_all_fail"].mean()),
                     "share that became solvable": fmt_interval(*t_interval(list(g["frac_all_fail_became_solvable"]))),
                     "solvable that became all-fail": fmt_interval(*t_interval(list(g["frac_solvable_became_all_fail"])))})
    return pd.DataFrame(rows)


def verdict_word(d: dict[str, Any]) -> str:
    side = excludes_zero(d)
    return {"above 0": "supported", "below 0": "contradicted", "no": "not shown (the interval includes 0)"}.get(
        side, "not measured")


def claims_table(eval_rows: pd.DataFrame, train_metrics: pd.DataFrame, metric: str = "avg@8", split: str = "id",
                 claims: Sequence[tuple[str, str, str, str]] = CLAIMS, window: int = 10) -> pd.DataFrame:
    """One row per claim: the comparison, its paired difference with a 95% interval, and the verdict.
    Accuracy claims compare held-out ``metric``; the entropy claim compares the student's entropy over
    the last ``window`` training steps (hint arm minus answer arm: above 0 supports it)."""
    rows = []
    arms = set(eval_rows["arm"]) | set(train_metrics["arm"] if len(train_metrics) else [])
    for claim, arm, against, kind in claims:
        if arm not in arms or against not in arms:
            rows.append({"claim": claim, "comparison": f"{arm} - {against}", "measured": "arm not run",
                         "verdict": "not measured"})
            continue
        if kind == "entropy":
            per = run_means(train_metrics, "student_entropy", slice(-window, None))
            long = per.rename(columns={"student_entropy": "value"}).assign(metric="entropy", split=split)
            d = paired_delta(long, arm, against, "entropy", split)
            what = f"student entropy, last {window} steps"
        else:
            d = paired_delta(eval_rows, arm, against, metric, split)
            what = f"held-out {metric} ({split})"
        rows.append({"claim": claim, "comparison": f"{arm} - {against}: {what}",
                     "measured": fmt_interval(d["mean"], d["low"], d["high"]) + f" ({d['n_pairs']} seeds)",
                     "verdict": verdict_word(d)})
    return pd.DataFrame(rows)
