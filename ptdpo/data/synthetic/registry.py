"""Which question templates exist, which family each belongs to, and how a family picks one.

A template is one function ``(rng, d, ood, W, H, **drawn) -> scene dict`` that draws a scene for one kind
of question and returns ``template`` (the name recorded in ``meta``; ``most`` and ``extreme`` record the
attribute asked, e.g. ``most_color``), ``question``, ``answer``, optionally ``choices``, ``query``,
``placed`` (objects with boxes), ``png``, ``evidence``, ``reasoning``, ``solution``, ``method`` and
``traps``. It may raise :class:`~ptdpo.data.synthetic.scene.Retry` to have the scene drawn again.

A family is a set of templates and a picker ``(rng, d, ood) -> (template name, drawn)``: the choice is
part of the item's random stream, so a picker draws exactly what the family drew before it was split
into templates (``drawn`` carries what a picker drew before choosing, e.g. the numbers of
``arith_digits``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptdpo.data.synthetic import counting, digits, grid, spatial

Template = Callable[..., dict]
Picker = Callable[[random.Random, int, bool], tuple[str, dict[str, Any]]]

TEMPLATES: dict[str, Template] = {
    "count": counting.count_matching,
    "total": counting.count_total,
    "difference": counting.count_difference,
    "more_than": counting.more_than,
    "most": counting.most_frequent,
    "relation": spatial.relation,
    "extreme": spatial.extreme,
    "sum": digits.number_sum,
    "range": digits.number_range,
}


@dataclass(frozen=True)
class Family:
    templates: tuple[str, ...]
    pick: Picker


def _only(name: str) -> Picker:
    return lambda rng, d, ood: (name, {})


def _uniform(*names: str) -> Picker:
    return lambda rng, d, ood: (rng.choice(list(names)), {})


def _spatial(rng: random.Random, d: int, ood: bool) -> tuple[str, dict]:
    return ("relation" if d in (2, 4) else "extreme"), {}


FAMILY_SPECS: dict[str, Family] = {
    "count_attr": Family(("count",), _only("count")),
    "spatial": Family(("relation", "extreme"), _spatial),
    "compare": Family(("more_than", "most"), _uniform("more_than", "most")),
    "arith_count": Family(("total", "difference"), _uniform("total", "difference")),
    "arith_digits": Family(("sum", "range"), digits.pick),
}

FAMILIES = tuple(FAMILY_SPECS)

# Opt-in families: generated only when a config names them (``families``), never in the default cycle, so
# that adding one changes no existing item. ``grid_color`` has an open answer set of 25 colour names and a
# grid laid out on the visual tokens (the learning-signal study, docs/study.md).
OPT_IN_TEMPLATES: dict[str, Template] = {"marked_cell": grid.marked_cell}
OPT_IN_FAMILY_SPECS: dict[str, Family] = {"grid_color": Family(("marked_cell",), _only("marked_cell"))}
ALL_TEMPLATES: dict[str, Template] = {**TEMPLATES, **OPT_IN_TEMPLATES}
ALL_FAMILY_SPECS: dict[str, Family] = {**FAMILY_SPECS, **OPT_IN_FAMILY_SPECS}


def draw_scene(family: str, rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """One scene of ``family``: its picker chooses the template, the template draws the scene."""
    name, drawn = ALL_FAMILY_SPECS[family].pick(rng, d, ood)
    return ALL_TEMPLATES[name](rng, d, ood, W, H, **drawn)
