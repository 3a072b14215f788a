"""Question templates about positions (family ``spatial``): ``relation`` ("Is the red circle above the
green triangle?" -> yes / no) and ``extreme`` ("What colour is the leftmost circle?" -> a colour or
shape name).

Positions are compared by the centres of the objects' boxes, with a minimum separation of
:data:`~ptdpo.data.synthetic.scene.MARGIN` so that no answer hangs on a pixel.
"""

from __future__ import annotations

import random

from ptdpo.data.synthetic.drawing import layout
from ptdpo.data.synthetic.scene import (
    COLOR_NAMES,
    MARGIN,
    SHAPES,
    Retry,
    allowed,
    cap,
    center,
    distractor,
    fill,
    fmt_box,
    matches,
    n_objects,
    noun,
    object_label,
    random_desc,
)

_DIRS = {
    "left": ("leftmost", 0, -1, "horizontal", "furthest to the left"),
    "right": ("rightmost", 0, 1, "horizontal", "furthest to the right"),
    "top": ("topmost", 1, -1, "vertical", "highest up"),
    "bottom": ("bottommost", 1, 1, "vertical", "lowest down"),
}
_RELS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def relation(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``relation``: whether object A lies left of / right of / above / below object B."""
    n = n_objects(rng, d, ood)
    a = random_desc(rng, ("color", "shape"), ood)
    b = random_desc(rng, ("color", "shape"), ood, disjoint_from=[a])
    rel = rng.choice(sorted(_RELS))
    axis, sign = _RELS[rel]
    yes = rng.random() < 0.5
    objs = [fill(rng, a, ood), fill(rng, b, ood)]
    p_near = 0.3 if d == 2 else 0.8
    objs += [distractor(rng, [a, b], ood, near=rng.choice([a, b]), p_near=p_near) for _ in range(n - 2)]
    rng.shuffle(objs)

    def accept(placed):
        (oa,) = [o for o in placed if matches(o, a)]
        (ob,) = [o for o in placed if matches(o, b)]
        delta = center(oa["bbox"])[axis] - center(ob["bbox"])[axis]
        return abs(delta) >= MARGIN and ((delta * sign > 0) == yes)

    placed, png = layout(rng, objs, W, H, accept=accept)
    (oa,) = [o for o in placed if matches(o, a)]
    (ob,) = [o for o in placed if matches(o, b)]
    ca, cb = center(oa["bbox"])[axis], center(ob["bbox"])[axis]
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
        reasoning=[f"The {an} is at {fmt_box(oa['bbox'])} (centre {coord} = {ca:g}).",
                   f"The {bn} is at {fmt_box(ob['bbox'])} (centre {coord} = {cb:g}).",
                   f"So the {an} is {'' if holds else 'not '}{_REL_TEXT[rel]} the {bn}: {ans}."],
        solution=f"The {an} has centre {coord} = {ca:g} and the {bn} has centre {coord} = {cb:g}, "
                 f"so the answer is {ans}.",
        method=[f"Find the {an}.", f"Find the {bn}.", f"Compare the {axis_word} positions of their centres."],
        traps=traps,
    )


def extreme(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``extreme``: the colour (or shape) of the leftmost / rightmost / topmost / bottommost object, among
    the objects of a filter descriptor above difficulty 1 (meta template ``extreme_color`` /
    ``extreme_shape``)."""
    n = n_objects(rng, d, ood)
    direction = rng.choice(sorted(_DIRS))
    word, axis, sign, axis_word, phrase = _DIRS[direction]
    attr = rng.choice(["color", "shape"])
    if d == 1:
        filt: dict = {}
    elif d == 3:
        filt = random_desc(rng, ("shape",) if attr == "color" else ("color",), ood)
    else:
        filt = random_desc(rng, ("size", "shape") if attr == "color" else ("size", "color"), ood)
    n_cand = min(n, rng.randint(2, 4)) if filt else n
    pool = list(COLOR_NAMES if attr == "color" else SHAPES)
    objs = []
    for _ in range(n_cand):
        o = fill(rng, filt, ood)
        objs.append(o)
    if len({o[attr] for o in objs}) < 2:  # make the asked attribute vary among the candidates
        objs[0][attr] = rng.choice([v for v in pool if v != objs[1][attr]])
        if not allowed(objs[0], ood):
            raise Retry("held-out")
    if filt:
        objs += [distractor(rng, [filt], ood, near=filt, p_near=0.6) for _ in range(n - n_cand)]
    rng.shuffle(objs)

    def key(o):
        return sign * center(o["bbox"])[axis]

    def accept(placed):
        cand = sorted((o for o in placed if matches(o, filt)), key=key, reverse=True)
        if key(cand[0]) - key(cand[1]) < MARGIN:
            return False
        if d >= 4:  # a non-candidate lies further in that direction: the trap
            return any(key(o) > key(cand[0]) for o in placed if not matches(o, filt))
        return True

    placed, png = layout(rng, objs, W, H, accept=accept)
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
        evidence=[{"bbox": o["bbox"], "label": object_label(o, [k for k in label_keys if k in filt] or [
            "shape" if attr == "color" else "color"])} for o in cand],
        reasoning=[f"{cap(fpl)} by centre {coord}: " + ", ".join(
            f"{o[attr]} at {center(o['bbox'])[axis]:g}" for o in cand) + ".",
            f"The {word} is the {ans} one."],
        solution=f"Among the {fpl}, the one {phrase} is at {fmt_box(best['bbox'])}; its {wq} is {ans}.",
        method=[f"Find every {fnoun} in the image.", f"Compare their {axis_word} positions.",
                f"Take the {fnoun} {phrase} and name its {wq}."],
        traps=traps,
    )
