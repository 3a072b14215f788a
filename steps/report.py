"""Step body of ``report``: the run's summary and the results table against the base model (and against
baseline runs, when the config names some).

Plain functions (no Metaflow). The flow renders the cards from what these return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ptdpo.metrics import curves as metric_curves

# Training-curve metrics shown in the cards and summarised here: (column, label) from the registry.
CURVES = metric_curves(
    "reward", "accuracy", "ptd_loss", "ptd_loss_weighted", "student_entropy", "informative_groups", "response_length",
)


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def baseline_rows(label: str, eval_results: pd.DataFrame, model: str = "trained") -> pd.DataFrame:
    """A baseline run's ``eval_results`` rows of ``model``, relabelled as ``label`` (e.g. ``grpo``)."""
    df = eval_results[eval_results["model"] == model].copy()
    df["model"] = label
    return df


def results_with_baselines(eval_results: pd.DataFrame, baselines: Mapping[str, pd.DataFrame] | None) -> pd.DataFrame:
    frames = [eval_results] + [baseline_rows(k, v) for k, v in (baselines or {}).items()]
    return pd.concat(frames, ignore_index=True)


def comparison_table(eval_results: pd.DataFrame, baselines: Mapping[str, pd.DataFrame] | None = None,
                     metric: str = "accuracy") -> pd.DataFrame:
    """Benchmarks x models (base, trained, baselines...) with deltas against ``base``."""
    from steps.evaluate import compare_results

    rows = results_with_baselines(eval_results, baselines)
    models = list(dict.fromkeys(rows["model"]))
    if "base" in models:
        models = ["base"] + [m for m in models if m != "base"]
    return compare_results(rows, baseline=models[0] if models else None, metric=metric, models=models)


def training_summary(train_metrics: pd.DataFrame, last: int = 5) -> dict[str, Any]:
    """First/last values of the curves (last = mean over the final ``last`` steps)."""
    if train_metrics is None or len(train_metrics) == 0:
        return {"steps": 0}
    df = train_metrics.sort_values("step")
    out: dict[str, Any] = {"steps": int(df["step"].max()), "first_step_logged": int(df["step"].min())}
    for col, _ in CURVES:
        if col in df:
            out[f"{col}_first"] = _f(df[col].iloc[0])
            out[f"{col}_last{last}"] = _f(df[col].tail(last).mean())
    return out


def resolved_train_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config["train"]`` typed and resolved (``TrainConfig.resolved().to_dict()``); {} without it."""
    from ptdpo.config import train_config_from_dict

    train = config.get("train")
    return train_config_from_dict(dict(train)).to_dict() if train else {}


def build_summary(
    config: Mapping[str, Any],
    data_manifest: Mapping[str, Any],
    audit_report: Mapping[str, Any] | None,
    train_metrics: pd.DataFrame,
    eval_results: pd.DataFrame,
    comparison: pd.DataFrame,
    train_info: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary`` artifact: a small JSON-able dict a script or a dashboard can read.

    ``train_config`` is the resolved training config (the flow's ``train_config`` artifact:
    ``TrainConfig.resolved().to_dict()``, algorithm defaults filled in); without it, ``config["train"]``
    is resolved here. The summary reports that, never the raw JSON section."""
    train_info = dict(train_info or {})
    resolved = dict(train_config) if train_config is not None else resolved_train_config(config)
    bench = {}
    for _, row in comparison.iterrows():
        entry = {k: _f(v) for k, v in row.items() if k != "benchmark"}
        bench[str(row["benchmark"])] = {k: v for k, v in entry.items() if v is not None}
    errors = sorted(set(eval_results.loc[eval_results["metric"] == "error", "benchmark"])) if len(eval_results) else []
    audit = dict(audit_report or {})
    return {
        "name": config.get("name"),
        "policy": resolved.get("policy"),
        "algorithm": resolved.get("algorithm"),
        "ptd": resolved.get("ptd", {}),
        "train_config": resolved,
        "train_items": (data_manifest.get("train") or {}).get("count"),
        "train_data_hash": (data_manifest.get("train") or {}).get("content_hash"),
        "audit_pass_rate": audit.get("pass_rate"),
        "training": {**training_summary(train_metrics), **train_info},
        "results": bench,
        "eval_errors": errors,
    }
