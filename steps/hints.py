"""Step body of ``generate_hints`` (one foreach branch per shard): plain functions, no Metaflow here.

- :func:`shard_items` splits the training items into contiguous shards (the foreach list).
- :func:`generate_hints_shard` one shard: check that the generator can serve the items at all (the
  oracle needs synthetic scene metadata: a ``HintSourceError`` naming the ways out otherwise), generate (oracle / vllm / openai), audit each hint, send
  rejected ones back with the reasons up to ``max_attempts``, cache every finished item in
  ``cache_dir`` (resumable: a re-run reuses finished items and retries only failures) and return
  ``(rows, failures)``: one row per item, ``failures`` the rows that are not ``ok`` (rejected hints
  are kept in the rows, marked, never dropped).
- :func:`join_hint_shards` the joined rows of all shards, checked for duplicates; :func:`hints_table` the
  ``hints`` artifact (a DataFrame) and its hash.
- :func:`hint_cache_dir` where the shards keep their resumable cache on this machine; the flow adds a
  durable copy in the run's datastore (``mirror``: ``flows/_hint_store.py``) unless ``hints.cache_dir``
  names a shared folder.

Generator config: the run config's ``hints`` section (``ptdpo.run_config.HintsSection``), or one dict::

    {"name": "oracle"}
    {"name": "openai", "model": "...", "base_url": "http://host:8000/v1", "api_key_env": "OPENAI_API_KEY",
     "concurrency": 8, "max_retries": 4, "timeout_s": 60, "max_attempts": 2}
    {"name": "vllm", "model": "Qwen/Qwen3-VL-235B-A22B-Instruct", "tensor_parallel_size": 8, ...}

plus the run options ``max_attempts`` (default 1), ``structured`` (default true; false gives the
unstructured ablation), ``unstructured_mode`` ("convert", default: generate structured hints and turn
them into paragraphs with the same content; "generate": ask the model for a paragraph), ``audit``
(audit config used for the feedback loop), ``progress`` (tqdm bar, default true) and
``retry_rejected``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.generation import OK, CacheMirror, HintResult, ShardCache, run_generation, shard_cache_path
from ptdpo.hints.generators import make_generator, split_config
from ptdpo.hints.schema import to_unstructured
from ptdpo.run_config import HintsSection


def _items(items: Sequence[Item | Mapping[str, Any]]) -> list[Item]:
    return [it if isinstance(it, Item) else Item.from_dict(dict(it)) for it in items]


def shard_items(items: Sequence[Any], n_shards: int) -> list[list[Any]]:
    """Contiguous, nearly equal shards (the same items always land in the same shard for a given n)."""
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    n = len(items)
    bounds = [round(i * n / n_shards) for i in range(n_shards + 1)]
    return [list(items[bounds[i]:bounds[i + 1]]) for i in range(n_shards)]


def _row(result: HintResult, structured: bool, convert: bool) -> dict[str, Any]:
    row = result.to_dict()
    if result.hint is not None and not structured and convert:
        row["hint"] = to_unstructured(result.hint).to_dict()
    row["usable"] = result.status == OK
    return row


def generate_hints_shard(
    items: Sequence[Item | Mapping[str, Any]],
    generator_config: HintsSection | Mapping[str, Any],
    cache_dir: str | Path,
    shard_index: int,
    generator=None,
    mirror: CacheMirror | None = None,
    sync_every_s: float = 30.0,
    on_result: Callable[[HintResult], None] | None = None,
    report: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate (or reuse from the cache) one hint per item of one shard, as the run config's ``hints``
    section says (or a generator config dict, see the module docstring).

    Returns ``(rows, failures)``. Each row: ``item_id``, ``status`` (ok | rejected | failed), ``usable``,
    ``hint`` (dict or None), ``verdict``, ``error``, ``raw``, ``attempts``, ``history`` (every attempt's
    raw text, error and audit reasons), ``config_hash``. ``generator`` may pass an already built
    generator (e.g. one vLLM engine reused across shards in one process). ``mirror``: a durable copy of
    the cache (synced every ``sync_every_s`` seconds); ``on_result(result)`` is called after each newly
    finished item is cached; ``report``, if given, receives ``reused`` (items taken from the cache, of
    which ``from_mirror`` from the durable copy), ``generated`` and ``cache`` (the local file)."""
    items = _items(items)
    if isinstance(generator_config, HintsSection):
        generator_config = generator_config.generator_config()
    _, run = split_config(dict(generator_config))
    structured = bool(run.get("structured", True))
    mode = run.get("unstructured_mode", "convert")
    if mode not in ("convert", "generate"):
        raise ValueError(f"unstructured_mode must be 'convert' or 'generate', got {mode!r}")
    own = generator is None
    gen = generator if generator is not None else make_generator(dict(generator_config))
    try:
        gen.check_items(items)  # a generator that cannot serve this data says why before generating anything
        h = gen.config_hash()
        cache = ShardCache(shard_cache_path(cache_dir, shard_index, h), h, mirror=mirror, sync_every_s=sync_every_s)
        generated = []

        def finished(result: HintResult) -> None:
            generated.append(result.item_id)
            if on_result is not None:
                on_result(result)

        results = run_generation(
            gen, items,
            max_attempts=int(run.get("max_attempts", 1)),
            audit_config=run.get("audit"),
            cache=cache,
            progress=bool(run.get("progress", True)),
            retry_rejected=bool(run.get("retry_rejected", False)),
            desc=f"hints shard {shard_index}",
            on_result=finished,
        )
        if report is not None:
            report.update(reused=len(items) - len(generated), from_mirror=cache.from_mirror,
                          generated=len(generated), cache=str(cache.path))
    finally:
        if own:
            gen.close()
    convert = mode == "convert"
    rows = [_row(r, structured, convert) for r in results]
    failures = [r for r in rows if r["status"] != OK]
    return rows, failures


def join_hint_shards(shards: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """All shards' rows in order; an item id in two shards is an error (it would get two hints)."""
    out, seen = [], set()
    for rows in shards:
        for r in rows:
            if r["item_id"] in seen:
                raise ValueError(f"item {r['item_id']!r} appears in more than one hint shard")
            seen.add(r["item_id"])
            out.append(r)
    return out


def hint_cache_dir(configured: str | None, run_name: str | None = None) -> str:
    """Where hint shards keep their resumable cache: ``hints.cache_dir`` (on a cluster: the shared PVC,
    so a retried pod or a later run reuses finished items), else ``$PTDPO_HINT_CACHE``, else a folder
    under the system temp dir named after the (origin) run, shared by the attempts of a local run."""
    explicit = configured or os.environ.get("PTDPO_HINT_CACHE")
    if explicit:
        return str(explicit)
    return str(Path(tempfile.gettempdir()) / "ptdpo-hint-cache" / (run_name or "adhoc"))


def hints_table(rows: list[dict[str, Any]]):
    """(hints DataFrame, sha256 over the rows' item ids, statuses and hints) for the ``hints`` artifact."""
    import pandas as pd

    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["item_id"]):
        h.update(json.dumps([r["item_id"], r.get("status"), r.get("hint")], sort_keys=True, default=str).encode())
        h.update(b"\n")
    cols = ["item_id", "status", "usable", "hint", "verdict", "error", "raw", "attempts", "history", "config_hash"]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
    return df, h.hexdigest()
