"""Synthetic scenes: determinism, exact answers recomputed from the object list, boxes that cover the
drawn pixels, answer-free method/traps, and the documented in- vs out-of-distribution shift."""

from __future__ import annotations

import io
import random
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ptdpo.data import CHOICE_LETTERS, FAMILIES, generate_item, generate_synthetic, validate_items
from ptdpo.data.synthetic import BACKGROUND, COLORS, FAMILY_SPECS, HELD_OUT, NUMBER_COLORS, TEMPLATES

# Own list (not the generator's): any count or number a hint could leak.
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred once twice"
).split()
_NUM_RE = re.compile(r"\d|\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def sample():
    """500 items: 100 per family, in-distribution and OOD, difficulties 1..5."""
    return (generate_synthetic(250, seed=11, split="train")
            + generate_synthetic(250, seed=11, split="test", ood=True))


# ------------------------------------------------------------------------- independent recomputation


def _match(o, desc):
    return all(o.get(k) == v for k, v in desc.items())


def _count(objs, desc):
    return sum(1 for o in objs if o["shape"] != "number" and _match(o, desc))


def _centre(o):
    b = o["bbox"]
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _recompute(item) -> str:
    """The answer from meta['query'] and meta['objects'] alone."""
    m = item.meta
    objs, q, fam = m["objects"], m["query"], m["family"]
    if fam == "count_attr":
        assert q["type"] == "count"
        return str(_count(objs, q["target"]))
    if fam == "arith_count":
        ca, cb = _count(objs, q["a"]), _count(objs, q["b"])
        return str(ca + cb if q["type"] == "sum" else ca - cb)
    if fam == "compare":
        if q["type"] == "more_than":
            ca, cb = _count(objs, q["a"]), _count(objs, q["b"])
            assert ca != cb
            return "yes" if ca > cb else "no"
        assert q["type"] == "most"
        c = Counter(o[q["attribute"]] for o in objs if _match(o, q["among"])).most_common()
        assert len(c) == 1 or c[0][1] > c[1][1], "the most frequent value must be unique"
        return c[0][0]
    if fam == "spatial":
        if q["type"] == "relation":
            (a,) = [o for o in objs if _match(o, q["a"])]
            (b,) = [o for o in objs if _match(o, q["b"])]
            (ax, ay), (bx, by) = _centre(a), _centre(b)
            holds = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[q["relation"]]
            gap = abs(ax - bx) if q["relation"] in ("left of", "right of") else abs(ay - by)
            assert gap >= 60, "compared centres must be clearly apart (unambiguous)"
            return "yes" if holds else "no"
        assert q["type"] == "extreme"
        cand = [o for o in objs if _match(o, q["among"])]
        key = {"left": lambda o: -_centre(o)[0], "right": lambda o: _centre(o)[0],
               "top": lambda o: -_centre(o)[1], "bottom": lambda o: _centre(o)[1]}[q["direction"]]
        cand.sort(key=key, reverse=True)
        assert len(cand) >= 2 and key(cand[0]) >= key(cand[1]) + 60, "the extreme object must be clearly unique"
        return cand[0][q["attribute"]]
    if fam == "arith_digits":
        vals = [o["value"] for o in objs if o["shape"] == "number" and _match(o, q["among"])]
        return str(sum(vals) if q["type"] == "sum" else max(vals) - min(vals))
    raise AssertionError(fam)


def _given_answer(item) -> str:
    if item.choices:
        return item.choices[CHOICE_LETTERS.index(item.answer)]
    return item.answer


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_recomputed_from_objects(family, sample):
    items = [it for it in sample if it.meta["family"] == family]
    assert len(items) == 100
    assert {it.meta["difficulty"] for it in items} == {1, 2, 3, 4, 5}
    for it in items:
        assert _recompute(it) == _given_answer(it), (it.id, it.question, it.answer)
        # the question speaks about what the query says
        q = it.meta["query"]
        for desc in [q.get("target"), q.get("a"), q.get("b"), q.get("among")]:
            for v in (desc or {}).values():
                if v != "number":
                    assert re.search(rf"\b{v}", it.question), (it.question, desc)
        assert it.answer in it.solution or (it.choices and it.answer_text in it.solution)


def test_multiple_choice_items_are_well_formed(sample):
    mc = [it for it in sample if it.choices]
    assert 10 <= len(mc) < len(sample) // 2
    for it in mc:
        assert it.answer in CHOICE_LETTERS[: len(it.choices)]
        assert len(set(it.choices)) == len(it.choices) >= 3
    letters = Counter(it.answer for it in mc)
    assert len(letters) >= 3  # the correct letter is not always the same


# ------------------------------------------------------------------------------------ determinism


def test_reproducible_by_seed():
    a = generate_synthetic(25, seed=5)
    b = generate_synthetic(25, seed=5)
    assert a == b  # ids, texts, meta and PNG bytes
    c = generate_synthetic(25, seed=6)
    assert [x.id for x in c] != [x.id for x in a]
    assert sum(x.images[0] != y.images[0] for x, y in zip(a, c)) >= 24
    assert sum(x.question != y.question or x.answer != y.answer for x, y in zip(a, c)) >= 15
    # another split with the same seed is another sample
    d = generate_synthetic(25, seed=5, split="test")
    assert sum(x.images[0] != y.images[0] for x, y in zip(a, d)) >= 24
    # a shorter run is a prefix of a longer one, and start= continues it
    assert generate_synthetic(10, seed=5) == a[:10]
    assert generate_synthetic(5, seed=5, start=10) == a[10:15]


def test_ids_unique_and_stable(sample):
    ids = [it.id for it in sample]
    assert len(set(ids)) == len(ids)
    assert sample[0].id == "syn-train-11-0"
    assert sample[250].id == "syn-test-ood-11-0"
    assert all(it.split == "train" for it in sample[:250]) and all(it.split == "test" for it in sample[250:])
    validate_items(sample)  # the items pass the schema, images decode


# --------------------------------------------------------------------------------- boxes and pixels


def _pixels(item):
    return np.asarray(Image.open(io.BytesIO(item.images[0])).convert("RGB"))


def test_boxes_cover_drawn_objects(sample):
    for it in sample[::3]:
        img = _pixels(it)
        H, W, _ = img.shape
        assert (W, H) == (it.meta["width"], it.meta["height"]) == (128, 128)
        covered = np.zeros((H, W), dtype=bool)
        for o in it.meta["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000, o
            px1, py1 = int(x1 * W / 1000), int(y1 * H / 1000)
            px2, py2 = int(np.ceil(x2 * W / 1000)), int(np.ceil(y2 * H / 1000))
            rgb = np.array(NUMBER_COLORS[o["color"]] if o["shape"] == "number" else COLORS[o["color"]])
            crop = img[py1:py2, px1:px2]
            is_obj = (crop == rgb).all(-1)
            is_bg = (crop == np.array(BACKGROUND)).all(-1)
            assert (is_obj | is_bg).all(), f"{it.id}: another colour inside the box of {o}"
            ys, xs = np.nonzero(is_obj)
            assert len(xs) > 0, f"{it.id}: nothing drawn in the box of {o}"
            # the box is tight: the object's pixels reach every edge (within a pixel of rounding)
            assert xs.min() <= 1 and ys.min() <= 1, o
            assert xs.max() >= crop.shape[1] - 2 and ys.max() >= crop.shape[0] - 2, o
            if o["shape"] != "number":  # filled shapes: the box centre has the object's colour
                cx = int((x1 + x2) / 2 * W / 1000)
                cy = int((y1 + y2) / 2 * H / 1000)
                assert (img[cy, cx] == rgb).all(), f"{it.id}: centre of {o} is {img[cy, cx]}"
            covered[py1:py2, px1:px2] = True
        drawn = ~(img == np.array(BACKGROUND)).all(-1)
        assert not (drawn & ~covered).any(), f"{it.id}: pixels drawn outside every box"
        for e in it.meta["evidence"]:
            assert e["bbox"] in [o["bbox"] for o in it.meta["objects"]]
            assert isinstance(e["label"], str) and e["label"]


def test_size_attribute_is_visible(sample):
    """In every scene, each large shape is clearly bigger than each small shape of the same kind."""
    n = 0
    for it in sample:
        for shape in ("circle", "square", "triangle", "star", "diamond"):
            w = {z: [o["bbox"][2] - o["bbox"][0] for o in it.meta["objects"] if o["shape"] == shape and o["size"] == z]
                 for z in ("small", "large")}
            if w["small"] and w["large"]:
                assert min(w["large"]) > 1.4 * max(w["small"]), (it.id, shape, w)
                n += 1
    assert n > 50


def test_objects_do_not_overlap(sample):
    for it in sample[:100]:
        boxes = [o["bbox"] for o in it.meta["objects"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (it.id, a, b)


# ---------------------------------------------------------------------------------- answer-free


def test_method_and_traps_are_answer_free(sample):
    assert len(sample) >= 500
    n_traps = 0
    for it in sample:
        m = it.meta
        assert m["method"] and all(isinstance(s, str) and s for s in m["method"])
        forbidden = {it.answer.lower(), _given_answer(it).lower()}
        for line in m["method"] + m["traps"]:
            assert not _NUM_RE.search(line), f"{it.id}: number in {line!r}"
            for t in forbidden:
                assert not re.search(rf"\b{re.escape(t)}\b", line, re.IGNORECASE), f"{it.id}: {t!r} in {line!r}"
        for e in m["evidence"]:
            assert not _NUM_RE.search(e["label"])
            for t in forbidden:
                assert not re.search(rf"\b{re.escape(t)}\b", e["label"], re.IGNORECASE), (it.id, e)
        n_traps += len(m["traps"])
        # the worked reasoning does carry the values
        assert any(_given_answer(it) in step for step in m["reasoning"]), (it.id, m["reasoning"])
    assert n_traps > len(sample)  # traps are not empty boilerplate


def test_meta_format(sample):
    keys = {"generator", "family", "template", "difficulty", "ood", "seed", "index", "width", "height",
            "objects", "query", "evidence", "reasoning", "method", "traps"}
    for it in sample:
        assert set(it.meta) == keys
        for o in it.meta["objects"]:
            assert {"shape", "color", "size", "bbox"} <= set(o)
            assert ("value" in o) == (o["shape"] == "number")
        assert it.source == "synthetic"


# ---------------------------------------------------------------------------- in- vs out-of-distribution


def test_ood_differs_as_documented():
    idd = generate_synthetic(300, seed=2, difficulty=(1, 5))
    ood = generate_synthetic(300, seed=2, difficulty=(1, 5), ood=True, split="test")

    def combos(items):
        return [{(o["color"], o["shape"]) for o in it.meta["objects"]} & HELD_OUT for it in items]

    assert not any(combos(idd)), "held-out colour/shape pairs must never appear in-distribution"
    assert sum(bool(c) for c in combos(ood)) > len(ood) // 2

    def n_obj(items, d):
        return np.mean([len(it.meta["objects"]) for it in items if it.meta["difficulty"] == d])

    for d in range(1, 6):
        assert n_obj(ood, d) >= n_obj(idd, d) + 2, d

    def values(items):
        return [o["value"] for it in items for o in it.meta["objects"] if o["shape"] == "number"]

    assert values(idd) and max(values(idd)) <= 19
    assert values(ood) and min(values(ood)) >= 20

    def counts(items):
        return [int(it.answer) for it in items if it.meta["family"] == "count_attr"]

    assert max(counts(idd)) <= 5 and min(counts(idd)) >= 1
    assert max(counts(ood)) > 5 and min(counts(ood)) >= 2
    assert all(it.meta["ood"] for it in ood) and not any(it.meta["ood"] for it in idd)


def test_difficulty_grows_with_level():
    items = generate_synthetic(200, seed=4, families=["count_attr"], difficulty=(1, 5))
    by_d = {d: [it for it in items if it.meta["difficulty"] == d] for d in range(1, 6)}
    mean_objs = [np.mean([len(it.meta["objects"]) for it in by_d[d]]) for d in range(1, 6)]
    assert all(a < b for a, b in zip(mean_objs, mean_objs[1:])), mean_objs
    n_attrs = [np.mean([len(it.meta["query"]["target"]) for it in by_d[d]]) for d in range(1, 6)]
    assert n_attrs[0] == 1 and n_attrs[-1] == 3


# ------------------------------------------------------------------------------------ parameters


def test_families_difficulty_and_size_parameters():
    items = generate_synthetic(6, seed=1, families=["spatial", "arith_digits"], difficulty=3,
                               image_size=(96, 64))
    assert [it.meta["family"] for it in items] == ["spatial", "arith_digits"] * 3
    assert {it.meta["difficulty"] for it in items} == {3}
    assert Image.open(io.BytesIO(items[0].images[0])).size == (96, 64)
    assert items[0].meta["width"] == 96 and items[0].meta["height"] == 64
    one = generate_item(1, 0, "spatial", 3, image_size=(96, 64))
    assert one == items[0]
    with pytest.raises(ValueError, match="unknown family"):
        generate_synthetic(1, families=["nope"])
    with pytest.raises(ValueError, match="difficulty"):
        generate_synthetic(1, difficulty=(0, 9))
    with pytest.raises(ValueError, match="at least 64"):
        generate_synthetic(1, image_size=32)


def test_all_families_all_difficulties_small_and_large_images():
    for size in (64, 224):
        for fam in FAMILIES:
            for d in range(1, 6):
                for ood in (False, True):
                    it = generate_item(0, d, fam, d, image_size=size, ood=ood)
                    assert _recompute(it) == _given_answer(it), it.id


# ------------------------------------------------------------------------- the template registry


def test_every_template_is_registered_once_under_one_family():
    assert FAMILIES == ("count_attr", "spatial", "compare", "arith_count", "arith_digits")
    assert tuple(FAMILY_SPECS) == FAMILIES
    owners = Counter(t for spec in FAMILY_SPECS.values() for t in spec.templates)
    assert set(owners) == set(TEMPLATES) and set(owners.values()) == {1}
    assert len({id(fn) for fn in TEMPLATES.values()}) == len(TEMPLATES)  # one function per template


def test_items_name_the_template_that_drew_them(sample):
    """``meta.template`` is the registered template (``most``/``extreme`` add the attribute asked)."""
    seen: dict[str, set[str]] = {f: set() for f in FAMILIES}
    for it in sample:
        fam, tpl = it.meta["family"], it.meta["template"]
        base = tpl.rsplit("_", 1)[0] if tpl.startswith(("most_", "extreme_")) else tpl
        assert base in FAMILY_SPECS[fam].templates, (it.id, fam, tpl)
        seen[fam].add(base)
    assert seen == {f: set(spec.templates) for f, spec in FAMILY_SPECS.items()}


def test_a_template_called_alone_draws_its_own_question():
    for name, fn in TEMPLATES.items():
        fam = next(f for f, spec in FAMILY_SPECS.items() if name in spec.templates)
        d = 4 if name == "relation" else 5 if name in ("range", "extreme") else 3
        rng = random.Random(f"{name}-alone")
        _, drawn = FAMILY_SPECS[fam].pick(rng, d, False)  # what the family draws before its template
        scene = fn(rng, d, False, 128, 128, **drawn)
        assert scene["template"] == name or scene["template"].startswith(name + "_"), (name, scene["template"])
        assert scene["question"] and scene["png"].startswith(b"\x89PNG"), name
