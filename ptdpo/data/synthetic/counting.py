"""Question templates that count objects: ``count`` (family ``count_attr``), ``total`` and ``difference``
(``arith_count``), ``more_than`` and ``most`` (``compare``).

Every template has the signature ``(rng, d, ood, W, H) -> scene dict`` (see
:mod:`ptdpo.data.synthetic.registry`) and draws everything it needs from ``rng``, in a fixed order.
"""

from __future__ import annotations

import random
from collections import Counter

from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.synthetic.drawing import layout
from ptdpo.data.synthetic.scene import (
    COLOR_NAMES,
    SHAPES,
    Retry,
    allowed,
    cap,
    count_range,
    distractor,
    fill,
    fmt_box,
    matches,
    mixed_sizes_trap,
    n_objects,
    near_miss_traps,
    noun,
    object_label,
    pluralize,
    random_desc,
)


def count_matching(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``count``: "How many red circles are there?" -> an integer."""
    keys = {1: ("shape",), 2: ("color",), 3: ("color", "shape"), 4: ("color", "shape"),
            5: ("size", "color", "shape")}[d]
    if d == 1 and rng.random() < 0.5:
        keys = ("color",)
    desc = random_desc(rng, keys, ood)
    n = n_objects(rng, d, ood)
    lo, hi = count_range(ood)
    k = rng.randint(lo, min(hi, n - 1))
    objs = [fill(rng, desc, ood) for _ in range(k)]
    p_near = 0.2 + 0.15 * d
    objs += [distractor(rng, [desc], ood, near=desc, p_near=p_near) for _ in range(n - k)]
    rng.shuffle(objs)
    placed, png = layout(rng, objs, W, H)
    targets = [o for o in placed if matches(o, desc)]
    pl = noun(desc, plural=True)
    label_keys = ("size", "color", "shape") if "size" in desc else ("color", "shape")
    method = []
    method.append(f"Scan the whole image for {pluralize(desc['shape'])}." if "shape" in desc
                  else "Scan the whole image and look at every shape.")
    if "color" in desc:
        method.append(f"Keep only the {desc['color']} ones.")
    if "size" in desc:
        method.append(f"Keep only the {desc['size']} ones.")
    method.append("Count the matching shapes individually, without skipping any.")
    traps = near_miss_traps(desc, placed) + mixed_sizes_trap(targets, desc)
    boxes = ", ".join(fmt_box(o["bbox"]) for o in targets)
    return dict(
        template="count",
        question=f"How many {pl} are there? Answer with a number.",
        answer=str(len(targets)),
        query={"type": "count", "target": desc},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": object_label(o, label_keys)} for o in targets],
        reasoning=[f"{cap(pl)} at {boxes}.", f"{len(targets)} {pl if len(targets) != 1 else noun(desc)}."],
        solution=f"The {pl} are at {boxes}. Counting them gives {len(targets)}.",
        method=method, traps=traps,
    )


# ------------------------------------------------------------------------------ two groups, A and B


def _pair_keys(d: int) -> tuple[str, ...]:
    return {1: ("shape",), 2: ("color",), 3: ("color", "shape"), 4: ("color", "shape"),
            5: ("size", "color", "shape")}[d]


def _two_groups(rng, d, ood, ka, kb, W, H, p_near=None):
    """A scene with ``ka`` objects of descriptor A, ``kb`` of a disjoint B, and distractors."""
    keys = _pair_keys(d)
    a = random_desc(rng, keys, ood)
    b = random_desc(rng, keys, ood, disjoint_from=[a])
    n = max(n_objects(rng, d, ood), ka + kb + 1)
    objs = [fill(rng, a, ood) for _ in range(ka)] + [fill(rng, b, ood) for _ in range(kb)]
    p_near = 0.2 + 0.15 * d if p_near is None else p_near
    objs += [distractor(rng, [a, b], ood, near=rng.choice([a, b]), p_near=p_near) for _ in range(n - ka - kb)]
    rng.shuffle(objs)
    placed, png = layout(rng, objs, W, H)
    return a, b, placed, png


def _groups(a: dict, b: dict, placed: list[dict]) -> tuple[list[dict], list[dict], str, str, tuple[str, ...]]:
    """The objects of A and of B, their plural nouns, and the attributes their evidence labels name."""
    A = [o for o in placed if matches(o, a)]
    B = [o for o in placed if matches(o, b)]
    lkeys = ("size", "color", "shape") if "size" in a else ("color", "shape")
    return A, B, noun(a, plural=True), noun(b, plural=True), lkeys


def _group_traps(a: dict, b: dict, placed: list[dict]) -> list[str]:
    return (near_miss_traps(a, [o for o in placed if not matches(o, b)])
            + near_miss_traps(b, [o for o in placed if not matches(o, a)]))


def _arith_count(form: str, a: dict, b: dict, placed: list[dict], png: bytes) -> dict:
    """The scene dict of ``total`` / ``difference``, which differ only in the operation."""
    A, B, apl, bpl, lkeys = _groups(a, b, placed)
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
    method = [f"Find all the {apl} and count them.", f"Find all the {bpl} and count them.", last]
    traps = _group_traps(a, b, placed)
    traps += ["Count each group separately before combining the counts."]
    return dict(
        template=form,
        question=q, answer=str(ans),
        query={"type": "sum" if form == "total" else "difference", "a": a, "b": b},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": object_label(o, lkeys)} for o in A + B],
        reasoning=[f"{cap(apl)}: {len(A)} ({', '.join(fmt_box(o['bbox']) for o in A)}).",
                   f"{cap(bpl)}: {len(B)} ({', '.join(fmt_box(o['bbox']) for o in B) or 'none'}).",
                   calc],
        solution=f"There are {len(A)} {apl} and {len(B)} {bpl}, so the answer is {calc}.",
        method=method, traps=traps,
    )


def count_total(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``total``: "How many circles and triangles are there in total?" -> an integer."""
    lo, hi = count_range(ood)
    ka, kb = rng.randint(lo, max(lo, hi - 2)), rng.randint(lo, max(lo, hi - 2))
    a, b, placed, png = _two_groups(rng, d, ood, ka, kb, W, H)
    return _arith_count("total", a, b, placed, png)


def count_difference(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``difference``: "How many more red shapes than blue shapes are there?" -> an integer."""
    lo, hi = count_range(ood)
    ka = rng.randint(lo + 1, hi)
    kb = rng.randint(lo, ka - 1)
    a, b, placed, png = _two_groups(rng, d, ood, ka, kb, W, H)
    return _arith_count("difference", a, b, placed, png)


def more_than(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``more_than``: "Are there more circles than squares?" -> yes / no."""
    lo, hi = count_range(ood)
    margin = 2 if d == 1 else 1
    small = rng.randint(lo, max(lo, hi - margin))
    big = rng.randint(small + margin, max(hi, small + margin))
    yes = rng.random() < 0.5
    ka, kb = (big, small) if yes else (small, big)
    a, b, placed, png = _two_groups(rng, d, ood, ka, kb, W, H)
    A, B, apl, bpl, lkeys = _groups(a, b, placed)
    ans = "yes" if len(A) > len(B) else "no"
    traps = _group_traps(a, b, placed)
    traps += ["Larger shapes are not worth more; compare how many there are."]
    return dict(
        template="more_than",
        question=f"Are there more {apl} than {bpl}? Answer yes or no.", answer=ans,
        query={"type": "more_than", "a": a, "b": b},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": object_label(o, lkeys)} for o in A + B],
        reasoning=[f"{cap(apl)}: {len(A)}.", f"{cap(bpl)}: {len(B)}.",
                   f"{len(A)} {'>' if len(A) > len(B) else '<'} {len(B)}, so {ans}."],
        solution=f"There are {len(A)} {apl} and {len(B)} {bpl}, so the answer is {ans}.",
        method=[f"Count the {apl}.", f"Count the {bpl}.", "Compare the counts."],
        traps=traps,
    )


def most_frequent(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``most``: "Which colour appears most often?", optionally among one shape (or colour), half as
    multiple choice -> a colour / shape name or an option letter (meta template ``most_color`` /
    ``most_shape``)."""
    lo, hi = count_range(ood)
    attr = rng.choice(["color", "shape"])
    other = "shape" if attr == "color" else "color"
    among = random_desc(rng, (other,), ood) if d >= 3 else {}
    pool = list(COLOR_NAMES if attr == "color" else SHAPES)
    rng.shuffle(pool)
    n_values = 2 + (d >= 3)
    values = []
    for v in pool:
        if allowed({**among, attr: v}, ood):
            values.append(v)
        if len(values) == n_values:
            break
    if len(values) < 2:
        raise Retry("too few values")
    margin = 2 if d == 1 else 1
    budget = n_objects(rng, d, ood)
    top = rng.randint(lo + margin, max(lo + margin, min(hi, budget // 2 + 1)))
    counts = {values[0]: top}
    for v in values[1:]:
        counts[v] = rng.randint(1, top - margin)
    objs = []
    for v, c in counts.items():
        objs += [fill(rng, {**among, attr: v}, ood) for _ in range(c)]
    n_extra = max(1, budget - len(objs)) if among else 0
    if among:
        objs += [distractor(rng, [among], ood) for _ in range(n_extra)]
    rng.shuffle(objs)
    placed, png = layout(rng, objs, W, H)
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
        evidence=[{"bbox": o["bbox"], "label": object_label(o, label_keys)} for o in cand],
        reasoning=[", ".join(f"{v}: {c}" for v, c in ranked) + ".", f"Most often: {winner}."],
        solution=f"Counts{scope}: " + ", ".join(f"{v} {c}" for v, c in ranked)
        + f". The most frequent {word} is {winner}" + (f" (option {answer})." if choices else "."),
        method=method, traps=traps,
    )
