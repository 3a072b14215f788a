"""Drawing a scene: shape and number masks, and a non-overlapping layout rendered to PNG.

Masks are binary (no anti-aliasing), so every pixel of an object has its exact palette colour; the
boxes the layout returns are in 0..1000 normalised coordinates.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ptdpo.data.synthetic.scene import COLORS, NUMBER_COLORS, Retry

BACKGROUND = (255, 255, 255)
SIZE_FRACTION = {"small": 0.11, "large": 0.19}  # nominal side as a fraction of the image side
TEXT_FRACTION = 0.2  # font size of drawn numbers as a fraction of the image side
_MIN_SIDE = 9
_DENSITY = 0.33


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


def layout(
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
    raise Retry("no layout")

