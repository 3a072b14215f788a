"""The inputs every side of a comparison reads: one saved policy folder and one prompt set on disk."""

from __future__ import annotations

import json
from pathlib import Path


def save_inputs(workdir: Path, size: str, n_prompts: int, image_size: int, purpose: str) -> tuple[Path, Path]:
    """(the ``tiny:<size>`` policy saved with ``save_policy`` (float32), ``prompts.json``): ``n_prompts``
    synthetic ``count_attr`` items as chats (``build_messages``, the ``boxed`` template, one image
    placeholder) with their images as PNG files beside it (lossless: every reader gets the same pixels)."""
    from ptdpo.data.schema import item_images
    from ptdpo.data.synthetic import generate_synthetic
    from ptdpo.models import load_policy, save_policy
    from ptdpo.prompts import build_messages

    model, processor = load_policy(f"tiny:{size}", dtype="float32")
    policy = save_policy(model, processor, workdir / "policy", metadata={"purpose": purpose})
    items = generate_synthetic(n_prompts, seed=0, families=["count_attr"], image_size=image_size)
    records = []
    for i, it in enumerate(items):
        (image,) = item_images(it)
        image.save(workdir / f"image_{i}.png")
        records.append({"id": it.id, "messages": build_messages(it, template="boxed"), "image": f"image_{i}.png"})
    data = workdir / "prompts.json"
    data.write_text(json.dumps(records, indent=1))
    return policy, data
