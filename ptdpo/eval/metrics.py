"""Metrics and result tables: avg@k, unbiased pass@k, per-benchmark summaries, model comparison.

Tables (pandas):

- predictions: one row per (item, sample) with :data:`PREDICTION_COLUMNS`;
- results (the pipeline's ``eval_results`` artifact): long format with exactly :data:`RESULT_COLUMNS`
  ``benchmark, model, metric, value, n`` (``n`` = items behind the value). Metrics per benchmark:
  ``accuracy`` (mean over items of the fraction of correct samples; with k samples this *is* avg@k),
  ``avg@k``, ``pass@j`` for each requested j <= k, ``mean_response_tokens``, ``format_rate``,
  ``extraction_rate``, ``truncation_rate``. A benchmark that crashed has one row with metric ``error``,
  value NaN and n 0;
- comparison (:func:`compare_models`): benchmarks x models with absolute and relative deltas against
  a baseline model, and two "overall" rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

RESULT_COLUMNS = ["benchmark", "model", "metric", "value", "n"]
PREDICTION_COLUMNS = [
    "benchmark",
    "model",
    "item_id",
    "sample",
    "question",
    "gold",
    "choices",
    "answer_type",
    "raw_output",
    "extracted",
    "extracted_by",
    "correct",
    "format",
    "reward",
    "reason",
    "format_reason",
    "response_tokens",
    "truncated",
]
# What each evaluation metric means (the cards' glossary reads these; ``pass@j`` and ``avg@k`` by pattern).
EVAL_METRICS = {
    "accuracy": "fraction of items answered correctly, in [0, 1]; with k samples per item, the mean over them "
                "(avg@k)",
    "avg@k": "an item's k samples: the fraction correct, averaged over items (equals accuracy)",
    "pass@k": "chance that at least one of k samples of an item is correct (unbiased estimator), averaged over items",
    "mean_response_tokens": "mean length of the model's outputs, in tokens",
    "format_rate": "fraction of outputs in the prompt template's format (reasoning, then the answer where the "
                   "template asks for it)",
    "extraction_rate": "fraction of outputs an answer could be read from",
    "truncation_rate": "fraction of outputs cut at eval.generation.max_new_tokens before they ended; a cut "
                       "output usually holds no final answer, so it scores 0",
    "Δabs": "a model's accuracy minus the base model's (same units)",
    "Δrel%": "Δabs relative to the base model's accuracy, in percent (not defined when the base scores 0)",
    "error": "the benchmark failed to evaluate (the error text is in the run's eval_errors)",
}
OVERALL_MEAN = "overall (mean accuracy)"
OVERALL_REL = "overall (mean relative improvement)"


def metric_meaning(name: str) -> str | None:
    """What an evaluation metric means (``pass@4`` and ``avg@8`` read as ``pass@k`` and ``avg@k``)."""
    for pattern in ("pass@", "avg@"):
        if name.startswith(pattern) and name[len(pattern):].isdigit():
            return EVAL_METRICS[pattern + "k"].replace(" k ", f" {name[len(pattern):]} ")
    return EVAL_METRICS.get(name)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021, Codex): 1 - C(n-c, k) / C(n, k), for n samples of
    which c are correct; computed as a stable product. Requires 1 <= k <= n."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must lie in 0..n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[float]) -> float:
    """Mean correctness of an item's k samples (avg@k for one item)."""
    if len(correct) == 0:
        raise ValueError("avg@k of no samples")
    return float(sum(float(c) for c in correct) / len(correct))


def summarize_predictions(
    predictions: pd.DataFrame, benchmark: str, model: str, pass_k: Iterable[int] = (1,)
) -> list[dict[str, Any]]:
    """Long-format result rows for one benchmark and one model (see the module docstring)."""
    df = predictions
    if df.empty:
        return [_row(benchmark, model, "accuracy", float("nan"), 0)]
    groups = df.groupby("item_id", sort=False)
    per_item_n = groups["correct"].size()
    per_item_c = groups["correct"].sum()
    n_items = int(len(per_item_n))
    k = int(per_item_n.min())
    acc_items = per_item_c / per_item_n
    accuracy = float(acc_items.mean())
    rows = [
        _row(benchmark, model, "accuracy", accuracy, n_items),
        _row(benchmark, model, f"avg@{k}", accuracy, n_items),
    ]
    for j in sorted({int(j) for j in pass_k} | {1}):
        if j > k:
            continue
        vals = [pass_at_k(int(n), int(round(c)), j) for n, c in zip(per_item_n, per_item_c)]
        rows.append(_row(benchmark, model, f"pass@{j}", float(sum(vals) / len(vals)), n_items))
    rows.append(_row(benchmark, model, "mean_response_tokens", float(df["response_tokens"].mean()), n_items))
    rows.append(_row(benchmark, model, "format_rate", float(df["format"].mean()), n_items))
    rows.append(_row(benchmark, model, "extraction_rate", float(df["extracted"].notna().mean()), n_items))
    rows.append(
        _row(benchmark, model, "truncation_rate", float(df["truncated"].astype(float).mean()), n_items)
    )
    return rows


def _row(benchmark: str, model: str, metric: str, value: float, n: int) -> dict[str, Any]:
    return {"benchmark": benchmark, "model": model, "metric": metric, "value": float(value), "n": int(n)}


def error_row(benchmark: str, model: str) -> dict[str, Any]:
    return _row(benchmark, model, "error", float("nan"), 0)


def results_table(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows as the long-format results table, exactly :data:`RESULT_COLUMNS` (value float, n int)."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in RESULT_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    df = df[RESULT_COLUMNS].reset_index(drop=True)
    df["value"] = df["value"].astype(float)
    df["n"] = df["n"].fillna(0).astype(int)
    df["benchmark"] = df["benchmark"].astype(str)
    df["model"] = df["model"].astype(str)
    df["metric"] = df["metric"].astype(str)
    return df


def _rel(new: float, base: float) -> float:
    if base is None or new is None or math.isnan(base) or math.isnan(new) or base == 0:
        return float("nan")
    return (new - base) / abs(base) * 100.0


def compare_models(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    baseline: str | None = None,
    metric: str = "accuracy",
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Benchmarks x models table of ``metric`` with deltas against ``baseline`` (default: first model).

    Columns: ``benchmark``, one column per model (values as stored, e.g. accuracy in [0, 1]), then per
    non-baseline model ``m``: ``<m> Δabs`` (m - baseline, same units) and ``<m> Δrel%`` (100 * (m -
    baseline) / baseline). Two extra rows, over the benchmarks every model has:

    - ``overall (mean accuracy)``: each model's mean over benchmarks; deltas between those means;
    - ``overall (mean relative improvement)``: the mean over benchmarks of the per-benchmark deltas
      (the paper's convention for "+x% over GRPO"); model columns are empty there.

    Benchmarks that crashed (metric ``error``) or lack a model appear with NaN and are left out of both
    overall rows.
    """
    df = results_table(rows)
    df = df[df["metric"] == metric]
    order_models = list(models) if models else list(dict.fromkeys(df["model"]))
    bench_order = list(dict.fromkeys(results_table(rows)["benchmark"]))
    base = baseline if baseline is not None else (order_models[0] if order_models else None)
    if base is not None and base not in order_models:
        raise ValueError(f"baseline {base!r} not among models {order_models}")
    wide = df.pivot_table(index="benchmark", columns="model", values="value", aggfunc="mean")
    wide = wide.reindex(index=bench_order, columns=order_models)
    others = [m for m in order_models if m != base]
    out = pd.DataFrame({"benchmark": bench_order})
    for m in order_models:
        out[m] = wide[m].to_numpy(dtype=float) if m in wide else float("nan")
    for m in others:
        out[f"{m} Δabs"] = out[m] - out[base]
        out[f"{m} Δrel%"] = [_rel(a, b) for a, b in zip(out[m], out[base])]
    complete = out[order_models].notna().all(axis=1) if order_models else pd.Series([], dtype=bool)
    full = out[complete]
    mean_row: dict[str, Any] = {"benchmark": OVERALL_MEAN}
    rel_row: dict[str, Any] = {"benchmark": OVERALL_REL}
    for m in order_models:
        mean_row[m] = float(full[m].mean()) if len(full) else float("nan")
        rel_row[m] = float("nan")
    for m in others:
        mean_row[f"{m} Δabs"] = mean_row[m] - mean_row[base]
        mean_row[f"{m} Δrel%"] = _rel(mean_row[m], mean_row[base])
        rel_row[f"{m} Δabs"] = float(full[f"{m} Δabs"].mean()) if len(full) else float("nan")
        rel_row[f"{m} Δrel%"] = float(full[f"{m} Δrel%"].mean()) if len(full) else float("nan")
    return pd.concat([out, pd.DataFrame([mean_row, rel_row])], ignore_index=True)
