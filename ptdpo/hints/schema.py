"""The privileged hint: schema, strict validation and tolerant parsing of a model's raw output.

A hint (DESIGN.md 4, METHOD.md 4) is answer-free guidance written offline for one item:

- ``regions``: where to look, each ``{"bbox": [x1, y1, x2, y2], "label": str, "why": str}`` with the
  box in 0..1000 normalised image coordinates (the Qwen-VL grounding convention), x1 < x2, y1 < y2;
- ``steps``: the reasoning direction as short imperative steps (at least one);
- ``traps``: distractors or common mistakes to avoid;
- ``generator``: ``{"name", "model", "prompt_version"}`` of whatever wrote it;
- ``raw``: the generator's text, kept for inspection.

The unstructured variant (``kind="unstructured"``) carries one free-text paragraph in ``text`` and no
regions/steps/traps; ``to_unstructured`` turns a structured hint into it with the same content, so the
structured-vs-unstructured ablation (METHOD.md 3) compares form, not content.

Validation is strict and every error is a ``HintError`` naming the item and the field
(``regions[1].bbox``, ``steps[0]``...). Parsing (``parse_hint``) is tolerant about the wrapping only:
code fences, ``<think>`` blocks and prose around the JSON object are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ptdpo.data.schema import ItemError

STRUCTURED = "structured"
UNSTRUCTURED = "unstructured"
KINDS = (STRUCTURED, UNSTRUCTURED)

# Hard limits applied at parse time (a hint beyond them is malformed). The audit has its own, tighter,
# configurable length limits (reason ``too_long``).
MAX_REGIONS = 12
MAX_STEPS = 12
MAX_TRAPS = 8
MAX_LABEL_CHARS = 80
MAX_FIELD_CHARS = 500
MAX_TEXT_CHARS = 3000
COORD_MAX = 1000

# Aliases accepted for region keys: Qwen-VL models like to answer with ``bbox_2d``.
_REGION_ALIASES = {"bbox_2d": "bbox", "box": "bbox", "reason": "why"}
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>")


class HintError(ItemError):
    """A hint that is malformed or cannot be parsed, naming the item and the field."""


@dataclass
class Region:
    bbox: list[int]
    label: str
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "label": self.label, "why": self.why}


@dataclass
class Hint:
    item_id: str
    regions: list[Region] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    traps: list[str] = field(default_factory=list)
    generator: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    kind: str = STRUCTURED
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "kind": self.kind,
            "regions": [r.to_dict() for r in self.regions],
            "steps": list(self.steps),
            "traps": list(self.traps),
            "text": self.text,
            "generator": dict(self.generator),
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], item_id: str | None = None) -> Hint:
        """Build and validate a hint from a dict (``to_dict`` output or a model's JSON object).

        ``item_id`` overrides/supplies the id (a model's JSON does not carry it)."""
        iid = item_id if item_id is not None else d.get("item_id") if isinstance(d, dict) else None
        if not isinstance(d, dict):
            raise HintError(iid, "hint", f"expected a JSON object, got {type(d).__name__}")
        known = {"item_id", "kind", "regions", "steps", "traps", "text", "generator", "raw"}
        extra = sorted(set(d) - known)
        if extra:
            raise HintError(iid, extra[0], f"unknown field (allowed: {sorted(known - {'item_id', 'raw'})})")
        if iid is None or not isinstance(iid, str) or not iid:
            raise HintError(None, "item_id", "missing or not a non-empty string")
        kind = d.get("kind", STRUCTURED)
        if kind not in KINDS:
            raise HintError(iid, "kind", f"must be one of {KINDS}, got {kind!r}")
        generator = d.get("generator") or {}
        if not isinstance(generator, dict):
            raise HintError(iid, "generator", "must be an object {name, model, prompt_version}")
        raw = d.get("raw", "")
        if not isinstance(raw, str):
            raise HintError(iid, "raw", "must be a string")
        if kind == UNSTRUCTURED:
            for key in ("regions", "steps", "traps"):
                if d.get(key):
                    raise HintError(iid, key, "an unstructured hint carries only 'text'")
            text = _check_str(iid, "text", d.get("text"), MAX_TEXT_CHARS)
            return cls(item_id=iid, generator=dict(generator), raw=raw, kind=kind, text=text)
        if d.get("text"):
            raise HintError(iid, "text", "a structured hint has regions/steps/traps, not 'text'")
        regions = _check_regions(iid, d.get("regions", []))
        steps = _check_str_list(iid, "steps", d.get("steps"), MAX_STEPS, required=True)
        traps = _check_str_list(iid, "traps", d.get("traps", []), MAX_TRAPS, required=False)
        return cls(item_id=iid, regions=regions, steps=steps, traps=traps, generator=dict(generator), raw=raw)

    def validate(self) -> Hint:
        """Re-validate (after hand edits); returns a validated copy or raises HintError."""
        return Hint.from_dict(self.to_dict())

    def texts(self) -> list[tuple[str, str]]:
        """Every free-text field as ``(field name, text)``: what the teacher will read."""
        if self.kind == UNSTRUCTURED:
            return [("text", self.text)]
        out: list[tuple[str, str]] = []
        for i, r in enumerate(self.regions):
            out.append((f"regions[{i}].label", r.label))
            if r.why:
                out.append((f"regions[{i}].why", r.why))
        out += [(f"steps[{i}]", s) for i, s in enumerate(self.steps)]
        out += [(f"traps[{i}]", t) for i, t in enumerate(self.traps)]
        return out


def _check_str(iid: str, name: str, value: Any, limit: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise HintError(iid, name, f"must be a string, got {type(value).__name__}")
    value = " ".join(value.split()) if name != "text" else value.strip()
    if not value and not allow_empty:
        raise HintError(iid, name, "must not be empty")
    if len(value) > limit:
        raise HintError(iid, name, f"too long ({len(value)} characters, limit {limit})")
    if _SPECIAL_TOKEN.search(value):
        raise HintError(iid, name, "must not contain special tokens such as <|box_start|>")
    return value


def _check_str_list(iid: str, name: str, value: Any, limit: int, required: bool) -> list[str]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise HintError(iid, name, f"must be a list of strings, got {type(value).__name__}")
    if required and not value:
        raise HintError(iid, name, "must have at least one entry")
    if len(value) > limit:
        raise HintError(iid, name, f"too many entries ({len(value)}, limit {limit})")
    return [_check_str(iid, f"{name}[{i}]", v, MAX_FIELD_CHARS) for i, v in enumerate(value)]


def _check_bbox(iid: str, name: str, value: Any) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise HintError(iid, name, f"must be [x1, y1, x2, y2], got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise HintError(iid, name, f"coordinates must be numbers, got {value!r}")
        if isinstance(v, float) and not v.is_integer():
            v = round(v)
        out.append(int(v))
    x1, y1, x2, y2 = out
    if min(out) < 0 or max(out) > COORD_MAX:
        raise HintError(iid, name, f"coordinates must lie in 0..{COORD_MAX} (normalised), got {out}")
    if not (x1 < x2 and y1 < y2):
        raise HintError(iid, name, f"box must satisfy x1 < x2 and y1 < y2, got {out}")
    return out


def _check_regions(iid: str, value: Any) -> list[Region]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise HintError(iid, "regions", f"must be a list, got {type(value).__name__}")
    if len(value) > MAX_REGIONS:
        raise HintError(iid, "regions", f"too many regions ({len(value)}, limit {MAX_REGIONS})")
    regions = []
    for i, r in enumerate(value):
        where = f"regions[{i}]"
        if not isinstance(r, dict):
            raise HintError(iid, where, "must be an object {bbox, label, why}")
        r = {_REGION_ALIASES.get(k, k): v for k, v in r.items()}
        extra = sorted(set(r) - {"bbox", "label", "why"})
        if extra:
            raise HintError(iid, f"{where}.{extra[0]}", "unknown field (allowed: bbox, label, why)")
        if "bbox" not in r:
            raise HintError(iid, f"{where}.bbox", "missing")
        bbox = _check_bbox(iid, f"{where}.bbox", r["bbox"])
        label = _check_str(iid, f"{where}.label", r.get("label"), MAX_LABEL_CHARS)
        why = _check_str(iid, f"{where}.why", r.get("why", ""), MAX_FIELD_CHARS, allow_empty=True)
        regions.append(Region(bbox=bbox, label=label, why=why))
    return regions


# ----------------------------------------------------------------------------------------------
# Parsing a model's raw output
# ----------------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_HINT_KEYS = {"regions", "steps", "traps", "hint", "text"}
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript)?[ \t]*\n?(.*?)```", re.S)


def extract_json_object(raw: str) -> dict[str, Any] | None:
    """The first JSON object in ``raw``: inside a code fence if there is one, else anywhere in the
    text (prose around it, a ``<think>`` block before it). None when there is none."""
    text = _THINK.sub("", raw)
    if "</think>" in text:  # an unclosed/partial think block: keep what follows it
        text = text.rsplit("</think>", 1)[1]
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    first = None
    for chunk in candidates:
        for m in re.finditer(r"\{", chunk):
            try:
                obj, _ = decoder.raw_decode(chunk, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                if _HINT_KEYS & set(obj):
                    return obj  # prefer the object that looks like a hint over stray JSON in prose
                first = obj if first is None else first
    return first


def parse_hint(
    raw: str,
    item_id: str,
    generator: dict[str, Any] | None = None,
    kind: str = STRUCTURED,
) -> Hint:
    """Parse a generator's raw text into a validated Hint, or raise HintError naming the field.

    Structured: a JSON object ``{"regions": [...], "steps": [...], "traps": [...]}`` somewhere in the
    text. Unstructured: a JSON object ``{"hint": "..."}`` (or ``{"text": "..."}``) or, failing that, the
    whole text as the paragraph."""
    if not isinstance(raw, str):
        raise HintError(item_id, "raw", f"expected text, got {type(raw).__name__}")
    gen = dict(generator or {})
    obj = extract_json_object(raw)
    if kind == UNSTRUCTURED:
        if obj is not None and len(obj) == 1 and isinstance(next(iter(obj.values())), str):
            key, text = next(iter(obj.items()))
            if key not in ("hint", "text", "paragraph"):
                raise HintError(item_id, key, "unknown field (expected 'hint')")
        elif obj is not None:
            raise HintError(item_id, "hint", "expected {\"hint\": \"one paragraph\"}")
        else:
            text = _FENCE.sub(lambda m: m.group(1), _THINK.sub("", raw)).strip()
        return Hint.from_dict({"kind": UNSTRUCTURED, "text": text, "generator": gen, "raw": raw}, item_id)
    if obj is None:
        what = "empty output" if not raw.strip() else "no JSON object found in the output"
        raise HintError(item_id, "raw", what)
    if "hint" in obj and isinstance(obj["hint"], dict) and len(obj) == 1:
        obj = obj["hint"]
    body = {k: v for k, v in obj.items() if k != "item_id"}
    for key in ("kind", "text", "generator", "raw"):
        if key in body:
            raise HintError(item_id, key, "unknown field (allowed: regions, steps, traps)")
    return Hint.from_dict({**body, "generator": gen, "raw": raw}, item_id)


# ----------------------------------------------------------------------------------------------
# Structured -> unstructured (same content, one paragraph)
# ----------------------------------------------------------------------------------------------


def _sentence(s: str) -> str:
    s = s.strip()
    if not s:
        return s
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def _lower_first(s: str) -> str:
    """'Do not ...' -> 'do not ...', but 'AB is ...' stays (an acronym or label)."""
    return s[0].lower() + s[1:] if len(s) > 1 and s[1].islower() else s


def to_unstructured(hint: Hint) -> Hint:
    """The same content as one free-text paragraph (``kind="unstructured"``): regions become
    "Look at the <label> around [x1, y1, x2, y2]: <why>.", then the steps, then the traps."""
    if hint.kind == UNSTRUCTURED:
        return hint
    parts = []
    for r in hint.regions:
        box = "[" + ", ".join(str(v) for v in r.bbox) + "]"
        s = f"Look at the {r.label} around {box}"
        parts.append(_sentence(f"{s}: {r.why}" if r.why else s))
    parts += [_sentence(s) for s in hint.steps]
    parts += [_sentence(f"Be careful: {_lower_first(t)}") for t in hint.traps]
    gen = {**hint.generator, "converted_from": STRUCTURED}
    return Hint(item_id=hint.item_id, generator=gen, raw=hint.raw, kind=UNSTRUCTURED, text=" ".join(parts))
