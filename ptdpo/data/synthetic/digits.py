"""Question templates over numbers drawn as text (family ``arith_digits``): ``sum`` ("What is the sum of
the numbers?") and ``range`` ("What is the largest number minus the smallest number?") -> an integer.

From difficulty 4 the numbers come in two colours and only one colour counts; at difficulty 5 (and OOD)
shapes are drawn among the numbers. Both templates share the numbers, which the family draws before it
picks the template (:func:`pick`), so a scene's numbers do not depend on the question asked of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ptdpo.data.synthetic.drawing import layout
from ptdpo.data.synthetic.scene import NUMBER_COLORS, fill, fmt_box, matches, object_label


@dataclass(frozen=True)
class Numbers:
    """The numbers of one scene, drawn before the template is picked."""

    values: list[int]
    n_shapes: int  # shapes drawn among the numbers (distractors)
    vhi: int  # the largest value that could be drawn


def draw_numbers(rng: random.Random, d: int, ood: bool) -> Numbers:
    if ood:
        vlo, vhi = 20, 99
    else:
        vlo, vhi = (1, 9) if d == 1 else (1, 19)
    # the dict literal draws rng.randint(4, 5) at every difficulty: kept, so that every scene stays the same
    n_num = {1: 2, 2: 2, 3: 3, 4: 4, 5: rng.randint(4, 5)}[d] + (1 if ood else 0)
    n_shapes = (3 if d == 5 else 0) + (2 if ood else 0)
    values = rng.sample(range(vlo, vhi + 1), n_num)
    return Numbers(values=values, n_shapes=n_shapes, vhi=vhi)


def pick(rng: random.Random, d: int, ood: bool) -> tuple[str, dict]:
    """The family's template choice: the numbers first, then ``sum`` (always at difficulty 1) or ``range``."""
    numbers = draw_numbers(rng, d, ood)
    op = "sum" if d == 1 else rng.choice(["sum", "range"])
    return op, {"numbers": numbers}


def _scene(rng: random.Random, d: int, ood: bool, W: int, H: int, numbers: Numbers):
    """Colours the numbers (two colours from difficulty 4), adds the shapes and lays the scene out."""
    values, n_num = numbers.values, len(numbers.values)
    filt: dict = {"shape": "number"}
    if d >= 4:
        c1, c2 = rng.sample(sorted(NUMBER_COLORS), 2)
        k1 = rng.randint(2, n_num - 1)
        colors = [c1] * k1 + [c2] * (n_num - k1)
        filt["color"] = c1
    else:
        colors = ["black"] * n_num
    objs = [{"shape": "number", "color": c, "size": None, "value": v} for c, v in zip(colors, values)]
    objs += [fill(rng, {}, ood) for _ in range(numbers.n_shapes)]
    rng.shuffle(objs)
    placed, png = layout(rng, objs, W, H)
    return filt, placed, png


def _selected(filt: dict, placed: list[dict]) -> tuple[list[dict], str]:
    """The numbers the question is about, and what the question calls them."""
    sel = [o for o in placed if matches(o, filt)]
    return sel, (f"{filt['color']} numbers" if "color" in filt else "numbers")


def _result(op: str, q: str, ans: int, calc: str, method: list[str], ood: bool, numbers: Numbers,
            filt: dict, placed: list[dict], png: bytes) -> dict:
    sel, what = _selected(filt, placed)
    vals = [o["value"] for o in sel]
    traps = []
    if "color" in filt:
        traps.append(f"Only {what} count; ignore numbers of other colours.")
    if numbers.n_shapes:
        traps.append("The shapes are not numbers; ignore them.")
    if ood or numbers.vhi >= 10:
        traps.append("Numbers with several digits must be read as whole numbers, not digit by digit sums.")
    return dict(
        template=op,
        question=q + " Answer with a number.", answer=str(ans),
        query={"type": op, "among": filt},
        placed=placed, png=png,
        evidence=[{"bbox": o["bbox"], "label": object_label(o, ("color",) if "color" in filt else ())} for o in sel],
        reasoning=["Numbers: " + ", ".join(f"{o['value']} at {fmt_box(o['bbox'])}" for o in sel) + ".", calc],
        solution=f"The {what} are " + ", ".join(str(v) for v in vals) + f"; {calc}.",
        method=method, traps=traps,
    )


def number_sum(rng: random.Random, d: int, ood: bool, W: int, H: int, numbers: Numbers) -> dict:
    """``sum``: the sum of the (selected) numbers."""
    filt, placed, png = _scene(rng, d, ood, W, H, numbers)
    sel, what = _selected(filt, placed)
    vals = [o["value"] for o in sel]
    ans = sum(vals)
    calc = " + ".join(map(str, vals)) + f" = {ans}"
    if "color" in filt:
        q = f"What is the sum of the {what} in the image?"
    elif len(numbers.values) == 2:
        q = "What is the sum of the two numbers in the image?"
    else:
        q = "What is the sum of all the numbers in the image?"
    method = [f"Find every {what[:-1]} written in the image.", "Read each number in full.", "Add them up."]
    return _result("sum", q, ans, calc, method, ood, numbers, filt, placed, png)


def number_range(rng: random.Random, d: int, ood: bool, W: int, H: int, numbers: Numbers) -> dict:
    """``range``: the largest (selected) number minus the smallest."""
    filt, placed, png = _scene(rng, d, ood, W, H, numbers)
    sel, what = _selected(filt, placed)
    vals = [o["value"] for o in sel]
    ans = max(vals) - min(vals)
    calc = f"{max(vals)} - {min(vals)} = {ans}"
    if "color" in filt:
        c = filt["color"]
        q = f"What is the largest {c} number minus the smallest {c} number?"
    elif len(numbers.values) == 2:
        q = "What is the larger number minus the smaller number?"
    else:
        q = "What is the largest number minus the smallest number?"
    method = [f"Find every {what[:-1]} written in the image.", "Read each number in full.",
              "Find the largest and the smallest of them.", "Subtract the smallest from the largest."]
    return _result("range", q, ans, calc, method, ood, numbers, filt, placed, png)
