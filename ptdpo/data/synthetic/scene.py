"""Shared vocabulary of the synthetic scenes: the palette, object descriptors and how they are sampled,
and the answer-free wording (object labels, near-miss traps) every template uses.

A descriptor is a partial object, e.g. ``{"color": "red", "shape": "circle"}``; an object matches it when
it has every one of its attribute values. In-distribution sampling never makes a :data:`HELD_OUT`
colour/shape pair; out-of-distribution sampling prefers them for descriptors that name both.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from ptdpo.answers.words import NUMBER_WORDS, QUANTITY_WORDS

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (225, 195, 10),
    "green": (30, 150, 60),
    "blue": (35, 85, 230),
    "purple": (140, 55, 190),
}
COLOR_NAMES = tuple(COLORS)
NUMBER_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "red": COLORS["red"],
    "blue": COLORS["blue"],
    "green": COLORS["green"],
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = ("small", "large")
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("green", "square"), ("yellow", "star"), ("purple", "diamond")}
)
CONFUSABLE = {"red": "orange", "orange": "red", "yellow": "orange", "blue": "purple", "purple": "blue"}

_NUMBER_RE = re.compile(
    r"\d|\b(" + "|".join([*NUMBER_WORDS, "hundred", *QUANTITY_WORDS]) + r")\b", re.IGNORECASE
)

BASE_OBJECTS = {1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
_OOD_EXTRA_OBJECTS = 4
MARGIN = 80  # minimum separation of compared positions, in 0..1000 units


class Retry(Exception):
    """A sampled scene does not meet its constraints; draw another one."""


# ------------------------------------------------------------------------------------------ helpers


def pluralize(word: str) -> str:
    return word + "s"


def noun(desc: dict[str, Any], plural: bool = False, default: str = "shape") -> str:
    """'large red circle(s)' for a descriptor such as {'size': 'large', 'color': 'red', 'shape': 'circle'}."""
    head = desc.get("shape") or default
    head = pluralize(head) if plural else head
    return " ".join(p for p in (desc.get("size"), desc.get("color"), head) if p)


def matches(obj: dict[str, Any], desc: dict[str, Any]) -> bool:
    """Whether an object has every attribute value of the descriptor."""
    return all(obj.get(k) == v for k, v in desc.items())


def disjoint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(k in b and b[k] != v for k, v in a.items())


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def mentions_number(text: str) -> bool:
    """Whether a text holds a digit or a number word (what ``method`` and ``traps`` must never do)."""
    return bool(_NUMBER_RE.search(text))


def mentions_term(text: str, term: str) -> bool:
    return bool(re.search(r"\b" + re.escape(term) + r"\b", text, re.IGNORECASE))


def answer_free(text: str, forbidden: Sequence[str]) -> bool:
    return not mentions_number(text) and not any(mentions_term(text, t) for t in forbidden)


def fmt_box(b: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in b) + "]"


def center(b: Sequence[int]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


# ------------------------------------------------------------------------------- attribute sampling


def allowed(obj: dict[str, Any], ood: bool) -> bool:
    return ood or (obj.get("color"), obj.get("shape")) not in HELD_OUT


def fill(rng: random.Random, desc: dict[str, Any], ood: bool) -> dict[str, Any]:
    """A random shape object with the descriptor's attributes."""
    for _ in range(200):
        o = {
            "shape": desc.get("shape") or rng.choice(SHAPES),
            "color": desc.get("color") or rng.choice(COLOR_NAMES),
            "size": desc.get("size") or rng.choice(SIZES),
        }
        if allowed(o, ood):
            return o
    raise Retry("no allowed object for descriptor")


def random_desc(rng: random.Random, keys: Sequence[str], ood: bool, disjoint_from: Sequence[dict] = ()) -> dict:
    """A random descriptor over ``keys``; OOD prefers held-out colour/shape pairs."""
    for _ in range(500):
        d: dict[str, Any] = {}
        if "size" in keys:
            d["size"] = rng.choice(SIZES)
        if "color" in keys:
            d["color"] = rng.choice(COLOR_NAMES)
        if "shape" in keys:
            d["shape"] = rng.choice(SHAPES)
        if "color" in d and "shape" in d:
            held = (d["color"], d["shape"]) in HELD_OUT
            if not ood and held:
                continue
            if ood and not held and rng.random() < 0.7:
                continue
        if all(disjoint(d, o) for o in disjoint_from):
            return d
    raise Retry("no descriptor")


def distractor(
    rng: random.Random, avoid: Sequence[dict], ood: bool, near: dict | None = None, p_near: float = 0.5
) -> dict[str, Any]:
    """A random object that matches none of ``avoid``; with probability ``p_near`` a near miss of ``near``."""
    for _ in range(300):
        if near and rng.random() < p_near:
            o = fill(rng, near, ood)
            key = rng.choice(sorted(near))
            if key == "color" and near["color"] in CONFUSABLE and rng.random() < 0.5:
                o["color"] = CONFUSABLE[near["color"]]
            else:
                pool = {"color": COLOR_NAMES, "shape": SHAPES, "size": SIZES}[key]
                o[key] = rng.choice([v for v in pool if v != near[key]])
        else:
            o = fill(rng, {}, ood)
        if allowed(o, ood) and not any(matches(o, a) for a in avoid):
            return o
    raise Retry("no distractor")


def n_objects(rng: random.Random, d: int, ood: bool) -> int:
    return BASE_OBJECTS[d] + rng.randint(0, 1) + (_OOD_EXTRA_OBJECTS if ood else 0)


def count_range(ood: bool) -> tuple[int, int]:
    return (2, 9) if ood else (1, 5)



# ------------------------------------------------------------------------------- labels and traps


def object_label(obj: dict[str, Any], keys: Sequence[str] = ("color", "shape")) -> str:
    if obj["shape"] == "number":
        return " ".join(p for p in (obj["color"] if "color" in keys else None, "number") if p)
    words = [str(obj[k]) for k in ("size", "color", "shape") if k in keys]
    return " ".join(words + ([] if "shape" in keys else ["object"]))


def mixed_sizes_trap(targets: list[dict], desc: dict) -> list[str]:
    if "size" not in desc and len({o["size"] for o in targets}) > 1:
        return ["Small and large ones count alike."]
    return []


def near_miss_traps(desc: dict, placed: list[dict], verb: str = "count") -> list[str]:
    """Warnings about objects that differ from the descriptor in one attribute and are in the image."""
    out = []
    others = [o for o in placed if o["shape"] != "number" and not matches(o, desc)]
    seen = set()
    for o in others:
        diff = [k for k in desc if o[k] != desc[k]]
        if len(diff) != 1:
            continue
        k = diff[0]
        if k == "color" and CONFUSABLE.get(desc["color"]) == o["color"]:
            t = f"{cap(o['color'])} can look like {desc['color']}; do not {verb} {o['color']} ones."
        else:
            shown = {kk: o[kk] for kk in desc}
            t = f"Do not {verb} {noun(shown, plural=True)}."
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out

