"""An opt-in family with an open answer set (family ``grid_color``, template ``marked_cell``):

    "What colour is the square with the white dot? Answer with a colour name."  -> one of 25 colour names

The image is a grid of solid squares, one per 32-px cell (a 96-px image is 3 x 3, a 128-px one 4 x 4), so
that each square is exactly one visual token of a Qwen3-VL model after its 2 x 2 patch merge (patch 16).
The squares have distinct colours from :data:`GRID_COLORS` (the 3-level RGB cube without white and black,
the two dot colours: 25 colours a linear read-out of a patch can tell apart). One square carries a white dot in its centre; from
difficulty 2 on, other squares carry black decoy dots (``difficulty - 1`` of them; out of distribution two
more). The answer is the colour of the square with the white dot.

The evidence is that square's box, labelled without its colour; the method and traps never name a colour.
So the oracle hint says WHERE to look (one box), and the answer is still read off the image there: a
hint that narrows 9-16 candidates to one without stating it (docs/study.md, "the gate").

``draw_grid`` is public so that the learning-signal study can redraw a scene with other dots
(``ptdpo.study.grid_warmup``).
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence

from ptdpo.data.synthetic.scene import Retry, fmt_box

CELL_PX = 32  # one merged visual token of a patch-16, merge-2 processor
GRID_COLORS: dict[str, tuple[int, int, int]] = {
    "navy": (0, 0, 128), "blue": (0, 0, 255),
    "green": (0, 128, 0), "teal": (0, 128, 128), "azure": (0, 128, 255),
    "lime": (0, 255, 0), "spring": (0, 255, 128), "cyan": (0, 255, 255),
    "maroon": (128, 0, 0), "purple": (128, 0, 128), "violet": (128, 0, 255),
    "olive": (128, 128, 0), "gray": (128, 128, 128), "lavender": (128, 128, 255),
    "chartreuse": (128, 255, 0), "mint": (128, 255, 128), "sky": (128, 255, 255),
    "red": (255, 0, 0), "rose": (255, 0, 128), "magenta": (255, 0, 255),
    "orange": (255, 128, 0), "salmon": (255, 128, 128), "pink": (255, 128, 255),
    "yellow": (255, 255, 0), "cream": (255, 255, 128),
}
GRID_COLOR_NAMES = tuple(GRID_COLORS)
DOT_COLORS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
_DOT_RADIUS = 0.22  # of the cell side
_OOD_EXTRA_DECOYS = 2


def grid_shape(W: int, H: int) -> tuple[int, int]:
    """(columns, rows) of the grid of a W x H image: one cell per 32 px, at least 2 x 2."""
    cols, rows = W // CELL_PX, H // CELL_PX
    if cols < 2 or rows < 2:
        raise ValueError(f"grid_color needs an image of at least {2 * CELL_PX} px a side, got {W}x{H}")
    return cols, rows


def cell_box(r: int, c: int, cols: int, rows: int) -> list[int]:
    """The box of cell (row r, column c) in 0..1000 coordinates."""
    return [round(c * 1000 / cols), round(r * 1000 / rows), round((c + 1) * 1000 / cols),
            round((r + 1) * 1000 / rows)]


def draw_grid(colors: Sequence[str], dots: Mapping[int, str], W: int, H: int) -> bytes:
    """PNG of the grid: ``colors`` row-major (one name per cell), ``dots`` cell index -> dot colour name.
    The cells tile the whole image (a side that is not a multiple of 32 px widens them a little)."""
    from PIL import Image, ImageDraw

    cols, rows = grid_shape(W, H)
    if len(colors) != cols * rows:
        raise ValueError(f"{cols}x{rows} grid needs {cols * rows} colours, got {len(colors)}")
    img = Image.new("RGB", (W, H))
    dr = ImageDraw.Draw(img)
    for i, name in enumerate(colors):
        r, c = divmod(i, cols)
        x0, y0 = round(c * W / cols), round(r * H / rows)
        x1, y1 = round((c + 1) * W / cols), round((r + 1) * H / rows)
        dr.rectangle([x0, y0, x1 - 1, y1 - 1], fill=GRID_COLORS[name])
        if i in dots:
            cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
            rad = _DOT_RADIUS * min(x1 - x0, y1 - y0)
            dr.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=DOT_COLORS[dots[i]])
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def marked_cell(rng: random.Random, d: int, ood: bool, W: int, H: int) -> dict:
    """``marked_cell``: the colour of the square with the white dot, among distinctly coloured squares."""
    cols, rows = grid_shape(W, H)
    n = cols * rows
    if n > len(GRID_COLORS):
        raise ValueError(f"grid_color: a {cols}x{rows} grid needs more than the {len(GRID_COLORS)} colours")
    colors = rng.sample(GRID_COLOR_NAMES, n)
    target = rng.randrange(n)
    n_decoys = min(n - 1, d - 1 + (_OOD_EXTRA_DECOYS if ood else 0))
    decoys = rng.sample([i for i in range(n) if i != target], n_decoys)
    dots = {target: "white", **{i: "black" for i in decoys}}
    if len(dots) != 1 + n_decoys:  # pragma: no cover - a sampling bug
        raise Retry("dot collision")
    png = draw_grid(colors, dots, W, H)
    placed = []
    for i, name in enumerate(colors):
        r, c = divmod(i, cols)
        placed.append({"shape": "square", "color": name, "size": "large", "bbox": cell_box(r, c, cols, rows),
                       "cell": [r, c], "dot": dots.get(i)})
    tr, tc = divmod(target, cols)
    box = placed[target]["bbox"]
    ans = colors[target]
    traps = ["The dot itself is white; name the colour of the square around it."]
    if n_decoys:
        traps.append("Black dots are decoys; only the white dot matters.")
    return dict(
        template="marked_cell",
        question="What colour is the square with the white dot? Answer with a colour name.", answer=ans,
        query={"type": "marked", "dot": "white", "attribute": "color"},
        placed=placed, png=png,
        evidence=[{"bbox": box, "label": "square with the white dot"}],
        reasoning=[f"The white dot is in row {tr + 1}, column {tc + 1}, at {fmt_box(box)}.",
                   f"That square is {ans}."],
        solution=f"The square with the white dot (row {tr + 1}, column {tc + 1}) is {ans}.",
        method=["Find the square with the white dot.", "Name the colour of that square, not of the dot."],
        traps=traps,
    )
