"""The attempt/feedback loop and the resumable per-shard cache, over any generator of the interface.

``run_generation(generator, items)`` asks a generator (``ptdpo.hints.generator_base.HintGenerator``;
made from config by ``ptdpo.hints.generators.make_generator``) for hints, parses every output
(``parse_hint``), audits it (``audit``) and, while attempts remain, sends rejected or unparseable outputs
back with the reasons (``regenerate_with_feedback`` is the same loop started from earlier results). Every
item ends as one ``HintResult``:

- ``ok``: a hint that passed the audit;
- ``rejected``: a valid hint that still fails the audit after the last attempt: kept (hint, verdict,
  every attempt's raw text) and marked, never silently dropped; PTD excludes it;
- ``failed``: no valid hint (API errors after retries, unparseable output): error and raw text kept.

``ShardCache`` is a jsonl file per (shard, generator-config hash). Each finished item is appended as
one line with a single write, flushed and fsynced; a line cut by a crash is skipped on load (and the
next append starts on a fresh line), so earlier lines are never lost. Re-running a shard reuses every
``ok``/``rejected`` line and generates only the missing and ``failed`` items.

A cache may also keep a copy somewhere durable (``mirror``, a :class:`CacheMirror`: the flow passes the
run's datastore, local or S3), so that a retry or a resume on another machine, whose local disk is
empty, still reuses the finished items. The copy is a folder of immutable segments, each holding the
lines appended since the previous one; they are written at most every ``sync_every_s`` seconds and when
the shard ends (success or exception), and read back, in order, before the local file.

This module knows the generators only through the interface: it imports none of them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ptdpo.data.schema import Item
from ptdpo.hints.audit import AuditConfig, audit, feedback_text, item_facts
from ptdpo.hints.generator_base import (
    FAILED,
    OK,
    REJECTED,
    GenerationRequest,
    HintGenerator,
    HintResult,
    RawOutput,
)

# The generator registry's names, also importable from here for the steps and flows that import them
# from this module (the registry itself imports only the interface, so this adds no circle).
from ptdpo.hints.schema import HintError, parse_hint

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------


def shard_cache_path(cache_dir: str | os.PathLike, shard_index: int, cfg_hash: str) -> Path:
    return Path(cache_dir) / f"hints-shard{int(shard_index):05d}-{cfg_hash}.jsonl"


class CacheMirror(Protocol):
    """Durable storage for a cache's segments: keys are ``<folder>/<segment name>``."""

    def list(self, folder: str) -> list[str]:
        """The keys of the segments under ``folder`` (any order)."""

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...


class ShardCache:
    """Append-only jsonl of finished HintResults for one shard and one generator configuration, with an
    optional durable copy (``mirror``) synced every ``sync_every_s`` seconds (module docstring)."""

    def __init__(self, path: str | os.PathLike, cfg_hash: str, mirror: CacheMirror | None = None,
                 sync_every_s: float = 30.0):
        self.path = Path(path)
        self.cfg_hash = cfg_hash
        self.skipped_lines = 0
        self.mirror, self.sync_every_s = mirror, float(sync_every_s)
        self.folder = self.path.name  # the segments' folder in the mirror
        self.from_mirror = 0  # results read from the mirror by the last load()
        self._pending: list[str] = []
        self._last_sync = float("-inf")
        self._writer = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0

    def _mirror_lines(self) -> list[str]:
        if self.mirror is None:
            return []
        lines = []
        for key in sorted(self.mirror.list(self.folder)):  # segment names sort by the time they were written
            lines.extend(self.mirror.get(key).decode("utf-8", errors="replace").splitlines())
        return lines

    def load(self) -> dict[str, HintResult]:
        """Latest result per item id (the mirror's segments first, then the local file); lines of another
        config hash or cut by a crash are skipped."""
        out: dict[str, HintResult] = {}
        self.skipped_lines = 0
        remote = self._mirror_lines()
        local: list[str] = []
        if self.path.exists():
            with self.path.open("r", encoding="utf-8", errors="replace") as f:
                local = f.read().splitlines()
        for line in remote + local:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if d.get("config_hash") != self.cfg_hash:
                    continue
                out[d["item_id"]] = HintResult.from_dict(d)
            except (json.JSONDecodeError, KeyError, TypeError, HintError):
                self.skipped_lines += 1
        self.from_mirror = len({json.loads(x)["item_id"] for x in remote if _parses(x, self.cfg_hash)})
        if self.skipped_lines:
            log.warning("%s: skipped %d unreadable line(s) (cut by a crash?)", self.path, self.skipped_lines)
        return out

    def append(self, result: HintResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**result.to_dict(), "config_hash": self.cfg_hash}, ensure_ascii=False) + "\n"
        prefix = ""
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    prefix = "\n"  # a previous write was cut: never glue onto a partial line
        with self.path.open("a", encoding="utf-8") as f:
            f.write(prefix + line)
            f.flush()
            os.fsync(f.fileno())
        if self.mirror is not None:
            self._pending.append(line)
            if time.monotonic() - self._last_sync >= self.sync_every_s:
                self.sync()

    def sync(self) -> None:
        """Write the lines appended since the last sync to the mirror as one new segment. A failure is
        logged and retried at the next sync: the local file still has every line."""
        if self.mirror is None or not self._pending:
            return
        key = f"{self.folder}/seg-{int(time.time() * 1000):013d}-{self._writer}-{self._seq:06d}.jsonl"
        try:
            self.mirror.put(key, "".join(self._pending).encode("utf-8"))
        except Exception as e:  # noqa: BLE001 - storage errors of any backend
            log.warning("could not copy %d hint(s) to %s: %s", len(self._pending), key, e)
            return
        self._seq += 1
        self._pending = []
        self._last_sync = time.monotonic()


def _parses(line: str, cfg_hash: str) -> bool:
    try:
        d = json.loads(line)
        return d.get("config_hash") == cfg_hash and "item_id" in d
    except (json.JSONDecodeError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------------
# The attempt / feedback loop
# ------------------------------------------------------------------------------------------------


@dataclass
class _State:
    item: Item
    attempt: int = 0
    feedback: str | None = None
    previous_raw: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last: HintResult | None = None


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item", dynamic_ncols=True)


def _evaluate(generator: HintGenerator, st: _State, out: RawOutput, config: AuditConfig, facts_cache: dict) -> HintResult:
    item = st.item
    entry: dict[str, Any] = {"attempt": st.attempt, "raw": out.text, "error": out.error, "usage": out.usage}
    if out.notes:
        entry["notes"] = out.notes
    ch = generator.config_hash()
    if out.error is not None:
        st.history.append(entry)
        return HintResult(item.id, FAILED, error=out.error, raw=out.text, attempts=st.attempt,
                          history=list(st.history), config_hash=ch)
    try:
        hint = parse_hint(out.text, item.id, generator=generator.info(), kind=generator.kind)
    except HintError as e:
        entry["error"] = str(e)
        st.history.append(entry)
        return HintResult(item.id, FAILED, error=f"unparseable output: {e}", raw=out.text, attempts=st.attempt,
                          history=list(st.history), config_hash=ch)
    facts = facts_cache.get(item.id)
    if facts is None:
        facts = facts_cache[item.id] = item_facts(item, config)
    verdict = audit(hint, item, config, facts)
    entry["reasons"] = verdict.reasons
    entry["passed"] = verdict.passed
    st.history.append(entry)
    return HintResult(item.id, OK if verdict.passed else REJECTED, hint=hint, verdict=verdict, raw=out.text,
                      attempts=st.attempt, history=list(st.history), config_hash=ch)


def _feedback_for(result: HintResult) -> str:
    if result.status == REJECTED and result.verdict is not None:
        return feedback_text(result.verdict)
    return f"- {result.error}"


def _loop(
    generator: HintGenerator,
    states: list[_State],
    max_attempts: int,
    config: AuditConfig,
    on_final,
    bar,
) -> None:
    pending = {st.item.id: st for st in states}
    facts_cache: dict[str, Any] = {}
    while pending:
        requests = []
        for st in pending.values():
            st.attempt += 1
            requests.append(GenerationRequest(st.item, st.attempt, st.feedback, st.previous_raw))
        next_round: dict[str, _State] = {}
        seen = set()
        for out in generator.generate_stream(requests):
            st = pending.get(out.item_id)
            if st is None or out.item_id in seen:
                log.warning("generator %s returned an output for an unexpected item %r", generator.name, out.item_id)
                continue
            seen.add(out.item_id)
            result = _evaluate(generator, st, out, config, facts_cache)
            st.last = result
            # bad content goes back with the reasons; a transport failure (after the generator's own
            # retries) simply gets another attempt
            retry = result.status != OK and st.attempt < max_attempts
            if retry:
                st.feedback = _feedback_for(result) if out.error is None else None
                st.previous_raw = out.text if out.error is None else None
                next_round[st.item.id] = st
            else:
                on_final(result)
                if bar is not None:
                    bar.update(1)
        for iid, st in pending.items():
            if iid not in seen:  # a generator that silently skipped an item: record it, never drop it
                result = HintResult(iid, FAILED, error="generator returned no output for this item",
                                    attempts=st.attempt, history=list(st.history), config_hash=generator.config_hash())
                on_final(result)
                if bar is not None:
                    bar.update(1)
        pending = next_round


def run_generation(
    generator: HintGenerator,
    items: Sequence[Item],
    *,
    max_attempts: int = 1,
    audit_config: AuditConfig | dict | None = None,
    cache: ShardCache | None = None,
    progress: bool = False,
    retry_rejected: bool = False,
    desc: str = "hints",
    on_result: Callable[[HintResult], None] | None = None,
) -> list[HintResult]:
    """One HintResult per item, in item order. With a cache: finished items are reused and every newly
    finished item is appended as soon as it is final (then ``on_result(result)``); the cache's mirror is
    synced when the loop ends, also by an exception."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    config = audit_config if isinstance(audit_config, AuditConfig) else AuditConfig.from_dict(audit_config)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate item id {dup!r} in one shard")
    done = cache.load() if cache is not None else {}
    reuse = {OK, REJECTED} if not retry_rejected else {OK}
    results: dict[str, HintResult] = {iid: r for iid, r in done.items() if r.status in reuse and iid in set(ids)}
    todo = [it for it in items if it.id not in results]
    bar = _progress(len(items), len(items) - len(todo), progress, desc)

    def on_final(result: HintResult) -> None:
        results[result.item_id] = result
        if cache is not None:
            cache.append(result)
        if on_result is not None:
            on_result(result)

    try:
        if todo:
            _loop(generator, [_State(it) for it in todo], max_attempts, config, on_final, bar)
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.sync()
    return [results[i] for i in ids]


def regenerate_with_feedback(
    generator: HintGenerator,
    items: Sequence[Item],
    results: Sequence[HintResult],
    *,
    max_attempts: int = 2,
    audit_config: AuditConfig | dict | None = None,
    cache: ShardCache | None = None,
    progress: bool = False,
) -> list[HintResult]:
    """Send rejected/failed hints back to the generator with the audit's reasons, until they pass or
    ``max_attempts`` attempts (counting the earlier ones) are used. Passing results are kept as they are;
    what still fails stays in the output, marked."""
    config = audit_config if isinstance(audit_config, AuditConfig) else AuditConfig.from_dict(audit_config)
    by_id = {it.id: it for it in items}
    out: dict[str, HintResult] = {r.item_id: r for r in results}
    states = []
    for r in results:
        if r.status == OK or r.attempts >= max_attempts or r.item_id not in by_id:
            continue
        st = _State(by_id[r.item_id], attempt=r.attempts, history=list(r.history))
        st.feedback = _feedback_for(r)
        st.previous_raw = r.raw or None
        states.append(st)
    bar = _progress(len(states), 0, progress, "regenerate")

    def on_final(result: HintResult) -> None:
        out[result.item_id] = result
        if cache is not None:
            cache.append(result)

    try:
        if states:
            _loop(generator, states, max_attempts, config, on_final, bar)
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.sync()
    return [out[r.item_id] for r in results]


__all__ = [
    "FAILED", "OK", "REJECTED", "CacheMirror", "GenerationRequest", "HintGenerator", "HintResult", "RawOutput",
    "ShardCache", "regenerate_with_feedback", "run_generation", "shard_cache_path",
]
