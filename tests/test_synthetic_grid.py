"""The opt-in ``grid_color`` family (``ptdpo.data.synthetic.grid``): an open answer set of 25 colour names,
squares laid out on the visual tokens, the white dot where the answer is, an oracle hint that points at the
square without naming its colour; and the study's redraw with uninformative dots."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ptdpo.data import FAMILIES, generate_item, generate_synthetic
from ptdpo.data.synthetic.grid import DOT_COLORS, GRID_COLOR_NAMES, GRID_COLORS, grid_shape
from ptdpo.hints import OracleGenerator, render_hint, run_generation, to_unstructured


def _pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(item.images[0])).convert("RGB"))


def _centre(px: np.ndarray, box) -> tuple[int, ...]:
    H, W, _ = px.shape
    x = int((box[0] + box[2]) / 2000 * W)
    y = int((box[1] + box[3]) / 2000 * H)
    return tuple(int(v) for v in px[y, x])


def _corner_pixel(px: np.ndarray, box) -> tuple[int, ...]:
    H, W, _ = px.shape
    return tuple(int(v) for v in px[int(box[1] / 1000 * H) + 2, int(box[0] / 1000 * W) + 2])


@pytest.mark.parametrize("size,cells", [(96, 9), (128, 16)])
def test_answer_is_the_colour_of_the_square_with_the_white_dot(size, cells):
    items = generate_synthetic(40, seed=3, families=["grid_color"], difficulty=(1, 3), image_size=size)
    assert grid_shape(size, size)[0] ** 2 == cells
    for it in items:
        objs = it.meta["objects"]
        assert len(objs) == cells and len({o["color"] for o in objs}) == cells  # distinct colours
        px = _pixels(it)
        whites = [o for o in objs if o["dot"] == "white"]
        assert len(whites) == 1 and it.answer == whites[0]["color"]
        assert len([o for o in objs if o["dot"] == "black"]) == it.meta["difficulty"] - 1
        for o in objs:  # every square is drawn in its colour, the dot in its own
            assert _corner_pixel(px, o["bbox"]) == GRID_COLORS[o["color"]], (it.id, o)
            if o["dot"]:
                assert _centre(px, o["bbox"]) == DOT_COLORS[o["dot"]]
        assert it.meta["evidence"] == [{"bbox": whites[0]["bbox"], "label": "square with the white dot"}]
        assert it.answer in GRID_COLOR_NAMES and it.answer in it.solution


def test_open_answer_set_ood_decoys_and_determinism():
    items = generate_synthetic(300, seed=0, families=["grid_color"], difficulty=(1, 1), image_size=96)
    assert len(Counter(it.answer for it in items)) >= 20  # an open answer set
    ood = generate_synthetic(20, seed=0, families=["grid_color"], difficulty=(1, 1), image_size=96, ood=True)
    assert all(sum(o["dot"] == "black" for o in it.meta["objects"]) == 2 for it in ood)
    assert generate_item(0, 5, "grid_color", 1, image_size=96) == items[5]
    with pytest.raises(ValueError, match="at least 64"):
        generate_item(0, 0, "grid_color", 1, image_size=(200, 40))


def test_opt_in_family_changes_no_default_item():
    assert "grid_color" not in FAMILIES
    assert all(it.meta["family"] != "grid_color" for it in generate_synthetic(30, seed=1))
    with pytest.raises(ValueError, match="grid_color"):  # the error lists the opt-in families too
        generate_synthetic(1, families=["nope"])


def test_oracle_hint_points_at_the_square_and_passes_the_default_audit():
    items = generate_synthetic(60, seed=2, families=["grid_color"], difficulty=(1, 4), image_size=96)
    results = run_generation(OracleGenerator(), items)
    assert all(r.ok for r in results), [r.verdict for r in results if not r.ok][:2]
    for it, r in zip(items, results):
        (region,) = r.hint.regions
        assert region.bbox == it.meta["evidence"][0]["bbox"]  # the answered square, unpadded
        for text in (render_hint(r.hint), to_unstructured(r.hint).text):
            words = set(text.lower().replace(".", " ").replace(";", " ").split())
            assert not words & set(GRID_COLOR_NAMES), text  # no colour name, the answer least of all


def test_warm_start_redraw_makes_the_dots_uninformative():
    from ptdpo.study.grid_warmup import redraw_uninformative

    items = generate_synthetic(200, seed=4, families=["grid_color"], difficulty=(1, 1), image_size=96)
    rng = random.Random(0)
    on_target = 0
    for it in items:
        warm = redraw_uninformative(it, rng, p_dot=0.5)
        assert (warm.id, warm.question, warm.answer) == (it.id, it.question, it.answer) and warm.images != it.images
        px = _pixels(warm)
        dotted = {i for i, o in enumerate(it.meta["objects"]) if _centre(px, o["bbox"]) == DOT_COLORS["white"]}
        assert dotted == set(warm.meta["warm_dots"])
        target = next(i for i, o in enumerate(it.meta["objects"]) if o["dot"] == "white")
        on_target += target in dotted
    assert 0.38 <= on_target / len(items) <= 0.62  # the answered square is dotted as often as any other
    other = generate_synthetic(1, seed=0, families=["spatial"], difficulty=(2, 2))[0]
    assert redraw_uninformative(other, rng) is other
