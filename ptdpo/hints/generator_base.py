"""The hint generator interface: what a generator receives, what it returns, and what an item ends as.

A generator turns requests (item + optional feedback on a rejected attempt) into raw text, streamed as
each item finishes::

    class HintGenerator:
        name, model, prompt_version, kind
        def generate_stream(self, requests) -> Iterator[RawOutput]

The generators (``oracle``, ``openai_gen``, ``vllm_gen``) and the attempt/feedback loop
(``ptdpo.hints.generation``) both build on this module and on nothing of each other; the registry
(``ptdpo.hints.generators``) names the generators.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.audit import Verdict
from ptdpo.hints.schema import STRUCTURED, Hint

OK, REJECTED, FAILED = "ok", "rejected", "failed"

# What to do when a generator cannot serve a dataset (named in every HintSourceError).
WAYS_OUT = (
    "Ways out: (1) hints from a vision-language model behind an OpenAI-compatible endpoint (a vLLM server, a "
    "hosted model): hints.generator = {\"name\": \"openai\", \"base_url\": \"http://host:8000/v1\", "
    "\"model\": \"...\"}; (2) a vLLM engine inside the step: hints.generator = {\"name\": \"vllm\", "
    "\"model\": \"...\"}; (3) train the GRPO baseline without hints: train.ptd.enabled = false (as "
    "configs/baselines/tiny-grpo.json does). Recipes: docs/data.md, 'Hints for your own images'."
)


class HintSourceError(ValueError):
    """A hint generator that cannot serve these items at all (raised before any generation starts)."""


@dataclass
class GenerationRequest:
    item: Item
    attempt: int = 1
    feedback: str | None = None  # the audit's / parser's reasons for rejecting the previous attempt
    previous_raw: str | None = None


@dataclass
class RawOutput:
    item_id: str
    text: str = ""
    error: str | None = None  # transport-level failure (after the generator's own retries)
    usage: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class HintResult:
    item_id: str
    status: str  # ok | rejected | failed
    hint: Hint | None = None
    verdict: Verdict | None = None
    error: str | None = None
    raw: str = ""
    attempts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    config_hash: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "status": self.status,
            "hint": self.hint.to_dict() if self.hint else None,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "error": self.error,
            "raw": self.raw,
            "attempts": self.attempts,
            "history": self.history,
            "config_hash": self.config_hash,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HintResult:
        hint = Hint.from_dict(d["hint"]) if d.get("hint") else None
        verdict = Verdict(**d["verdict"]) if d.get("verdict") else None
        return cls(
            item_id=d["item_id"], status=d["status"], hint=hint, verdict=verdict, error=d.get("error"),
            raw=d.get("raw", ""), attempts=int(d.get("attempts", 0)), history=list(d.get("history", [])),
            config_hash=d.get("config_hash", ""),
        )


class HintGenerator:
    """Base class. Subclasses set ``name``/``model``/``prompt_version`` and implement ``generate_stream``;
    ``ptdpo.hints.generation.run_generation(generator, items)`` runs one (parse, audit, feedback)."""

    name = "base"
    model = ""
    prompt_version = ""
    kind = STRUCTURED

    def info(self) -> dict[str, Any]:
        """What every hint records as its ``generator``."""
        return {"name": self.name, "model": self.model, "prompt_version": self.prompt_version}

    def cache_params(self) -> dict[str, Any]:
        """Everything that changes the output (sampling...): part of the cache key. Never secrets."""
        return {}

    def config_hash(self) -> str:
        return config_hash({**self.info(), "kind": self.kind, **self.cache_params()})

    def check_items(self, items: Sequence[Item]) -> None:
        """Raise :class:`HintSourceError` naming the cause and the ways out when this generator cannot
        write hints for these items at all; called before any generation. Model-based generators serve
        any item."""

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[RawOutput]:
        raise NotImplementedError

    def close(self) -> None:  # release clients / engines
        pass


def config_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a generator configuration (sorted JSON)."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]
