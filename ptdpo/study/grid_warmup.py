"""Warm-start images of ``grid_color`` items whose dots say nothing about the answer.

The study's base model must read the hint's box (its teacher) without being able to find the white dot on
its own (its student): if the warm start showed the dot exactly where the answer is, the model could learn
either cue and the student would start as strong as the teacher. So the warm start redraws each scene with
white dots on a random subset of the squares (each square independently, the answered one included):
the question and the answer are unchanged, the box of the hint still marks the answered square, and the
dots carry no information about it. RL then has something to learn: the single white dot of a real item.
"""

from __future__ import annotations

import dataclasses
import random

from ptdpo.data.schema import Item
from ptdpo.data.synthetic.grid import draw_grid


def is_grid_item(item: Item) -> bool:
    return (item.meta or {}).get("template") == "marked_cell"


def redraw_uninformative(item: Item, rng: random.Random, p_dot: float = 0.5) -> Item:
    """The item with a new image: the same squares, white dots on each square with probability ``p_dot``
    (independently of which square is answered). Items of other templates are returned unchanged."""
    if not is_grid_item(item):
        return item
    meta = item.meta
    colors = [o["color"] for o in meta["objects"]]
    dots = {i: "white" for i in range(len(colors)) if rng.random() < p_dot}
    png = draw_grid(colors, dots, int(meta["width"]), int(meta["height"]))
    return dataclasses.replace(item, images=[png], meta={**meta, "warm_dots": sorted(dots)})
