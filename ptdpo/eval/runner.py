"""Evaluate one model on benchmarks: load items, generate k samples, score, summarise, isolate crashes."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ptdpo.data.schema import Item
from ptdpo.eval.generation import GenerationConfig, Sample, make_backend
from ptdpo.eval.metrics import PREDICTION_COLUMNS, error_row, results_table, summarize_predictions
from ptdpo.eval.registry import BenchmarkSpec, load_benchmark, prompt_item, resolve_benchmark
from ptdpo.rewards import score_batch

log = logging.getLogger(__name__)


def model_label(model: Any, model_name: str | None = None) -> str:
    if model_name:
        return model_name
    if isinstance(model, str):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, str):
        return inner
    return type(model[0] if isinstance(model, tuple | list) else model).__name__


def empty_predictions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in PREDICTION_COLUMNS})


def score_samples(
    spec: BenchmarkSpec,
    items: Sequence[Item],
    samples: Sequence[Sequence[Sample]],
    cfg: GenerationConfig,
    model: str,
) -> pd.DataFrame:
    """The per-sample predictions table: raw output, extracted answer, correct/format/reward and why."""
    if len(items) != len(samples):
        raise ValueError(f"{len(items)} items but {len(samples)} sample lists")
    flat_items: list[Item] = []
    flat_texts: list[str] = []
    where: list[tuple[int, int]] = []
    for i, (item, ss) in enumerate(zip(items, samples)):
        for j, s in enumerate(ss):
            flat_items.append(item)
            flat_texts.append(s.text)
            where.append((i, j))
    scores = score_batch(
        flat_texts,
        flat_items,
        max_workers=cfg.score_workers,
        timeout_s=cfg.score_timeout_s,
        answer_type=spec.answer_type,
        think_prefilled=bool(cfg.think_prefilled),
        accuracy_weight=cfg.accuracy_weight,
        format_weight=cfg.format_weight,
        template=cfg.prompt_template,
    )
    rows = []
    for (i, j), r in zip(where, scores):
        item, s = items[i], samples[i][j]
        rows.append(
            {
                "benchmark": spec.name,
                "model": model,
                "item_id": item.id,
                "sample": j,
                "question": item.question,
                "gold": item.answer,
                "choices": json.dumps(item.choices, ensure_ascii=False) if item.choices else None,
                "answer_type": spec.answer_type,
                "raw_output": s.text,
                "extracted": r.extracted,
                "extracted_by": r.extracted_by,
                "correct": float(r.accuracy),
                "format": float(r.format),
                "reward": float(r.reward),
                "reason": r.reason,
                "format_reason": r.format_reason,
                "response_tokens": int(s.n_tokens),
                "truncated": bool(s.truncated),
            }
        )
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS) if rows else empty_predictions()


def run_benchmark(
    backend: Any,
    benchmark: BenchmarkSpec | Mapping[str, Any] | str,
    cfg: GenerationConfig | Mapping[str, Any] | None = None,
    model_name: str | None = None,
    base_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]], str | None]:
    """(predictions, result rows, error). Never raises: any failure (missing file, bad spec, a crash in
    generation or scoring) gives empty predictions, one ``error`` result row and the error text."""
    name = benchmark_name(benchmark)
    model = model_label(backend, model_name)
    try:
        cfg = GenerationConfig.from_dict(cfg)
        spec = resolve_benchmark(benchmark)
        name = spec.name
        items = load_benchmark(spec, base_dir=base_dir, limit=cfg.limit)
        if not items:
            raise ValueError(f"benchmark {name!r} has no items")
        prompts = [prompt_item(spec, it) for it in items]
        samples = backend.generate(prompts, cfg, desc=name)
        preds = score_samples(spec, items, samples, cfg, model)
        rows = summarize_predictions(preds, name, model, pass_k=cfg.pass_k)
        return preds, rows, None
    except Exception as e:  # noqa: BLE001 - one benchmark's crash must not lose the others
        return error_result(name, model, e)


def benchmark_name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, BenchmarkSpec):
        return ref.name
    if isinstance(ref, Mapping) and ref.get("name"):
        return str(ref["name"])
    return "?"


def error_result(
    benchmark: str, model: str, error: BaseException
) -> tuple[pd.DataFrame, list[dict[str, Any]], str]:
    """What a failed benchmark returns: empty predictions, one ``error`` row, the error with its traceback."""
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))
    msg = f"{type(error).__name__}: {error}\n{tb}"
    log.error("benchmark %s failed for model %s: %s", benchmark, model, msg)
    return empty_predictions(), [error_row(benchmark, model)], msg


def run_suite(
    model: Any,
    benchmarks: Sequence[BenchmarkSpec | Mapping[str, Any] | str],
    cfg: GenerationConfig | Mapping[str, Any] | None = None,
    model_name: str | None = None,
    base_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Evaluate one model on several benchmarks: (predictions, long results table, {benchmark: error}).
    The model is loaded once; a benchmark that fails leaves an error row and the others still run."""
    cfg = GenerationConfig.from_dict(cfg)
    label = model_label(model, model_name)
    backend = make_backend(model, cfg)
    all_preds, all_rows, errors = [], [], {}
    for b in benchmarks:
        preds, rows, err = run_benchmark(backend, b, cfg, model_name=label, base_dir=base_dir)
        if err is not None:
            errors[rows[0]["benchmark"]] = err
        if not preds.empty:
            all_preds.append(preds)
        all_rows.extend(rows)
    preds = pd.concat(all_preds, ignore_index=True) if all_preds else pd.DataFrame(columns=PREDICTION_COLUMNS)
    return preds, results_table(all_rows), errors
