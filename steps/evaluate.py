"""Step bodies of evaluation: plain functions the flows call (no Metaflow here).

- :func:`evaluate_benchmark` one model on one benchmark (one foreach branch of ``flows/eval_flow.py`` or
  of the training flow's ``evaluate`` step) -> (predictions, result rows, error or None). It never
  raises: a crash becomes an ``error`` row plus the error text, and the other branches are unaffected.
- :func:`evaluate_suite` one model on several benchmarks in one process (the model is loaded once).
- :func:`join_results` the joined long table (``eval_results`` artifact: exactly ``benchmark, model,
  metric, value, n``).
- :func:`compare_results` the comparison table across models, absolute and relative deltas against a
  baseline, overall as mean accuracy and as mean per-benchmark relative improvement.
- :func:`resolve_benchmarks` benchmark names / spec dicts from a config into spec dicts (artifacts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ptdpo.eval.generation import GenerationConfig, make_backend
from ptdpo.eval.metrics import compare_models, results_table
from ptdpo.eval.registry import PAPER_SUITE, BenchmarkSpec, resolve_benchmark
from ptdpo.eval.runner import benchmark_name, error_result, model_label, run_benchmark, run_suite

BenchmarkRef = BenchmarkSpec | Mapping[str, Any] | str


def resolve_benchmarks(refs: Iterable[BenchmarkRef] | str | None = None) -> list[dict[str, Any]]:
    """Spec dicts for registered names, ``{"name": ..., overrides}`` or full user specs.
    ``None`` or ``"paper"`` gives the paper's suite (METHOD.md 5); a comma-separated string is split."""
    if refs is None or refs == "paper":
        refs = list(PAPER_SUITE)
    elif isinstance(refs, str):
        refs = [r.strip() for r in refs.split(",") if r.strip()]
    return [resolve_benchmark(r).to_dict() for r in refs]


def evaluate_benchmark(
    model: Any,
    benchmark: BenchmarkRef,
    gen_config: GenerationConfig | Mapping[str, Any] | None = None,
    model_name: str | None = None,
    base_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]], str | None]:
    """Evaluate ``model`` on one benchmark.

    ``model``: a policy spec (``tiny:0.5m``, a folder, a hub id; with ``gen_config["backend"] == "vllm"``
    a folder or hub id for vLLM), a ``(model, processor)`` pair, or a backend object.
    ``benchmark``: a registered name, a spec dict (a user's jsonl/parquet benchmark) or a BenchmarkSpec.
    Returns (per-sample predictions DataFrame, long-format result rows, error text or None).
    """
    label = model_label(model, model_name)
    try:
        cfg = GenerationConfig.from_dict(gen_config)
        backend = make_backend(model, cfg)
    except Exception as e:  # noqa: BLE001 - e.g. the model cannot load: an error row, not a crash
        return error_result(benchmark_name(benchmark), label, e)
    return run_benchmark(backend, benchmark, cfg, model_name=label, base_dir=base_dir)


def evaluate_suite(
    model: Any,
    benchmarks: Sequence[BenchmarkRef] | str | None = None,
    gen_config: GenerationConfig | Mapping[str, Any] | None = None,
    model_name: str | None = None,
    base_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Evaluate one model on several benchmarks: (predictions, results table, {benchmark: error})."""
    refs = resolve_benchmarks(benchmarks)
    return run_suite(model, refs, gen_config, model_name=model_name, base_dir=base_dir)


def join_results(results: Iterable[Iterable[Mapping[str, Any]] | pd.DataFrame]) -> pd.DataFrame:
    """Join the result rows of several branches into the long ``eval_results`` table."""
    frames = [results_table(r) for r in results]
    return results_table(pd.concat(frames, ignore_index=True)) if frames else results_table([])


def compare_results(
    results: Iterable[Mapping[str, Any]] | pd.DataFrame,
    baseline: str | None = None,
    metric: str = "accuracy",
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The comparison table across models (see ``ptdpo.eval.metrics.compare_models``)."""
    return compare_models(results, baseline=baseline, metric=metric, models=models)
