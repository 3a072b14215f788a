"""Columns a dataset has that no Item field reads: warned about once per load, never dropped in silence.

A file whose image column is called ``image_path`` loads without the ``fields`` mapping, but every item
then has no image: the loader only looks at ``images`` and ``image``. :func:`unknown_columns_message`
names such columns, and for the ones that look like images, questions or answers it writes the
``fields`` mapping that fixes it. ``ignore_columns`` in the spec (a list, or true) silences it for
columns that are meant to be unused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ptdpo.data.spec import ITEM_FIELDS, DatasetSpec

# Column names people give images, questions and answers, most specific first.
IMAGE_LIKE = ("image_path", "image_paths", "image_file", "image_files", "img", "img_path", "img_file", "imgs",
              "image_url", "image_name", "image_id", "file_name", "filename", "file", "picture", "photo", "path")
QUESTION_LIKE = ("query", "prompt", "problem", "text", "instruction", "input", "question_text")
ANSWER_LIKE = ("label", "labels", "gt", "gt_answer", "ground_truth", "target", "answers", "output", "response")


class ColumnWarning(UserWarning):
    """A dataset column that no Item field reads (see :func:`unknown_columns_message`)."""


def read_columns(spec: DatasetSpec) -> set[str]:
    """The columns the loader reads for ``spec`` (mapped fields, default names, meta columns)."""
    out: set[str] = set()
    for name in ITEM_FIELDS:
        col = spec.fields.get(name, name)
        out.update([col] if isinstance(col, str) else col)
    if "images" not in spec.fields:
        out.update({"images", "image"})
    out.update(spec.meta_columns)
    if isinstance(spec.ignore_columns, list):
        out.update(spec.ignore_columns)
    return out


def unknown_columns(spec: DatasetSpec, seen: Iterable[str]) -> list[str]:
    """Columns of ``seen`` that nothing reads (index columns such as ``__index_level_0__`` excepted)."""
    if spec.ignore_columns is True:
        return []
    known = read_columns(spec)
    return sorted(c for c in seen if c not in known and not str(c).startswith("__"))


def _suggest(field: str, unknown: list[str], candidates: tuple[str, ...], mapped: bool) -> str | None:
    if mapped:
        return None
    lower = {c.lower(): c for c in unknown}
    for name in candidates:
        if name in lower:
            return lower[name]
    return None


def unknown_columns_message(spec: DatasetSpec, unknown: list[str], label: str, has_images: bool) -> str:
    """One readable paragraph: which columns are not read, and the ``fields`` mapping that reads the ones
    that look like the item's images, question or answer."""
    fixes = {}
    image = _suggest("images", unknown, IMAGE_LIKE, "images" in spec.fields)
    if image is not None:
        fixes["images"] = image
    for field, names in (("question", QUESTION_LIKE), ("answer", ANSWER_LIKE)):
        col = _suggest(field, unknown, names, field in spec.fields)
        if col is not None:
            fixes[field] = col
    msg = f"{label}: column(s) {unknown} are read by no Item field and are dropped."
    if image is not None:
        state = "the items have NO images" if not has_images else "they are not read as images"
        msg += (f" Column {image!r} looks like the images ({state}: the loader reads only 'images' or "
                "'image' unless told).")
    if fixes:
        msg += f" To read them, add to the dataset spec: \"fields\": {json.dumps({**spec.fields, **fixes})}."
    msg += (" To keep other columns, list them in \"meta_columns\"; to silence this, list them in "
            "\"ignore_columns\" (docs/data.md).")
    return msg
