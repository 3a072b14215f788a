"""Writing items (jsonl, parquet, images embedded) and the manifest that identifies a list of items."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptdpo.data.schema import Item, ItemError


def _image_bytes(ref: bytes | str, item_id: str, index: int) -> bytes:
    if isinstance(ref, bytes | bytearray):
        return bytes(ref)
    p = Path(ref)
    if not p.is_file():
        raise ItemError(item_id, f"images[{index}]", f"image file not found: {ref}")
    return p.read_bytes()


def _item_row(item: Item, encode) -> dict[str, Any]:
    return {
        "id": item.id,
        "images": [encode(_image_bytes(r, item.id, i)) for i, r in enumerate(item.images)],
        "question": item.question,
        "answer": item.answer,
        "choices": list(item.choices) if item.choices is not None else None,
        "solution": item.solution,
        "source": item.source,
        "split": item.split,
        "meta": item.meta,
    }


def save_items_jsonl(items: Sequence[Item], path: str | Path) -> Path:
    """Write items as jsonl, images embedded as base64 strings (paths are read and embedded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            row = _item_row(it, lambda b: base64.b64encode(b).decode("ascii"))
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def save_items_parquet(items: Sequence[Item], path: str | Path) -> Path:
    """Write items as parquet: images as a list of binary, choices as a list of strings, meta as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.string()), ("images", pa.list_(pa.binary())), ("question", pa.string()),
        ("answer", pa.string()), ("choices", pa.list_(pa.string())), ("solution", pa.string()),
        ("source", pa.string()), ("split", pa.string()), ("meta", pa.string()),
    ])
    rows = []
    for it in items:
        row = _item_row(it, lambda b: b)
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False, allow_nan=False)
        rows.append(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def manifest(items: Sequence[Item]) -> dict[str, Any]:
    """A summary of a list of items for the pipeline's ``data_manifest`` artifact.

    ``content_hash`` is a sha256 over, per item in order, its id, question, answer, choices and the
    sha256 of each image's bytes: any change to what the model sees or is scored against changes it.
    """
    h = hashlib.sha256()
    n_images = max_images = 0
    for it in items:
        img_hashes = [hashlib.sha256(_image_bytes(r, it.id, i)).hexdigest() for i, r in enumerate(it.images)]
        n_images += len(img_hashes)
        max_images = max(max_images, len(img_hashes))
        h.update(json.dumps([it.id, it.question, it.answer, it.choices, img_hashes],
                            ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    fams = Counter(it.meta.get("family") for it in items if isinstance(it.meta, dict) and it.meta.get("family"))
    out: dict[str, Any] = {
        "count": len(items),
        "splits": dict(sorted(Counter(it.split for it in items).items())),
        "sources": dict(sorted(Counter(it.source for it in items).items())),
        "n_images": n_images,
        "max_images_per_item": max_images,  # rollout engines cap images per prompt (vLLM limit_mm_per_prompt)
        "multiple_choice": sum(1 for it in items if it.choices),
        "content_hash": h.hexdigest(),
    }
    if fams:
        out["families"] = dict(sorted(fams.items()))
    return out
