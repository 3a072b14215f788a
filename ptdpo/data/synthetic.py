"""Procedurally drawn visual-reasoning scenes with exact answers, evidence boxes and answer-free hints.

Five task families of graded difficulty (1..5: more objects, more near-miss distractors, more
attributes to combine):

- ``count_attr``   "How many red circles are there?"                          -> integer
- ``spatial``      "Is the red circle above the green triangle?"              -> yes / no
                   "What colour is the leftmost circle?"                       -> colour / shape name
- ``compare``      "Are there more circles than squares?"                      -> yes / no
                   "Which colour appears most often?" (half as multiple choice) -> colour / shape / letter
- ``arith_count``  "How many circles and triangles are there in total?"        -> integer
                   "How many more red shapes than blue shapes are there?"
- ``arith_digits`` numbers drawn as text: "What is the sum of the numbers?",
                   "What is the largest number minus the smallest number?"   -> integer

Every item's ``meta`` holds (see :func:`generate_synthetic`): ``family``, ``template``,
``difficulty``, ``ood``, ``seed``, ``index``, ``width``, ``height``, ``objects`` (shape, color, size,
bbox in 0..1000 normalised coordinates, ``value`` for numbers), ``query`` (the question in structured
form, from which the answer follows with ``objects`` alone), ``evidence`` (boxes and answer-free labels
of the objects that matter), ``reasoning`` (worked steps with values), ``method`` and ``traps``
(answer-free: never a digit, a number word or the answer; built for oracle hints).

In-distribution (``ood=False``) versus out-of-distribution (``ood=True``) at the same difficulty:

- OOD scenes hold 4 more objects (objects shrink when a scene gets crowded);
- the colour/shape pairs in :data:`HELD_OUT` never appear in-distribution; OOD scenes use them freely
  and prefer them for questions that name a colour and a shape;
- counts asked about are 1..5 in-distribution and 2..9 OOD; drawn numbers are 1..19 in-distribution
  (1..9 at difficulty 1) and 20..99 OOD.

Generation is deterministic: item ``index`` of ``(seed, split, ood)`` depends on nothing else, so a
shorter run is a prefix of a longer one.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from ptdpo.answers.words import CHOICE_LETTERS, NUMBER_WORDS, QUANTITY_WORDS
from ptdpo.data.schema import Item

GENERATOR_VERSION = "synthetic-v1"

FAMILIES = ("count_attr", "spatial", "compare", "arith_count", "arith_digits")

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
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = ("small", "large")
SIZE_FRACTION = {"small": 0.11, "large": 0.19}  # nominal side as a fraction of the image side
TEXT_FRACTION = 0.2  # font size of drawn numbers as a fraction of the image side
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("green", "square"), ("yellow", "star"), ("purple", "diamond")}
)
CONFUSABLE = {"red": "orange", "orange": "red", "yellow": "orange", "blue": "purple", "purple": "blue"}

_NUMBER_RE = re.compile(
    r"\d|\b(" + "|".join([*NUMBER_WORDS, "hundred", *QUANTITY_WORDS]) + r")\b", re.IGNORECASE
)

_BASE_OBJECTS = {1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
_OOD_EXTRA_OBJECTS = 4
_MARGIN = 80  # minimum separation of compared positions, in 0..1000 units
_MIN_SIDE = 9
_DENSITY = 0.33


class _Retry(Exception):
    """A sampled scene does not meet its constraints; draw another one."""


# ------------------------------------------------------------------------------------------ helpers


def _plural(word: str) -> str:
    return word + "s"


def noun(desc: dict[str, Any], plural: bool = False, default: str = "shape") -> str:
    """'large red circle(s)' for a descriptor such as {'size': 'large', 'color': 'red', 'shape': 'circle'}."""
    head = desc.get("shape") or default
    head = _plural(head) if plural else head
    return " ".join(p for p in (desc.get("size"), desc.get("color"), head) if p)


def matches(obj: dict[str, Any], desc: dict[str, Any]) -> bool:
    """Whether an object has every attribute value of the descriptor."""
    return all(obj.get(k) == v for k, v in desc.items())


def _disjoint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(k in b and b[k] != v for k, v in a.items())


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def mentions_number(text: str) -> bool:
    """Whether a text holds a digit or a number word (what ``method`` and ``traps`` must never do)."""
    return bool(_NUMBER_RE.search(text))


def mentions_term(text: str, term: str) -> bool:
    return bool(re.search(r"\b" + re.escape(term) + r"\b", text, re.IGNORECASE))


def _answer_free(text: str, forbidden: Sequence[str]) -> bool:
    return not mentions_number(text) and not any(mentions_term(text, t) for t in forbidden)


def _fmt_box(b: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in b) + "]"


def _center(b: Sequence[int]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


# ------------------------------------------------------------------------------- attribute sampling


def _allowed(obj: dict[str, Any], ood: bool) -> bool:
    return ood or (obj.get("color"), obj.get("shape")) not in HELD_OUT


def _fill(rng: random.Random, desc: dict[str, Any], ood: bool) -> dict[str, Any]:
    """A random shape object with the descriptor's attributes."""
    for _ in range(200):
        o = {
            "shape": desc.get("shape") or rng.choice(SHAPES),
            "color": desc.get("color") or rng.choice(COLOR_NAMES),
            "size": desc.get("size") or rng.choice(SIZES),
        }
        if _allowed(o, ood):
            return o
    raise _Retry("no allowed object for descriptor")


def _desc(rng: random.Random, keys: Sequence[str], ood: bool, disjoint_from: Sequence[dict] = ()) -> dict:
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
        if all(_disjoint(d, o) for o in disjoint_from):
            return d
    raise _Retry("no descriptor")


def _distractor(
    rng: random.Random, avoid: Sequence[dict], ood: bool, near: dict | None = None, p_near: float = 0.5
) -> dict[str, Any]:
    """A random object that matches none of ``avoid``; with probability ``p_near`` a near miss of ``near``."""
    for _ in range(300):
        if near and rng.random() < p_near:
            o = _fill(rng, near, ood)
            key = rng.choice(sorted(near))
            if key == "color" and near["color"] in CONFUSABLE and rng.random() < 0.5:
                o["color"] = CONFUSABLE[near["color"]]
            else:
                pool = {"color": COLOR_NAMES, "shape": SHAPES, "size": SIZES}[key]
                o[key] = rng.choice([v for v in pool if v != near[key]])
        else:
            o = _fill(rng, {}, ood)
        if _allowed(o, ood) and not any(matches(o, a) for a in avoid):
            return o
    raise _Retry("no distractor")


def _n_objects(rng: random.Random, d: int, ood: bool) -> int:
    return _BASE_OBJECTS[d] + rng.randint(0, 1) + (_OOD_EXTRA_OBJECTS if ood else 0)


def _count_range(ood: bool) -> tuple[int, int]:
    return (2, 9) if ood else (1, 5)


# ------------------------------------------------------------------------------------------ drawing


def _star_points(side: int) -> list[tuple[float, float]]:
    r_out = (side - 1) / 2
    r_in = r_out * 0.5
    c = (side - 1) / 2
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((c + r * math.cos(a), c + r * math.sin(a)))
    return pts


@lru_cache(maxsize=512)
def _shape_mask(shape: str, side: int):
    """An 'L' mask (0/255) of the shape, cropped to its ink."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (side, side), 0)
    dr = ImageDraw.Draw(m)
    s = side - 1
    if shape == "circle":
        dr.ellipse([0, 0, s, s], fill=255)
    elif shape == "square":
        dr.rectangle([0, 0, s, s], fill=255)
    elif shape == "triangle":
        dr.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    elif shape == "diamond":
        dr.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif shape == "star":
        dr.polygon(_star_points(side), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.crop(m.getbbox())


@lru_cache(maxsize=64)
def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1024)
def _text_mask(text: str, px: int):
    """An 'L' mask (0/255, no anti-aliasing) of the text, cropped to its ink."""
    from PIL import Image, ImageDraw

    font = _font(px)
    w, h = px * (len(text) + 2), px * 3
    m = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(m)
    dr.fontmode = "1"
    dr.text((px // 2, px // 2), text, font=font, fill=255)
    return m.crop(m.getbbox())


def _mask_for(obj: dict[str, Any], min_side: int, scale: float):
    if obj["shape"] == "number":
        return _text_mask(str(obj["value"]), max(10, round(TEXT_FRACTION * min_side * scale)))
    side = max(_MIN_SIDE, round(SIZE_FRACTION[obj["size"]] * min_side * scale))
    return _shape_mask(obj["shape"], side)


def _layout(
    rng: random.Random,
    objs: list[dict[str, Any]],
    width: int,
    height: int,
    accept: Callable[[list[dict[str, Any]]], bool] | None = None,
    restarts: int = 80,
    tries: int = 300,
):
    """Place the objects without overlap, draw them, and return (objects with bbox, PNG bytes).

    Objects are placed largest first by rejection sampling (bounded tries per object and bounded
    restarts), then ``accept`` may reject a whole layout (spatial constraints) and a new one is drawn.
    """
    from PIL import Image

    side = min(width, height)
    margin = max(2, round(0.03 * side))
    gap = max(2, round(0.02 * side))
    masks = [_mask_for(o, side, 1.0) for o in objs]
    usable = (width - 2 * margin) * (height - 2 * margin)
    need = sum((m.width + gap) * (m.height + gap) for m in masks)
    if need > _DENSITY * usable:
        scale = math.sqrt(_DENSITY * usable / need)
        masks = [_mask_for(o, side, scale) for o in objs]
    order = sorted(range(len(objs)), key=lambda i: -masks[i].width * masks[i].height)
    for _ in range(restarts):
        pos: dict[int, tuple[int, int]] = {}
        boxes: list[tuple[int, int, int, int]] = []
        ok = True
        for i in order:
            w, h = masks[i].size
            if w > width - 2 * margin or h > height - 2 * margin:
                raise ValueError(f"image {width}x{height} too small for the objects")
            for _t in range(tries):
                x = rng.randint(margin, width - margin - w)
                y = rng.randint(margin, height - margin - h)
                if all(
                    x >= bx1 + gap or bx0 >= x + w + gap or y >= by1 + gap or by0 >= y + h + gap
                    for bx0, by0, bx1, by1 in boxes
                ):
                    pos[i] = (x, y)
                    boxes.append((x, y, x + w, y + h))
                    break
            else:
                ok = False
                break
        if not ok:
            continue
        placed = []
        for i, o in enumerate(objs):
            x, y = pos[i]
            w, h = masks[i].size
            bbox = [
                math.floor(x * 1000 / width),
                math.floor(y * 1000 / height),
                min(1000, math.ceil((x + w) * 1000 / width)),
                min(1000, math.ceil((y + h) * 1000 / height)),
            ]
            placed.append({**o, "bbox": bbox})
        if accept is not None and not accept(placed):
            continue
        img = Image.new("RGB", (width, height), BACKGROUND)
        for i, o in enumerate(objs):
            rgb = NUMBER_COLORS[o["color"]] if o["shape"] == "number" else COLORS[o["color"]]
            img.paste(rgb, pos[i], masks[i])
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        return placed, buf.getvalue()
    raise _Retry("no layout")


# ----------------------------------------------------------------------------------------- families


def _label(obj: dict[str, Any], keys: Sequence[str] = ("color", "shape")) -> str:
    if obj["shape"] == "number":
        return " ".join(p for p in (obj["color"] if "color" in keys else None, "number") if p)
    words = [str(obj[k]) for k in ("size", "color", "shape") if k in keys]
    return " ".join(words + ([] if "shape" in keys else ["object"]))


def _mixed_sizes_trap(targets: list[dict], desc: dict) -> list[str]:
    if "size" not in desc and len({o["size"] for o in targets}) > 1:
        return ["Small and large ones count alike."]
    return []


def _near_miss_traps(desc: dict, placed: list[dict], verb: str = "count") -> list[str]:
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
            t = f"{_cap(o['color'])} can look like {desc['color']}; do not {verb} {o['color']} ones."
        else:
            shown = {kk: o[kk] for kk in desc}
            t = f"Do not {verb} {noun(shown, plural=True)}."
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _fam_count_attr(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    keys = {1: ("shape",), 2: ("color",), 3: ("color", "shape"), 4: ("color", "shape"),
            5: ("size", "color", "shape")}[d]
    if d == 1 and rng.random() < 0.5:
        keys = ("color",)
    desc = _desc(rng, keys, ood)
    n = _n_objects(rng, d, ood)
    lo, hi = _count_range(ood)
    k = rng.randint(lo, min(hi, n - 1))
    objs = [_fill(rng, desc, ood) for _ in range(k)]
    p_near = 0.2 + 0.15 * d
    objs += [_distractor(rng, [desc], ood, near=desc, p_near=p_near) for _ in range(n - k)]
    rng.shuffle(objs)
    placed, png = _layout(rng, objs, W, H)
    targets = [o for o in placed if matches(o, desc)]
    pl = noun(desc, plural=True)
    label_keys = ("size", "color", "shape") if "size" in desc else ("color", "shape")
    method = []
    method.append(f"Scan the whole image for {_plural(desc['shape'])}." if "shape" in desc
                  else "Scan the whole image and look at every shape.")
    if "color" in desc:
        method.append(f"Keep only the {desc['color']} ones.")
    if "size" in desc:
        method.append(f"Keep only the {desc['size']} ones.")
    method.append("Count the matching shapes individually, without skipping any.")
    traps = _near_miss_traps(desc, placed) + _mixed_sizes_trap(targets, desc)
    boxes = ", ".join(_fmt_box(o["bbox"]) for o in targets)
    return dict(
        template="count",
        question=f"How many {pl} are there? Answer with a number.",
        answer=str(len(targets)),
        query={"type": "count", "target": desc},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": _label(o, label_keys)} for o in targets],
        reasoning=[f"{_cap(pl)} at {boxes}.", f"{len(targets)} {pl if len(targets) != 1 else noun(desc)}."],
        solution=f"The {pl} are at {boxes}. Counting them gives {len(targets)}.",
        method=method, traps=traps,
    )


def _pair_keys(d: int) -> tuple[str, ...]:
    return {1: ("shape",), 2: ("color",), 3: ("color", "shape"), 4: ("color", "shape"),
            5: ("size", "color", "shape")}[d]


def _two_groups(rng, d, ood, ka, kb, W, H, p_near=None):
    """A scene with ``ka`` objects of descriptor A, ``kb`` of a disjoint B, and distractors."""
    keys = _pair_keys(d)
    a = _desc(rng, keys, ood)
    b = _desc(rng, keys, ood, disjoint_from=[a])
    n = max(_n_objects(rng, d, ood), ka + kb + 1)
    objs = [_fill(rng, a, ood) for _ in range(ka)] + [_fill(rng, b, ood) for _ in range(kb)]
    p_near = 0.2 + 0.15 * d if p_near is None else p_near
    objs += [_distractor(rng, [a, b], ood, near=rng.choice([a, b]), p_near=p_near) for _ in range(n - ka - kb)]
    rng.shuffle(objs)
    placed, png = _layout(rng, objs, W, H)
    return a, b, placed, png


def _fam_arith_count(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    lo, hi = _count_range(ood)
    form = rng.choice(["total", "difference"])
    if form == "total":
        ka, kb = rng.randint(lo, max(lo, hi - 2)), rng.randint(lo, max(lo, hi - 2))
    else:
        ka = rng.randint(lo + 1, hi)
        kb = rng.randint(lo, ka - 1)
    a, b, placed, png = _two_groups(rng, d, ood, ka, kb, W, H)
    A = [o for o in placed if matches(o, a)]
    B = [o for o in placed if matches(o, b)]
    apl, bpl = noun(a, plural=True), noun(b, plural=True)
    if form == "total":
        q = f"How many {apl} and {bpl} are there in total? Answer with a number."
        ans = len(A) + len(B)
        last = "Add the counts."
        calc = f"{len(A)} + {len(B)} = {ans}"
    else:
        q = f"How many more {apl} than {bpl} are there? Answer with a number."
        ans = len(A) - len(B)
        last = "Subtract the second count from the first."
        calc = f"{len(A)} - {len(B)} = {ans}"
    lkeys = ("size", "color", "shape") if "size" in a else ("color", "shape")
    method = [f"Find all the {apl} and count them.", f"Find all the {bpl} and count them.", last]
    traps = (_near_miss_traps(a, [o for o in placed if not matches(o, b)])
             + _near_miss_traps(b, [o for o in placed if not matches(o, a)]))
    traps += ["Count each group separately before combining the counts."]
    return dict(
        template=form,
        question=q, answer=str(ans),
        query={"type": "sum" if form == "total" else "difference", "a": a, "b": b},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": _label(o, lkeys)} for o in A + B],
        reasoning=[f"{_cap(apl)}: {len(A)} ({', '.join(_fmt_box(o['bbox']) for o in A)}).",
                   f"{_cap(bpl)}: {len(B)} ({', '.join(_fmt_box(o['bbox']) for o in B) or 'none'}).",
                   calc],
        solution=f"There are {len(A)} {apl} and {len(B)} {bpl}, so the answer is {calc}.",
        method=method, traps=traps,
    )


def _fam_compare(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    form = rng.choice(["more_than", "most"])
    lo, hi = _count_range(ood)
    if form == "more_than":
        margin = 2 if d == 1 else 1
        small = rng.randint(lo, max(lo, hi - margin))
        big = rng.randint(small + margin, max(hi, small + margin))
        yes = rng.random() < 0.5
        ka, kb = (big, small) if yes else (small, big)
        a, b, placed, png = _two_groups(rng, d, ood, ka, kb, W, H)
        A = [o for o in placed if matches(o, a)]
        B = [o for o in placed if matches(o, b)]
        apl, bpl = noun(a, plural=True), noun(b, plural=True)
        ans = "yes" if len(A) > len(B) else "no"
        lkeys = ("size", "color", "shape") if "size" in a else ("color", "shape")
        traps = (_near_miss_traps(a, [o for o in placed if not matches(o, b)])
                 + _near_miss_traps(b, [o for o in placed if not matches(o, a)]))
        traps += ["Larger shapes are not worth more; compare how many there are."]
        return dict(
            template="more_than",
            question=f"Are there more {apl} than {bpl}? Answer yes or no.", answer=ans,
            query={"type": "more_than", "a": a, "b": b},
            placed=placed, png=png,
            evidence=[{"bbox": o["bbox"], "label": _label(o, lkeys)} for o in A + B],
            reasoning=[f"{_cap(apl)}: {len(A)}.", f"{_cap(bpl)}: {len(B)}.",
                       f"{len(A)} {'>' if len(A) > len(B) else '<'} {len(B)}, so {ans}."],
            solution=f"There are {len(A)} {apl} and {len(B)} {bpl}, so the answer is {ans}.",
            method=[f"Count the {apl}.", f"Count the {bpl}.", "Compare the counts."],
            traps=traps,
        )
    # most: which colour (or shape) appears most often, optionally among one shape (or colour)
    attr = rng.choice(["color", "shape"])
    other = "shape" if attr == "color" else "color"
    among = _desc(rng, (other,), ood) if d >= 3 else {}
    pool = list(COLOR_NAMES if attr == "color" else SHAPES)
    rng.shuffle(pool)
    n_values = 2 + (d >= 3)
    values = []
    for v in pool:
        if _allowed({**among, attr: v}, ood):
            values.append(v)
        if len(values) == n_values:
            break
    if len(values) < 2:
        raise _Retry("too few values")
    margin = 2 if d == 1 else 1
    budget = _n_objects(rng, d, ood)
    top = rng.randint(lo + margin, max(lo + margin, min(hi, budget // 2 + 1)))
    counts = {values[0]: top}
    for v in values[1:]:
        counts[v] = rng.randint(1, top - margin)
    objs = []
    for v, c in counts.items():
        objs += [_fill(rng, {**among, attr: v}, ood) for _ in range(c)]
    n_extra = max(1, budget - len(objs)) if among else 0
    if among:
        objs += [_distractor(rng, [among], ood) for _ in range(n_extra)]
    rng.shuffle(objs)
    placed, png = _layout(rng, objs, W, H)
    cand = [o for o in placed if matches(o, among)]
    cnt = Counter(o[attr] for o in cand)
    ranked = cnt.most_common()
    winner = ranked[0][0]
    word = "colour" if attr == "color" else "shape"
    scope = f" among the {noun(among, plural=True, default='object')}" if among else ""
    choices = None
    answer = winner
    if rng.random() < 0.5:
        opts = [v for v in values if v != winner]
        extra = [v for v in (COLOR_NAMES if attr == "color" else SHAPES) if v not in values]
        rng.shuffle(extra)
        opts = (opts + extra)[: rng.randint(2, 3)] + [winner]
        rng.shuffle(opts)
        choices = opts
        answer = CHOICE_LETTERS[opts.index(winner)]
        q = f"Which {word} appears most often{scope}?"
    else:
        q = f"Which {word} appears most often{scope}? Answer with a {word} name."
    method = ([f"Look only at the {noun(among, plural=True, default='object')}."] if among else [])
    method += [f"Group them by {word}.", f"Count each {word} separately.", "Pick the group with the largest count."]
    traps = []
    if among:
        outside = Counter(o[attr] for o in placed if not matches(o, among))
        if outside:
            traps.append(f"Only the {noun(among, plural=True, default='object')} count; ignore everything else.")
    if attr == "color":
        traps.append("Similar colours are still different colours; keep them apart.")
    traps.append("Size does not matter here; small and large shapes count the same.")
    label_keys = (other,)
    return dict(
        template=f"most_{attr}",
        question=q, answer=answer, choices=choices,
        query={"type": "most", "attribute": attr, "among": among},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": _label(o, label_keys)} for o in cand],
        reasoning=[", ".join(f"{v}: {c}" for v, c in ranked) + ".", f"Most often: {winner}."],
        solution=f"Counts{scope}: " + ", ".join(f"{v} {c}" for v, c in ranked)
        + f". The most frequent {word} is {winner}" + (f" (option {answer})." if choices else "."),
        method=method, traps=traps,
    )


_DIRS = {
    "left": ("leftmost", 0, -1, "horizontal", "furthest to the left"),
    "right": ("rightmost", 0, 1, "horizontal", "furthest to the right"),
    "top": ("topmost", 1, -1, "vertical", "highest up"),
    "bottom": ("bottommost", 1, 1, "vertical", "lowest down"),
}
_RELS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def _fam_spatial(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    form = "relation" if d in (2, 4) else "extreme"
    n = _n_objects(rng, d, ood)
    if form == "relation":
        a = _desc(rng, ("color", "shape"), ood)
        b = _desc(rng, ("color", "shape"), ood, disjoint_from=[a])
        rel = rng.choice(sorted(_RELS))
        axis, sign = _RELS[rel]
        yes = rng.random() < 0.5
        objs = [_fill(rng, a, ood), _fill(rng, b, ood)]
        p_near = 0.3 if d == 2 else 0.8
        objs += [_distractor(rng, [a, b], ood, near=rng.choice([a, b]), p_near=p_near) for _ in range(n - 2)]
        rng.shuffle(objs)

        def accept(placed):
            (oa,) = [o for o in placed if matches(o, a)]
            (ob,) = [o for o in placed if matches(o, b)]
            delta = _center(oa["bbox"])[axis] - _center(ob["bbox"])[axis]
            return abs(delta) >= _MARGIN and ((delta * sign > 0) == yes)

        placed, png = _layout(rng, objs, W, H, accept=accept)
        (oa,) = [o for o in placed if matches(o, a)]
        (ob,) = [o for o in placed if matches(o, b)]
        ca, cb = _center(oa["bbox"])[axis], _center(ob["bbox"])[axis]
        holds = (ca - cb) * sign > 0
        ans = "yes" if holds else "no"
        an, bn = noun(a), noun(b)
        coord = "x" if axis == 0 else "y"
        axis_word = "horizontal" if axis == 0 else "vertical"
        traps = []
        for ref in (a, b):
            for o in placed:
                if not matches(o, a) and not matches(o, b) and sum(o[k] != ref[k] for k in ref) == 1:
                    traps.append(f"Do not confuse a {noun(o)} with the {noun(ref)}.")
        traps += ["Judge by the centres of the shapes, not by their edges."]
        return dict(
            template="relation",
            question=f"Is the {an} {_REL_TEXT[rel]} the {bn}? Answer yes or no.", answer=ans,
            query={"type": "relation", "a": a, "b": b, "relation": rel},
            placed=placed, png=png,
            evidence=[{"bbox": oa["bbox"], "label": an}, {"bbox": ob["bbox"], "label": bn}],
            reasoning=[f"The {an} is at {_fmt_box(oa['bbox'])} (centre {coord} = {ca:g}).",
                       f"The {bn} is at {_fmt_box(ob['bbox'])} (centre {coord} = {cb:g}).",
                       f"So the {an} is {'' if holds else 'not '}{_REL_TEXT[rel]} the {bn}: {ans}."],
            solution=f"The {an} has centre {coord} = {ca:g} and the {bn} has centre {coord} = {cb:g}, "
                     f"so the answer is {ans}.",
            method=[f"Find the {an}.", f"Find the {bn}.", f"Compare the {axis_word} positions of their centres."],
            traps=traps,
        )
    # extreme: the colour (or shape) of the leftmost/rightmost/topmost/bottommost (filtered) object
    direction = rng.choice(sorted(_DIRS))
    word, axis, sign, axis_word, phrase = _DIRS[direction]
    attr = rng.choice(["color", "shape"])
    if d == 1:
        filt: dict = {}
    elif d == 3:
        filt = _desc(rng, ("shape",) if attr == "color" else ("color",), ood)
    else:
        filt = _desc(rng, ("size", "shape") if attr == "color" else ("size", "color"), ood)
    n_cand = min(n, rng.randint(2, 4)) if filt else n
    pool = list(COLOR_NAMES if attr == "color" else SHAPES)
    objs = []
    for _ in range(n_cand):
        o = _fill(rng, filt, ood)
        objs.append(o)
    if len({o[attr] for o in objs}) < 2:  # make the asked attribute vary among the candidates
        objs[0][attr] = rng.choice([v for v in pool if v != objs[1][attr]])
        if not _allowed(objs[0], ood):
            raise _Retry("held-out")
    if filt:
        objs += [_distractor(rng, [filt], ood, near=filt, p_near=0.6) for _ in range(n - n_cand)]
    rng.shuffle(objs)

    def key(o):
        return sign * _center(o["bbox"])[axis]

    def accept(placed):
        cand = sorted((o for o in placed if matches(o, filt)), key=key, reverse=True)
        if key(cand[0]) - key(cand[1]) < _MARGIN:
            return False
        if d >= 4:  # a non-candidate lies further in that direction: the trap
            return any(key(o) > key(cand[0]) for o in placed if not matches(o, filt))
        return True

    placed, png = _layout(rng, objs, W, H, accept=accept)
    cand = sorted((o for o in placed if matches(o, filt)), key=key, reverse=True)
    best = cand[0]
    ans = best[attr]
    fnoun = noun(filt, default="shape" if attr == "color" else "object")
    fpl = noun(filt, plural=True, default="shape" if attr == "color" else "object")
    wq = "colour" if attr == "color" else "shape"
    coord = "x" if axis == 0 else "y"
    label_keys = ("size", "shape") if attr == "color" else ("size", "color")
    traps = []
    if filt and any(key(o) > key(best) for o in placed if not matches(o, filt)):
        traps.append(f"Some objects that are not {fpl} lie even further that way; ignore them.")
    traps.append("Judge by the centres of the shapes, not by their edges.")
    return dict(
        template=f"extreme_{attr}",
        question=f"What {wq} is the {word} {fnoun}? Answer with a {wq} name.", answer=ans,
        query={"type": "extreme", "direction": direction, "among": filt, "attribute": attr},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": _label(o, [k for k in label_keys if k in filt] or [
            "shape" if attr == "color" else "color"])} for o in cand],
        reasoning=[f"{_cap(fpl)} by centre {coord}: " + ", ".join(
            f"{o[attr]} at {_center(o['bbox'])[axis]:g}" for o in cand) + ".",
            f"The {word} is the {ans} one."],
        solution=f"Among the {fpl}, the one {phrase} is at {_fmt_box(best['bbox'])}; its {wq} is {ans}.",
        method=[f"Find every {fnoun} in the image.", f"Compare their {axis_word} positions.",
                f"Take the {fnoun} {phrase} and name its {wq}."],
        traps=traps,
    )


def _fam_arith_digits(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    if ood:
        vlo, vhi = 20, 99
    else:
        vlo, vhi = (1, 9) if d == 1 else (1, 19)
    n_num = {1: 2, 2: 2, 3: 3, 4: 4, 5: rng.randint(4, 5)}[d] + (1 if ood else 0)
    n_shapes = (3 if d == 5 else 0) + (2 if ood else 0)
    values = rng.sample(range(vlo, vhi + 1), n_num)
    op = "sum" if d == 1 else rng.choice(["sum", "range"])
    filt: dict = {"shape": "number"}
    if d >= 4:
        c1, c2 = rng.sample(sorted(NUMBER_COLORS), 2)
        k1 = rng.randint(2, n_num - 1)
        colors = [c1] * k1 + [c2] * (n_num - k1)
        filt["color"] = c1
    else:
        colors = ["black"] * n_num
    objs = [{"shape": "number", "color": c, "size": None, "value": v} for c, v in zip(colors, values)]
    objs += [_fill(rng, {}, ood) for _ in range(n_shapes)]
    rng.shuffle(objs)
    placed, png = _layout(rng, objs, W, H)
    sel = [o for o in placed if matches(o, filt)]
    vals = [o["value"] for o in sel]
    what = f"{filt['color']} numbers" if "color" in filt else "numbers"
    if op == "sum":
        ans = sum(vals)
        calc = " + ".join(map(str, vals)) + f" = {ans}"
        if "color" in filt:
            q = f"What is the sum of the {what} in the image?"
        elif n_num == 2:
            q = "What is the sum of the two numbers in the image?"
        else:
            q = "What is the sum of all the numbers in the image?"
        last = "Add them up."
    else:
        ans = max(vals) - min(vals)
        calc = f"{max(vals)} - {min(vals)} = {ans}"
        if "color" in filt:
            c = filt["color"]
            q = f"What is the largest {c} number minus the smallest {c} number?"
        elif n_num == 2:
            q = "What is the larger number minus the smaller number?"
        else:
            q = "What is the largest number minus the smallest number?"
        last = "Subtract the smallest from the largest."
    method = [f"Find every {what[:-1]} written in the image.", "Read each number in full."]
    if op == "range":
        method.append("Find the largest and the smallest of them.")
    method.append(last)
    traps = []
    if "color" in filt:
        traps.append(f"Only {what} count; ignore numbers of other colours.")
    if n_shapes:
        traps.append("The shapes are not numbers; ignore them.")
    if ood or vhi >= 10:
        traps.append("Numbers with several digits must be read as whole numbers, not digit by digit sums.")
    return dict(
        template=op,
        question=q + " Answer with a number.", answer=str(ans),
        query={"type": op, "among": filt},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": _label(o, ("color",) if "color" in filt else ())} for o in sel],
        reasoning=["Numbers: " + ", ".join(f"{o['value']} at {_fmt_box(o['bbox'])}" for o in sel) + ".", calc],
        solution=f"The {what} are " + ", ".join(str(v) for v in vals) + f"; {calc}.",
        method=method, traps=traps,
    )


_FAMILY_FNS = {
    "count_attr": _fam_count_attr,
    "spatial": _fam_spatial,
    "compare": _fam_compare,
    "arith_count": _fam_arith_count,
    "arith_digits": _fam_arith_digits,
}


# ------------------------------------------------------------------------------------------ public


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        w = h = image_size
    else:
        w, h = (int(v) for v in image_size)
    if min(w, h) < 64:
        raise ValueError(f"image_size must be at least 64 px, got {w}x{h}")
    return w, h


def synthetic_id(seed: int, index: int, split: str = "train", ood: bool = False) -> str:
    return f"syn-{split}{'-ood' if ood else ''}-{seed}-{index}"


def generate_item(
    seed: int,
    index: int,
    family: str,
    difficulty: int,
    split: str = "train",
    image_size: int | Sequence[int] = 128,
    ood: bool = False,
) -> Item:
    """One synthetic item; deterministic in all its arguments."""
    if family not in _FAMILY_FNS:
        raise ValueError(f"unknown family {family!r}; known: {list(FAMILIES)}")
    if difficulty not in _BASE_OBJECTS:
        raise ValueError(f"difficulty must be 1..5, got {difficulty}")
    W, H = _size(image_size)
    iid = synthetic_id(seed, index, split, ood)
    rng = random.Random(f"{GENERATOR_VERSION}|{iid}|{family}|{difficulty}|{W}x{H}")
    for _attempt in range(50):
        try:
            r = _FAMILY_FNS[family](rng, difficulty, ood, W, H)
            break
        except _Retry:
            continue
    else:  # pragma: no cover - would be a generator bug
        raise RuntimeError(f"could not generate {iid} ({family}, difficulty {difficulty})")
    answer, choices = r["answer"], r.get("choices")
    forbidden = [answer] + ([choices[CHOICE_LETTERS.index(answer)]] if choices else [])
    for line in r["method"]:
        if not _answer_free(line, forbidden):  # pragma: no cover - a template bug
            raise RuntimeError(f"{iid}: method step is not answer-free: {line!r}")
    traps = [t for t in dict.fromkeys(r["traps"]) if _answer_free(t, forbidden)][:3]
    evidence = [e for e in r["evidence"] if not any(mentions_term(e["label"], t) for t in forbidden)]
    if len(evidence) != len(r["evidence"]):  # pragma: no cover - a template bug
        raise RuntimeError(f"{iid}: an evidence label names the answer")
    meta = {
        "generator": GENERATOR_VERSION,
        "family": family,
        "template": r["template"],
        "difficulty": difficulty,
        "ood": ood,
        "seed": seed,
        "index": index,
        "width": W,
        "height": H,
        "objects": r["placed"],
        "query": r["query"],
        "evidence": evidence,
        "reasoning": r["reasoning"],
        "method": r["method"],
        "traps": traps,
    }
    return Item(
        id=iid, images=[r["png"]], question=r["question"], answer=answer, choices=choices,
        solution=r["solution"], source="synthetic", split=split, meta=meta,
    )


def generate_synthetic(
    n: int,
    seed: int = 0,
    families: Sequence[str] | None = None,
    split: str = "train",
    difficulty: int | tuple[int, int] = (1, 5),
    image_size: int | Sequence[int] = 128,
    ood: bool = False,
    start: int = 0,
) -> list[Item]:
    """``n`` synthetic items with ids ``syn-<split>[-ood]-<seed>-<index>``, ``index`` from ``start``.

    Families cycle in order over the indices (balanced); each item's difficulty is drawn uniformly
    from ``difficulty`` (an int or an inclusive ``(lo, hi)`` range in 1..5). Item ``index`` depends only
    on ``(seed, split, ood, index, families, difficulty, image_size)``.
    """
    fams = tuple(families) if families else FAMILIES
    for f in fams:
        if f not in _FAMILY_FNS:
            raise ValueError(f"unknown family {f!r}; known: {list(FAMILIES)}")
    lo, hi = (difficulty, difficulty) if isinstance(difficulty, int) else (int(difficulty[0]), int(difficulty[1]))
    if not 1 <= lo <= hi <= 5:
        raise ValueError(f"difficulty must lie in 1..5 with lo <= hi, got {difficulty}")
    if n < 0:
        raise ValueError("n must be >= 0")
    out = []
    for index in range(start, start + n):
        pick = random.Random(f"{GENERATOR_VERSION}|pick|{seed}|{split}|{int(ood)}|{index}")
        fam = fams[index % len(fams)]
        d = pick.randint(lo, hi)
        out.append(generate_item(seed, index, fam, d, split=split, image_size=image_size, ood=ood))
    return out


def render_evidence(item: Item, scale: int = 4):
    """The item's first image, enlarged, with its evidence boxes and labels drawn (for cards and debugging)."""
    from PIL import ImageDraw

    from ptdpo.data.schema import open_image

    img = open_image(item.images[0], item.id, 0)
    W, H = img.size
    img = img.resize((W * scale, H * scale), resample=0)
    dr = ImageDraw.Draw(img)
    for e in item.meta.get("evidence", []):
        x1, y1, x2, y2 = e["bbox"]
        box = [x1 * W * scale / 1000, y1 * H * scale / 1000, x2 * W * scale / 1000 - 1, y2 * H * scale / 1000 - 1]
        dr.rectangle(box, outline=(0, 0, 0), width=2)
        dr.text((box[0] + 2, box[1] + 2), e.get("label", ""), fill=(0, 0, 0))
    return img
