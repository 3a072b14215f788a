"""Synthetic items from scenes: ids, the per-item random stream, the answer-free checks, and the batch.

Generation is deterministic: item ``index`` of ``(seed, split, ood)`` depends on nothing else, so a
shorter run is a prefix of a longer one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item
from ptdpo.data.synthetic.registry import ALL_FAMILY_SPECS, FAMILIES, draw_scene
from ptdpo.data.synthetic.scene import BASE_OBJECTS, Retry, answer_free, mentions_term

GENERATOR_VERSION = "synthetic-v1"


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
    if family not in ALL_FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; known: {list(ALL_FAMILY_SPECS)}")
    if difficulty not in BASE_OBJECTS:
        raise ValueError(f"difficulty must be 1..5, got {difficulty}")
    W, H = _size(image_size)
    iid = synthetic_id(seed, index, split, ood)
    rng = random.Random(f"{GENERATOR_VERSION}|{iid}|{family}|{difficulty}|{W}x{H}")
    for _attempt in range(50):
        try:
            r = draw_scene(family, rng, difficulty, ood, W, H)
            break
        except Retry:
            continue
    else:  # pragma: no cover - would be a generator bug
        raise RuntimeError(f"could not generate {iid} ({family}, difficulty {difficulty})")
    answer, choices = r["answer"], r.get("choices")
    forbidden = [answer] + ([choices[CHOICE_LETTERS.index(answer)]] if choices else [])
    for line in r["method"]:
        if not answer_free(line, forbidden):  # pragma: no cover - a template bug
            raise RuntimeError(f"{iid}: method step is not answer-free: {line!r}")
    traps = [t for t in dict.fromkeys(r["traps"]) if answer_free(t, forbidden)][:3]
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
        if f not in ALL_FAMILY_SPECS:
            raise ValueError(f"unknown family {f!r}; known: {list(ALL_FAMILY_SPECS)}")
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

