"""The oracle generator: hints for synthetic scenes written from their metadata, without a model.

Deterministic. It follows the zero-spoiler rule by construction and then checks itself with the audit:

- regions come from ``meta.evidence``. For counting-type questions (count, sum, difference,
  more_than) the evidence boxes of each group are merged into ONE padded box labelled with the group's
  plural noun ("red circles"): one box per counted object would give the count away. Relation and
  extreme questions, and ``marked`` ones (the object with a mark, ``grid_color``), get one box per object
  (at most ``max_regions``); other questions one merged box
  per evidence label;
- steps are ``meta.method`` and traps ``meta.traps`` (answer-free by the data contract);
- every label, reason, step and trap is audited on its own (``audit_text``); a sentence that would leak
  is dropped (recorded in the attempt's notes) and a region label that would leak is replaced by a
  neutral one. If no step survives, generic method steps for the question type are used.

``meta.reasoning`` and ``item.solution`` (worked steps with values) are never used.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.audit import AuditConfig, ItemFacts, audit_text, item_facts
from ptdpo.hints.generator_base import WAYS_OUT, GenerationRequest, HintGenerator, HintSourceError, RawOutput
from ptdpo.hints.schema import COORD_MAX, STRUCTURED, UNSTRUCTURED, Hint, HintError, to_unstructured

ORACLE_VERSION = "oracle-v1"
COUNT_TYPES = ("count", "sum", "difference", "more_than")

_WHY = {
    "count": "the {label} to count are somewhere in this area; check them all",
    "relation": "an object the question relates; compare positions using box centres",
    "extreme": "a candidate; compare its position with the other candidates",
    "marked": "the object the question singles out; read the asked attribute here",
    "most": "the {label} to group and count",
    "number": "the written numbers are here; read each of them in full",
    "default": "relevant to the question",
}
_GENERIC_STEPS = {
    "count": ["Find every object that matches the description in the question.",
              "Count them individually, marking each as you go."],
    "relation": ["Locate both objects named in the question.", "Compare their positions using their centres."],
    "extreme": ["Find every candidate object.", "Compare their positions along the asked direction."],
    "default": ["Find the objects the question asks about.", "Work through them in turn before answering."],
}


def _plural_noun(desc: dict[str, Any]) -> str:
    shape = desc.get("shape") or "shape"
    return " ".join(p for p in (desc.get("size"), desc.get("color"), shape + "s") if p)


def _union(boxes: Sequence[Sequence[int]], pad: int) -> list[int]:
    x1 = min(b[0] for b in boxes) - pad
    y1 = min(b[1] for b in boxes) - pad
    x2 = max(b[2] for b in boxes) + pad
    y2 = max(b[3] for b in boxes) + pad
    x1, y1 = max(0, int(x1)), max(0, int(y1))
    x2, y2 = min(COORD_MAX, int(x2)), min(COORD_MAX, int(y2))
    if x2 <= x1:
        x1, x2 = max(0, x1 - 1), min(COORD_MAX, x1 + 1)
    if y2 <= y1:
        y1, y2 = max(0, y1 - 1), min(COORD_MAX, y1 + 1)
    return [x1, y1, x2, y2]


def _matches(ev: dict[str, Any], desc: dict[str, Any], objects: list[dict[str, Any]]) -> bool:
    for o in objects:
        if list(o.get("bbox", [])) == list(ev.get("bbox", [])):
            return all(o.get(k) == v for k, v in desc.items())
    words = set(str(ev.get("label", "")).lower().split())
    return all(str(v).lower() in words for v in desc.values())


def _regions(item: Item, pad: int, max_regions: int) -> tuple[list[dict[str, Any]], str]:
    meta = item.meta
    evidence = [e for e in meta.get("evidence", []) if isinstance(e, dict) and "bbox" in e]
    objects = [o for o in meta.get("objects", []) if isinstance(o, dict)]
    query = meta.get("query") or {}
    qtype = query.get("type", "")
    descs = [query[k] for k in ("target", "a", "b") if isinstance(query.get(k), dict)]
    regions: list[dict[str, Any]] = []
    if qtype in COUNT_TYPES and descs:
        for desc in descs:
            boxes = [e["bbox"] for e in evidence if _matches(e, desc, objects)]
            if boxes:
                label = _plural_noun(desc)
                regions.append({"bbox": _union(boxes, pad), "label": label, "why": _WHY["count"].format(label=label)})
        return regions[:max_regions], "count"
    labels = [str(e.get("label") or "object") for e in evidence]
    if qtype in ("relation", "extreme", "marked") and 0 < len(evidence) <= max_regions:
        kind = qtype
        pairs = list(zip(evidence, labels))
        if qtype == "extreme":  # the metadata may list the answer first: an order that says nothing
            random.Random(f"oracle|{item.id}").shuffle(pairs)
        for e, label in pairs:
            regions.append({"bbox": _union([e["bbox"]], 0), "label": label, "why": _WHY[kind]})
        return regions, kind
    kind = "number" if any(lab.split()[-1:] == ["number"] for lab in labels) else ("most" if qtype == "most" else "default")
    for label in dict.fromkeys(labels):
        boxes = [e["bbox"] for e, lab in zip(evidence, labels) if lab == label]
        plural = label if label.endswith("s") else label + "s"
        why = _WHY[kind].format(label=plural) if kind != "default" else _WHY["default"]
        regions.append({"bbox": _union(boxes, pad), "label": plural, "why": why})
    return regions[:max_regions], kind


def has_scene_metadata(item: Item) -> bool:
    """Does the item carry what the oracle writes hints from (``meta.evidence`` and ``meta.method``)?"""
    meta = item.meta or {}
    return isinstance(meta.get("evidence"), list) and isinstance(meta.get("method"), list) and bool(meta["method"])


def oracle_hint_body(
    item: Item, pad: int = 40, max_regions: int = 4, config: AuditConfig | None = None,
    facts: ItemFacts | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({"regions", "steps", "traps"}, notes)`` for a synthetic item; HintError without scene metadata."""
    meta = item.meta or {}
    method = meta.get("method")
    if not has_scene_metadata(item):
        raise HintError(item.id, "meta", "the oracle generator needs scene metadata (meta.evidence and "
                        "meta.method, as synthetic items have)")
    config = config or AuditConfig()
    facts = facts or item_facts(item, config)
    regions, kind = _regions(item, pad, max_regions)
    dropped: list[str] = []
    for r in regions:
        if audit_text(f"{r['label']}: {r['why']}", item, config, facts):
            dropped.append(f"region label {r['label']!r}")
            r["label"], r["why"] = "area to inspect", _WHY["default"]
    steps = []
    for s in method:
        if isinstance(s, str) and s.strip():
            if audit_text(s, item, config, facts):
                dropped.append(s)
            else:
                steps.append(s.strip())
    traps = []
    for t in meta.get("traps") or []:
        if isinstance(t, str) and t.strip():
            if audit_text(t, item, config, facts):
                dropped.append(t)
            else:
                traps.append(t.strip())
    if not steps:
        steps = list(_GENERIC_STEPS.get(kind, _GENERIC_STEPS["default"]))
    notes = {"dropped": dropped} if dropped else {}
    return {"regions": regions, "steps": steps[:8], "traps": traps[:6]}, notes


class OracleGenerator(HintGenerator):
    """Hints from scene metadata (no model). ``kind="unstructured"`` writes the same content as a paragraph."""

    name = "oracle"
    model = "scene-metadata"
    prompt_version = ORACLE_VERSION

    def __init__(self, pad: int = 40, max_regions: int = 4, kind: str = STRUCTURED):
        if kind not in (STRUCTURED, UNSTRUCTURED):
            raise ValueError(f"kind must be {STRUCTURED!r} or {UNSTRUCTURED!r}")
        self.pad = int(pad)
        self.max_regions = int(max_regions)
        self.kind = kind

    def cache_params(self) -> dict[str, Any]:
        return {"pad": self.pad, "max_regions": self.max_regions}

    def check_items(self, items: Sequence[Item]) -> None:
        """The oracle writes hints from synthetic scene metadata only: a dataset without it stops here,
        before any generation, rather than at the audit with every hint failed."""
        missing = [it for it in items if not has_scene_metadata(it)]
        if missing:
            first = missing[0]
            raise HintSourceError(
                f"the 'oracle' hint generator writes hints from synthetic scene metadata (meta.evidence and "
                f"meta.method, which only ptdpo's synthetic items have); {len(missing)} of the {len(items)} "
                f"items have none (e.g. item {first.id!r} from source {first.source!r}). It cannot write hints "
                f"for your own images. {WAYS_OUT}")

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[RawOutput]:
        for req in requests:
            try:
                body, notes = oracle_hint_body(req.item, self.pad, self.max_regions)
            except HintError as e:
                yield RawOutput(req.item.id, error=str(e))
                continue
            if self.kind == UNSTRUCTURED:
                hint = Hint.from_dict({**body, "generator": self.info()}, req.item.id)
                text = json.dumps({"hint": to_unstructured(hint).text})
            else:
                text = json.dumps(body)
            yield RawOutput(req.item.id, text=text, notes=notes)
