"""Tables and plots of the study report: curves with seed spread, final accuracy per arm and split,
entropy / response length / informative-group fraction over training, all-fail -> solvable."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ptdpo.metrics import curves as metric_curves

CURVES = metric_curves(
    "accuracy", "informative_groups", "all_fail_groups", "student_entropy", "response_length", "ptd_loss",
    "teacher_entropy", "kl_ref", "kl_masked_rollout_frac",
)


def smooth(s: pd.Series, window: int) -> pd.Series:
    return s.rolling(window, min_periods=1).mean() if window > 1 else s


def curve_table(metrics: pd.DataFrame, column: str, window: int = 1) -> pd.DataFrame:
    """step, arm, mean, std, n over seeds (each seed's curve smoothed with a trailing window first)."""
    if metrics is None or column not in metrics.columns:
        return pd.DataFrame(columns=["arm", "step", "mean", "std", "n"])
    df = metrics[["arm", "seed", "step", column]].dropna().sort_values(["arm", "seed", "step"]).copy()
    df[column] = df.groupby(["arm", "seed"])[column].transform(lambda s: smooth(s, window))
    g = df.groupby(["arm", "step"])[column]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
    return out


def final_table(eval_rows: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """arm x split rows with mean and std over seeds of each metric (all but ``n`` by default; the base
    model is arm ``base``)."""
    if eval_rows is None or len(eval_rows) == 0:
        return pd.DataFrame()
    metrics = metrics or [m for m in dict.fromkeys(eval_rows["metric"]) if m != "n"]
    df = eval_rows[eval_rows["metric"].isin(metrics)]
    g = df.groupby(["arm", "split", "metric"])["value"]
    t = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n_seeds": g.size()}).reset_index()
    t["value"] = [f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}" for m, s, n in zip(t["mean"], t["std"], t["n_seeds"])]
    wide = t.pivot_table(index=["arm", "split"], columns="metric", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    return wide


def late_training_table(metrics: pd.DataFrame, last: int = 5) -> pd.DataFrame:
    """Per arm: mean (± std over seeds) of the last ``last`` steps of the training metrics."""
    cols = [c for c, _ in CURVES if c in metrics.columns]
    tail = metrics.sort_values("step").groupby(["arm", "seed"]).tail(last)
    per_seed = tail.groupby(["arm", "seed"])[cols].mean()
    mean, std = per_seed.groupby("arm").mean(), per_seed.groupby("arm").std(ddof=0)
    out = mean.copy()
    for c in cols:
        out[c] = [f"{m:.3f} ± {s:.3f}" if not (isinstance(s, float) and math.isnan(s)) else f"{m:.3f}"
                  for m, s in zip(mean[c], std[c])]
    return out.reset_index()


def solvable_table(solvable: pd.DataFrame) -> pd.DataFrame:
    """Per arm: initial all-fail items and the fraction that became solvable (mean ± std over seeds)."""
    if solvable is None or len(solvable) == 0:
        return pd.DataFrame()
    g = solvable.groupby("arm")
    out = pd.DataFrame({
        "initial_all_fail (mean)": g["initial_all_fail"].mean(),
        "became_solvable (mean)": g["became_solvable"].mean(),
        "frac_all_fail_became_solvable": g["frac_all_fail_became_solvable"].mean(),
        "std": g["frac_all_fail_became_solvable"].std(ddof=0),
        "frac_solvable_became_all_fail": g["frac_solvable_became_all_fail"].mean(),
    }).reset_index()
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(metrics: pd.DataFrame, window: int = 5, curves: Sequence[tuple[str, str]] = CURVES):
    """One panel per training metric; one line per arm (mean over seeds) with a ±1 std band."""
    plt = _plt()
    curves = [(c, label) for c, label in curves if c in metrics.columns and metrics[c].notna().any()]
    ncol = 3
    nrow = max(1, math.ceil(len(curves) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.0 * nrow), squeeze=False)
    arms = list(dict.fromkeys(metrics["arm"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (col, label) in zip(axes.flat, curves):
        t = curve_table(metrics, col, window)
        for i, arm in enumerate(arms):
            a = t[t["arm"] == arm]
            if len(a) == 0:
                continue
            c = colors[i % len(colors)]
            ax.plot(a["step"], a["mean"], color=c, label=arm, linewidth=1.3)
            ax.fill_between(a["step"], a["mean"] - a["std"], a["mean"] + a["std"], color=c, alpha=0.15)
        ax.set_title(f"{label} (window {window})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def final_figure(eval_rows: pd.DataFrame, metric: str = "greedy_accuracy"):
    """Bars: final ``metric`` per arm on each split (mean over seeds, ±1 std, seeds as dots)."""
    plt = _plt()
    df = eval_rows[eval_rows["metric"] == metric]
    splits = list(dict.fromkeys(df["split"]))
    arms = list(dict.fromkeys(df["arm"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(max(4.0, 1.1 * len(arms)) * len(splits), 3.2), squeeze=False)
    for ax, split in zip(axes.flat, splits):
        s = df[df["split"] == split]
        for i, arm in enumerate(arms):
            v = s[s["arm"] == arm]["value"]
            if len(v) == 0:
                continue
            ax.bar(i, v.mean(), yerr=v.std(ddof=0) if len(v) > 1 else None, alpha=0.6, capsize=3)
            ax.scatter([i] * len(v), v, s=8, color="k", zorder=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{metric} ({split})", fontsize=9)
    fig.tight_layout()
    return fig


def headline(eval_rows: pd.DataFrame, reference: str = "grpo", metric: str = "greedy_accuracy") -> dict[str, Any]:
    """Each arm's final ``metric`` minus the reference arm's, per split (means over seeds)."""
    df = eval_rows[eval_rows["metric"] == metric]
    means = df.groupby(["split", "arm"])["value"].mean()
    out: dict[str, Any] = {}
    for split in means.index.get_level_values(0).unique():
        m = means.loc[split]
        if reference in m.index:
            out[split] = {arm: round(float(v - m[reference]), 4) for arm, v in m.items() if arm != reference}
    return out
