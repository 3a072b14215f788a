"""Step body of ``prepare_data``: load the training set, resolve the benchmark suite, write the manifest.

Plain functions (no Metaflow): the flow stores what :func:`prepare_data` returns as artifacts
(``train_items``, ``benchmarks``, ``data_manifest``), and a script can call it the same way.

The manifest records, for the training set and for every benchmark, the loader spec, the item count,
splits/sources and a ``content_hash`` over ids, questions, answers, choices and image bytes
(``ptdpo.data.loaders.manifest``): two runs trained or scored on different data never share a hash.
Benchmarks are loaded here once (which also fills the Hugging Face cache before the evaluation
branches start); ``manifest_benchmarks: false`` in ``data`` skips that for very large suites.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

from ptdpo.data.schema import Item


@dataclass
class PreparedData:
    train_items: list[Item]
    benchmarks: list[dict[str, Any]]  # resolved benchmark spec dicts, in config order
    manifest: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    data_cfg: dict[str, Any],
    eval_cfg: dict[str, Any] | None = None,
    seed: int = 0,
    base_dir: str | None = None,
) -> PreparedData:
    """Load ``data_cfg["train"]`` (a ``load_items`` spec), resolve ``eval_cfg["benchmarks"]``, build the
    manifest. ``data_cfg`` may also hold ``shuffle`` (shuffle the training items with ``seed``; the trainer
    samples itself, this only matters for sharding) and ``manifest_benchmarks`` (default True)."""
    from ptdpo.data.loaders import load_items, manifest

    data_cfg = copy.deepcopy(data_cfg)
    eval_cfg = copy.deepcopy(eval_cfg or {})
    shuffle = bool(data_cfg.pop("shuffle", False))
    with_benchmarks = bool(data_cfg.pop("manifest_benchmarks", True))
    train_spec = data_cfg.pop("train")
    items = load_items(train_spec, base_dir=base_dir)
    if not items:
        raise ValueError(f"data.train loaded no items from {train_spec!r}")
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise ValueError(f"data.train: duplicate item ids {dup[:10]} (hints and checkpoints are keyed by id)")
    if shuffle:
        random.Random(seed).shuffle(items)

    benchmarks = resolve_benchmark_specs(eval_cfg.get("benchmarks") or [])
    out: dict[str, Any] = {"train": {"spec": train_spec, **manifest(items)}, "benchmarks": {}}
    for name, spec in data_cfg.items():  # further named sets (e.g. a held-out dev set): manifest only
        extra = load_items(spec, base_dir=base_dir)
        out[name] = {"spec": spec, **manifest(extra)}
    for spec in benchmarks:
        entry: dict[str, Any] = {"spec": spec}
        if with_benchmarks:
            entry.update(benchmark_manifest(spec, base_dir=base_dir))
        out["benchmarks"][spec["name"]] = entry
    return PreparedData(items, benchmarks, out)


def resolve_benchmark_specs(refs: list[Any]) -> list[dict[str, Any]]:
    """Registry names / ``{"name": ..., overrides}`` / full specs -> full spec dicts."""
    from ptdpo.eval.registry import resolve_benchmark

    return [resolve_benchmark(copy.deepcopy(r)).to_dict() for r in refs]


def benchmark_manifest(spec: dict[str, Any], base_dir: str | None = None) -> dict[str, Any]:
    """Count and content hash of a benchmark as the evaluation will load it (filters, transforms, limit)."""
    from ptdpo.data.loaders import manifest
    from ptdpo.eval.registry import load_benchmark

    return manifest(load_benchmark(spec, base_dir=base_dir))


def eval_branches(benchmarks: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """The ``evaluate`` foreach: one branch per (benchmark, model), benchmark-major."""
    return [{"benchmark": b, "model": m} for b in benchmarks for m in models]
