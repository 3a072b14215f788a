"""Step body of ``prepare_data``: load the training set, resolve the benchmark suite, write the manifest.

Plain functions (no Metaflow): the flow stores what :func:`prepare_data` returns as artifacts
(``train_items``, ``benchmarks``, ``data_manifest``), and a script can call it the same way.

The manifest records, for the training set and for every benchmark, the loader spec, the item count,
splits/sources and a ``content_hash`` over ids, questions, answers, choices and image bytes
(``ptdpo.data.loaders.manifest``): two runs trained or scored on different data never share a hash.
Benchmarks are loaded here once (which also fills the Hugging Face cache before the evaluation
branches start); ``manifest_benchmarks: false`` in ``data`` skips that for very large suites. The spec
recorded is the dataset spec's keys that differ from their defaults.

Images a spec keeps in an archive (``images_archive``, e.g. ViRL39K's ``images.zip``) are fetched and
unpacked into its ``image_root`` once, before the rows are read; the manifest records the archive.

Given the run's training options (``train``), training items whose student prompt is longer than
``train.max_prompt_length`` (images included, counted with the policy's processor and no weights:
``ptdpo.data.prompt_length``) are dropped here, before hints are generated for them (METHOD.md 5), and
counted in ``data_manifest["train"]``: ``loaded``, ``filtered_overlong``, ``filtered_overlong_examples``
and ``prompt_tokens``. ``data.filter_overlong: false`` turns this off (the trainer then raises on the
first over-long prompt it draws); without ``train`` nothing is counted and ``filtered_overlong`` is None.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptdpo.config import TrainConfig, train_config_from_dict
from ptdpo.data.loaders import DatasetSpec
from ptdpo.data.schema import Item
from ptdpo.run_config import DataSection, EvalSection, data_section, eval_section

PROMPT_COUNT_BATCH = 256  # prompts tokenized per call while counting lengths


@dataclass
class PreparedData:
    train_items: list[Item]
    benchmarks: list[dict[str, Any]]  # resolved benchmark spec dicts, in config order
    manifest: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    data: DataSection | Mapping[str, Any],
    eval_cfg: EvalSection | Mapping[str, Any] | None = None,
    seed: int = 0,
    base_dir: str | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
) -> PreparedData:
    """Load ``data.train``, drop its over-long prompts (given ``train``), resolve the benchmarks of
    ``eval_cfg``, build the manifest. The flow passes the typed sections of its run config; a script may
    pass the JSON objects (``data``: a ``load_items`` spec under ``train``, further named sets,
    ``shuffle``: shuffle the training items with ``seed`` (the trainer samples itself, this only matters
    for sharding), ``manifest_benchmarks`` (default true), ``filter_overlong`` (default true)), checked
    the same way."""
    from ptdpo.data.loaders import load_items, manifest

    if not isinstance(data, DataSection):
        data = data_section(copy.deepcopy(dict(data)))
    if eval_cfg is not None and not isinstance(eval_cfg, EvalSection):
        eval_cfg = eval_section(copy.deepcopy(dict(eval_cfg)))
    if train is not None and not isinstance(train, TrainConfig):
        train = train_config_from_dict(copy.deepcopy(dict(train)))
    items = load_items(data.train, base_dir=base_dir)
    if not items:
        raise ValueError(f"data.train loaded no items from {spec_dict(data.train)!r}")
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise ValueError(f"data.train: duplicate item ids {dup[:10]} (hints and checkpoints are keyed by id)")
    train_entry: dict[str, Any] = {"spec": spec_dict(data.train), "loaded": len(items), "filtered_overlong": None}
    if train is not None and data.filter_overlong:
        items, report = drop_overlong(items, train)
        train_entry.update(report)
    if data.train.images_archive is not None:
        train_entry["images_archive"] = images_archive_entry(data.train, base_dir)
    if data.shuffle:
        random.Random(seed).shuffle(items)

    benchmarks = resolve_benchmark_specs(eval_cfg.benchmarks if eval_cfg is not None else [])
    out: dict[str, Any] = {"train": {**train_entry, **manifest(items)}, "benchmarks": {}}
    for name, spec in data.sets.items():  # further named sets (e.g. a held-out dev set): manifest only
        extra = load_items(spec, base_dir=base_dir)
        out[name] = {"spec": spec_dict(spec), **manifest(extra)}
    for spec in benchmarks:
        entry: dict[str, Any] = {"spec": spec}
        if data.manifest_benchmarks:
            entry.update(benchmark_manifest(spec, base_dir=base_dir))
        out["benchmarks"][spec["name"]] = entry
    return PreparedData(items, benchmarks, out)


def drop_overlong(items: list[Item], train: TrainConfig) -> tuple[list[Item], dict[str, Any]]:
    """The items whose student prompt fits ``train.max_prompt_length`` and the manifest's report on the
    others (see the module docstring). Only the policy's processor is loaded, never its weights."""
    from ptdpo.data.prompt_length import filter_overlong
    from ptdpo.models.loading import load_policy_processor

    processor = load_policy_processor(train.policy, min_pixels=train.min_pixels, max_pixels=train.max_pixels)
    kept, report = filter_overlong(items, processor, train.max_prompt_length, enable_thinking=train.enable_thinking,
                                   batch_size=PROMPT_COUNT_BATCH, template=train.prompt_template)
    report["prompt_tokens"].update(policy=train.policy, enable_thinking=train.enable_thinking,
                                   prompt_template=train.prompt_template,
                                   min_pixels=train.min_pixels, max_pixels=train.max_pixels)
    if not kept:
        raise ValueError(f"every one of the {len(items)} items of data.train has a prompt over "
                         f"train.max_prompt_length = {train.max_prompt_length} tokens (longest "
                         f"{report['prompt_tokens']['longest_filtered']}); raise the limit or lower "
                         "train.max_pixels")
    if report["filtered_overlong"]:
        print(f"data.train: dropped {report['filtered_overlong']} of {len(items)} items with a prompt over "
              f"{train.max_prompt_length} tokens (e.g. {report['filtered_overlong_examples'][:3]})")
    return kept, report


def images_archive_entry(spec: DatasetSpec, base_dir: str | None) -> dict[str, Any]:
    """Where a spec's image archive was unpacked and what its marker says (archive, size, files)."""
    from pathlib import Path

    from ptdpo.data.archives import read_marker

    root = Path(spec.image_root).expanduser()
    if not root.is_absolute() and base_dir is not None:
        root = Path(base_dir) / root
    return {"image_root": str(root), **(read_marker(root) or {})}


def spec_dict(spec: DatasetSpec) -> dict[str, Any]:
    """The keys of a dataset spec that differ from their defaults (what a config would write)."""
    out = {}
    for f in dataclasses.fields(spec):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        value = getattr(spec, f.name)
        if value != default:
            out[f.name] = copy.deepcopy(value)
    return out


def resolve_benchmark_specs(refs: Sequence[Any]) -> list[dict[str, Any]]:
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
