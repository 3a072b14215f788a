"""Composes tests/fixtures/hints/labelled.jsonl, the hand-labelled hints the spoiler audit is measured on.

The hand-written content is data next to the fixture:

- ``labelled_items.json``: items (counting, geometry, charts, multiple choice with letter and text answers,
  free-form numbers with units, fractions/decimals/percentages, yes/no, colour/name answers), each with
  clean region/step/trap sentences, ``confounders`` (clean sentences a naive audit trips on: other numbers,
  numbers from the question, box coordinates in the text, "Step 3:" numbering, the article "A", exponents,
  ordinals, "the left half", neutral mentions of yes/no or of all options) and ``leaks``: ONE hand-written
  leak each (answer digits, number words, other forms of the value, option letters and option text,
  decisive intermediate values, concluding phrases, full solutions, answer names, yes/no verdicts);
- ``labelled_freestyle.json``: whole hints in an LLM-like voice, labelled as written;
- ``labelled_generic_clean.json``: item-independent clean sentences.

This script only composes: per item three clean variants, and per leak one variant with the leak inserted
into a random field (often appended to a clean sentence, so the rest of the hint is indistinguishable from
a clean one), then the free-style hints, then extra clean variants until clean and leak are balanced.
Deterministic (fixed seed): ``python scripts/make_labelled_hints.py`` rewrites the committed jsonl byte for
byte unless the data files changed. The test reads the jsonl, not this script.

Each record: ``{"id", "label": "leak"|"clean", "leak_type", "item": {...}, "hint": {...}}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hints"
OUT = FIXTURES / "labelled.jsonl"
SEED = 20261127
WHERE = ("step", "trap", "why", "label", "append", "solution", "regions")


class SourceError(ValueError):
    """A data file of the labelled set is malformed."""


def _read(path: Path, key: str) -> list:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: cannot read it: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise SourceError(f"{path}: needs a top-level {key!r} list")
    return doc[key]


def _region(r: dict[str, Any]) -> dict[str, Any]:
    # the fixture's key order (bbox, label, why), whatever order the data file uses
    return {"bbox": r["bbox"], "label": r["label"], "why": r["why"]}


def load_sources(folder: Path = FIXTURES) -> tuple[list[dict], list[dict], list[str]]:
    """``(items, freestyle hints, generic clean sentences)`` from the data files in ``folder``."""
    items = _read(folder / "labelled_items.json", "items")
    for i, spec in enumerate(items):
        where = f"{folder / 'labelled_items.json'}: items[{i}] ({spec.get('id')!r})"
        for key in ("id", "family", "question", "answer", "regions", "steps", "traps", "leaks"):
            if key not in spec:
                raise SourceError(f"{where}: missing {key!r}")
        for j, leak in enumerate(spec["leaks"]):
            if leak.get("where") not in WHERE:
                raise SourceError(f"{where}: leaks[{j}].where is {leak.get('where')!r}, not one of {WHERE}")
            if leak.get("type") == "full_solution" and not spec.get("full_solution"):
                raise SourceError(f"{where}: leaks[{j}] is a full_solution leak but the item has no 'full_solution'")
        spec["regions"] = [_region(r) for r in spec["regions"]]
    freestyle = _read(folder / "labelled_freestyle.json", "hints")
    known = {spec["id"] for spec in items}
    for i, h in enumerate(freestyle):
        if h.get("item_id") not in known:
            raise SourceError(f"{folder / 'labelled_freestyle.json'}: hints[{i}].item_id {h.get('item_id')!r} "
                              "is not an item of labelled_items.json")
        h["regions"] = [_region(r) for r in h["regions"]]
    generic = _read(folder / "labelled_generic_clean.json", "sentences")
    return items, freestyle, generic


def make_hint(item_id, regions, steps, traps, kind="structured"):
    gen = {"name": "fixture", "model": "hand-written", "prompt_version": "labelled-v1"}
    if kind == "unstructured":
        parts = []
        for r in regions:
            parts.append(f"Look at the {r['label']} around [{', '.join(map(str, r['bbox']))}]: {r['why']}.")
        parts += steps
        parts += [f"Watch out: {t[0].lower() + t[1:]}" for t in traps]
        return {
            "item_id": item_id,
            "kind": "unstructured",
            "regions": [],
            "steps": [],
            "traps": [],
            "text": " ".join(parts),
            "generator": gen,
            "raw": "",
        }
    return {
        "item_id": item_id,
        "kind": "structured",
        "regions": regions,
        "steps": steps,
        "traps": traps,
        "text": "",
        "generator": gen,
        "raw": "",
    }


def item_dict(spec):
    return {
        "id": spec["id"],
        "images": [],
        "question": spec["question"],
        "answer": spec["answer"],
        "choices": spec.get("choices"),
        "solution": spec.get("solution"),
        "source": "fixture",
        "split": "test",
        "meta": {"family": spec["family"]},
    }


def numbered(steps, rng):
    style = rng.choice(["step", "dot", "paren"])
    fmt = {"step": "Step {i}: {s}", "dot": "{i}. {s}", "paren": "({i}) {s}"}[style]
    return [fmt.format(i=i, s=s) for i, s in enumerate(steps, 1)]


def clean_variant(spec, rng, variant, generic_clean):
    regions = [dict(r) for r in spec["regions"]]
    steps = list(spec["steps"])
    traps = list(spec["traps"])
    rng.shuffle(traps)
    traps = traps[: rng.randint(1, len(traps))]
    conf = list(spec.get("confounders", []))
    rng.shuffle(conf)
    if variant == 0:  # confounders as extra steps / traps
        for c in conf[:2]:
            (steps if rng.random() < 0.6 else traps).insert(rng.randint(0, len(steps)), c)
    elif variant == 1:  # numbered steps + a generic sentence, fewer regions
        if conf:
            steps.insert(rng.randint(0, len(steps)), conf[0])
        steps = numbered(steps, rng)
        traps.append(rng.choice(generic_clean))
        if len(regions) > 1 and rng.random() < 0.5:
            regions = regions[:1]
    else:  # coordinates in text, maybe unstructured, maybe no regions
        r0 = regions[0]
        steps.insert(0, f"Start with the area at [{', '.join(map(str, r0['bbox']))}].")
        if len(conf) > 1:
            traps.append(conf[1])
        if rng.random() < 0.25:
            regions = []
    return regions, steps, traps


def insert_leak(spec, rng, leak_type, sentence, where, regions, steps, traps):
    regions = [dict(r) for r in regions]
    steps, traps = list(steps), list(traps)
    if leak_type == "region_count":
        n = int(spec["answer"])
        base = regions[0]["bbox"]
        regions = [
            {
                "bbox": [base[0] + 20 * i, base[1] + 30 * i, base[0] + 20 * i + 60, base[1] + 30 * i + 60],
                "label": "red circle",
                "why": "one of the targets",
            }
            for i in range(n)
        ]
        return regions, steps, traps
    if leak_type == "full_solution":
        return regions, list(spec["full_solution"]), traps
    if where == "append":
        i = rng.randrange(len(steps))
        s = steps[i].rstrip(".")
        joiner = rng.choice([" — ", "; ", ", ", " ("])
        steps[i] = s + joiner + sentence + (")" if joiner == " (" else ".")
    elif where == "step":
        steps.insert(rng.randint(0, len(steps)), sentence)
    elif where == "trap":
        traps.insert(rng.randint(0, len(traps)), sentence)
    elif where == "why" and regions:
        j = rng.randrange(len(regions))
        regions[j]["why"] = sentence
    elif where == "label" and regions:
        j = rng.randrange(len(regions))
        regions[j]["label"] = sentence
    else:
        steps.append(sentence)
    return regions, steps, traps


def compose(items: list[dict], freestyle: list[dict], generic_clean: list[str], seed: int = SEED) -> list[dict]:
    """The labelled records, in fixture order, without their ids."""
    rng = random.Random(seed)
    records = []
    for spec in items:
        item = item_dict(spec)
        for v in range(3):
            regions, steps, traps = clean_variant(spec, rng, v, generic_clean)
            kind = "unstructured" if (v == 2 and rng.random() < 0.4) else "structured"
            records.append(
                {
                    "label": "clean",
                    "leak_type": None,
                    "item": item,
                    "hint": make_hint(spec["id"], regions, steps, traps, kind),
                }
            )
        for leak in spec["leaks"]:
            leak_type, sentence, where = leak["type"], leak.get("sentence"), leak["where"]
            v = rng.randrange(3)
            regions, steps, traps = clean_variant(spec, rng, v, generic_clean)
            if not regions and where in ("why", "label", "regions"):
                regions = [dict(r) for r in spec["regions"]]
            regions, steps, traps = insert_leak(spec, rng, leak_type, sentence, where, regions, steps, traps)
            kind = (
                "unstructured"
                if (leak_type not in ("region_count",) and rng.random() < 0.15)
                else "structured"
            )
            records.append(
                {
                    "label": "leak",
                    "leak_type": leak_type,
                    "item": item,
                    "hint": make_hint(spec["id"], regions, steps, traps, kind),
                }
            )
    by_id = {spec["id"]: spec for spec in items}
    for h in freestyle:
        records.append(
            {
                "label": h["label"],
                "leak_type": h["leak_type"],
                "item": item_dict(by_id[h["item_id"]]),
                "hint": make_hint(h["item_id"], h["regions"], h["steps"], h["traps"]),
            }
        )
    # balance clean vs leak: add a 4th clean variant for items until balanced
    n_leak = sum(r["label"] == "leak" for r in records)
    n_clean = sum(r["label"] == "clean" for r in records)
    extra = iter(rng.sample(items, len(items)))
    while n_clean < n_leak:
        spec = next(extra)
        regions, steps, traps = clean_variant(spec, rng, rng.randrange(3), generic_clean)
        records.append(
            {
                "label": "clean",
                "leak_type": None,
                "item": item_dict(spec),
                "hint": make_hint(spec["id"], regions, steps, traps),
            }
        )
        n_clean += 1
    return records


def to_jsonl(records: list[dict]) -> str:
    """The fixture text: one record per line, ids ``L0000``... in order."""
    return "".join(json.dumps({"id": f"L{i:04d}", **r}, ensure_ascii=False) + "\n" for i, r in enumerate(records))


def main() -> None:
    records = compose(*load_sources())
    OUT.write_text(to_jsonl(records), encoding="utf-8")
    n_leak = sum(r["label"] == "leak" for r in records)
    print(f"wrote {len(records)} records ({n_leak} leak, {len(records) - n_leak} clean) to {OUT}")


if __name__ == "__main__":
    main()
