"""Loading items from jsonl, parquet, Hugging Face datasets and the synthetic generator.

One entry point, :func:`load_items`, takes a dataset spec (a dict from a config, or a
:class:`DatasetSpec`)::

    {"format": "hf", "path": "AI4Math/MathVista", "split": "testmini", "revision": "main",
     "fields": {"id": "pid", "images": "decoded_image", "question": "question", "answer": "answer",
                "choices": "choices"},
     "limit": 100}

Formats: ``jsonl``, ``parquet``, ``hf`` (``datasets.load_dataset(path, name, split=..., revision=...,
data_files=...)``: a hub id, a local dataset folder, or a packaged builder such as ``"parquet"`` /
``"json"`` with ``data_files``), ``hf_disk`` (a ``save_to_disk`` folder) and ``synthetic``
(:func:`ptdpo.data.synthetic.generate_synthetic` with ``n``, ``seed``, ``families``, ``difficulty``,
``image_size``, ``ood``; ``split`` is the items' split).

**Field mapping.** ``fields`` maps an Item field to a column (default: the column of the same name).
``images`` may map to one column (holding one image or a list) or to a list of columns (``image_1``,
``image_2``, ...; empty ones skipped); without a mapping the ``images`` column is used, else ``image``.
``choices`` may map to a column holding a list, a dict ``{"A": ..., "B": ...}`` or a JSON/Python list
written as a string, or to a list of columns (``["A", "B", "C", "D"]``, empty ones dropped).
Without an ``id`` column the id is ``<id_prefix><row index>`` (default prefix ``<source>-<split>-``).
``meta_columns`` copies further columns into ``meta``. Columns nothing reads are named in one
:class:`~ptdpo.data.columns.ColumnWarning` per load (with the ``fields`` mapping for ones that look like
images, questions or answers, e.g. ``image_path``); ``ignore_columns`` silences it.
``answer_type`` (e.g. ``"vqa"``) is recorded in every item's ``meta`` for the reward to read.
The synthetic generator's keys (``n``, ``seed``, ...) are an error on a file dataset.

**Images** may be bytes, a path (relative to ``image_root`` if set, else to the data file's folder, or
absolute), a base64 string (plain or ``data:image/...;base64,``), a Hugging Face Image-feature dict
``{"bytes", "path"}`` or a PIL image (stored as PNG bytes). Paths stay paths unless ``embed_images`` is
set. ``images_archive`` (a zip or tar: a local file, or a file of the ``hf`` spec's hub repo) is
unpacked into ``image_root`` once before the rows are read (:mod:`ptdpo.data.archives`).
``strip_image_tokens`` removes ``<image>`` placeholders from questions (:mod:`ptdpo.data.text`): images
reach the chat as image parts. ``hub`` records a public set's provenance and is not read.

**Answers.** Numbers become strings (``3.0`` becomes ``"3"``). For multiple-choice rows
``answer_format`` says how the answer is given: ``auto`` (a letter, or exactly one option's text),
``letter``, ``text`` (an option's text) or ``index`` (0-based); the item's answer is always the letter.

Every problem names the file (or dataset) and row, the item id and the field, e.g.
``data.jsonl line 18 (item 'q17'), field 'answer': missing``. jsonl positions are 1-based line
numbers, parquet and datasets positions are 0-based row indices.

This module maps rows onto items; the spec is :mod:`ptdpo.data.spec`, reading rows and images
:mod:`ptdpo.data.sources`, writing items and the manifest :mod:`ptdpo.data.writers` (all importable
from here as before).
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from pathlib import Path
from typing import Any

from ptdpo.answers.choices import ANSWER_FORMATS, gold_choice, option_hits
from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.archives import prepare_image_root
from ptdpo.data.columns import ColumnWarning, unknown_columns, unknown_columns_message
from ptdpo.data.schema import (
    Item,
    ItemError,
    find_problems,
    open_image,
    raise_problems,
)
from ptdpo.data.sources import image_ref, read_rows
from ptdpo.data.spec import FORMATS, ITEM_FIELDS, DatasetSpec, SpecError
from ptdpo.data.text import strip_image_tokens
from ptdpo.data.writers import manifest, save_items_jsonl, save_items_parquet

__all__ = [
    "ANSWER_FORMATS", "FORMATS", "ITEM_FIELDS", "DatasetSpec", "SpecError", "load_items", "manifest",
    "save_items_jsonl", "save_items_parquet",
]


# --------------------------------------------------------------------------------------- conversion


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _scalar_str(v: Any, item_id: str | None, fname: str, where: str) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, str):
        return v
    raise ItemError(item_id, fname, f"must be a string or a number, got {type(v).__name__} {str(v)[:40]!r}", where)



def _parse_choices(v: Any, item_id: str | None, where: str, column: str) -> list[str] | None:
    if _missing(v):
        return None
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return None
        parsed = None
        try:
            parsed = json.loads(s)
        except ValueError:
            try:
                parsed = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                parsed = None
        if not isinstance(parsed, list | tuple | dict):
            raise ItemError(item_id, "choices", f"column {column!r} holds a string that is not a list of "
                                                f"options: {s[:60]!r}", where)
        v = parsed
    if isinstance(v, dict):
        keys = sorted(k for k in v if not _missing(v[k]))
        v = [v[k] for k in keys]
    if not isinstance(v, list | tuple):
        raise ItemError(item_id, "choices", f"column {column!r}: expected a list or dict of options, got "
                                            f"{type(v).__name__}", where)
    out = [_scalar_str(c, item_id, "choices", where).strip() for c in v if not _missing(c)]
    return out or None


def _normalise_answer(answer: str, choices: list[str] | None, fmt: str, item_id: str | None, where: str) -> str:
    """The option letter a multiple-choice answer names, read the way rewards and the audit read it
    (:func:`ptdpo.answers.gold_choice`: a letter, an option's text such as "The cube", or an index)."""
    if not choices:
        return answer
    a = answer.strip()
    options = gold_choice(a, choices, fmt)
    if options is not None and len(options) == 1:
        return CHOICE_LETTERS[next(iter(options))]
    if options is not None:
        named = ", ".join(CHOICE_LETTERS[i] for i in sorted(options))
        raise ItemError(item_id, "answer", f"{a!r} names several options ({named}); an item has one answer", where)
    if fmt in ("auto", "text") and len(option_hits(a, choices)) > 1:
        raise ItemError(item_id, "answer", f"{a!r} matches several options", where)
    if fmt == "index":
        raise ItemError(item_id, "answer", f"{a!r} is not an option index 0..{len(choices) - 1}", where)
    expected = {"auto": "an option letter or an option's text", "letter": "an option letter",
                "text": "an option's text"}[fmt]
    raise ItemError(item_id, "answer", f"{a[:60]!r} is not {expected} ({len(choices)} options)", where)


class _RowConverter:
    def __init__(self, spec: DatasetSpec, base: Path | None, source: str, split: str, id_prefix: str):
        self.spec, self.base, self.source, self.split, self.id_prefix = spec, base, source, split, id_prefix
        self.f = spec.fields

    def _col(self, row: dict, fname: str) -> tuple[Any, str, bool]:
        """(value, column, explicitly mapped)."""
        if fname in self.f:
            col = self.f[fname]
            return row.get(col), col, True
        return row.get(fname), fname, False

    def __call__(self, row: Any, idx: int, where: str) -> Item:
        if not isinstance(row, dict):
            raise ItemError(None, "<row>", f"expected a JSON object, got {type(row).__name__}", where)
        f = self.f
        # id
        if "id" in f:
            if f["id"] not in row or _missing(row[f["id"]]):
                raise ItemError(None, "id", f"missing (column {f['id']!r})", where)
            iid = _scalar_str(row[f["id"]], None, "id", where)
        elif not _missing(row.get("id")):
            iid = row["id"] if isinstance(row["id"], str) else _scalar_str(row["id"], None, "id", where)
        else:
            iid = f"{self.id_prefix}{idx}"
        problems: list[ItemError] = []

        def req(fname: str) -> str | None:
            v, col, _ = self._col(row, fname)
            if _missing(v):
                problems.append(ItemError(iid, fname, f"missing (column {col!r})", where))
                return None
            try:
                return _scalar_str(v, iid, fname, where)
            except ItemError as e:
                problems.append(e)
                return None

        question = req("question")
        if question is not None and self.spec.strip_image_tokens:
            question = strip_image_tokens(question)
        answer = req("answer")
        # choices
        choices = None
        try:
            if isinstance(f.get("choices"), list):
                vals = [row.get(c) for c in f["choices"]]
                choices = _parse_choices([v for v in vals if not (_missing(v) or v == "")], iid, where,
                                         "+".join(f["choices"]))
            else:
                v, col, _ = self._col(row, "choices")
                choices = _parse_choices(v, iid, where, col)
        except ItemError as e:
            problems.append(e)
        if answer is not None and answer.strip():
            try:
                answer = _normalise_answer(answer, choices, self.spec.answer_format, iid, where)
            except ItemError as e:
                problems.append(e)
        # images
        images: list[bytes | str] = []
        m = f.get("images")
        if isinstance(m, list):  # several columns, each holding an image, a list of them or nothing
            raw = []
            for c in m:
                v = row.get(c)
                raw.extend(v if isinstance(v, list | tuple) else [v])
        elif m is not None:
            raw = row.get(m)
        else:
            raw = row.get("images") if "images" in row else row.get("image")
        if _missing(raw):
            raw = []
        elif not isinstance(raw, list | tuple):
            raw = [raw]
        for i, v in enumerate(x for x in raw if not _missing(x)):
            try:
                images.append(image_ref(v, self.base, self.spec.embed_images, iid, f"images[{i}]", where))
            except ItemError as e:
                problems.append(e)
        # optional text fields
        solution = None
        v, _, _ = self._col(row, "solution")
        if not _missing(v):
            try:
                solution = _scalar_str(v, iid, "solution", where)
            except ItemError as e:
                problems.append(e)
        v, _, _ = self._col(row, "source")
        source = self.source if _missing(v) else str(v)
        v, _, _ = self._col(row, "split")
        split = self.split if _missing(v) else str(v)
        # meta
        meta: dict[str, Any] = {}
        v, col, _ = self._col(row, "meta")
        if not _missing(v):
            if isinstance(v, str) and v.strip():
                try:
                    v = json.loads(v)
                except ValueError as e:
                    problems.append(ItemError(iid, "meta", f"column {col!r} is not JSON ({e})", where))
                    v = {}
            if isinstance(v, dict):
                meta.update(v)
            elif v != "":
                problems.append(ItemError(iid, "meta", f"column {col!r} must hold a dict, got "
                                                       f"{type(v).__name__}", where))
        for c in self.spec.meta_columns:
            if c not in row:
                problems.append(ItemError(iid, "meta", f"meta column {c!r} not in the row", where))
            elif not isinstance(row[c], bytes | bytearray):
                meta[c] = None if _missing(row[c]) else row[c]
        if problems and self.spec.check_images:  # the item is rejected anyway: report its images too
            for i, ref in enumerate(images):
                try:
                    open_image(ref, iid, i)
                except ItemError as e:
                    problems.append(ItemError(iid, e.field_name, e.problem, where))
        raise_problems(problems)
        return Item(id=iid, images=images, question=question, answer=answer, choices=choices,
                    solution=solution, source=source, split=split, meta=meta)

# ------------------------------------------------------------------------------------------ loading


def load_items(spec: dict[str, Any] | DatasetSpec, base_dir: str | Path | None = None) -> list[Item]:
    """Load, map and validate the items a spec describes; relative paths are taken from ``base_dir``.

    Raises :class:`SpecError` for an unusable spec and :class:`~ptdpo.data.schema.ItemError` (one error
    listing every problem found, each with its file/row, item id and field) for bad rows.
    """
    spec = DatasetSpec.from_dict(spec)
    base = Path(base_dir) if base_dir is not None else None
    if spec.format == "synthetic":
        from ptdpo.data.synthetic import generate_synthetic

        diff = spec.difficulty if isinstance(spec.difficulty, int) else tuple(spec.difficulty)
        size = spec.image_size if isinstance(spec.image_size, int) else tuple(spec.image_size)
        n = spec.n if spec.n is not None else spec.limit
        if spec.limit is not None:
            n = min(n, spec.limit)
        items = generate_synthetic(n, seed=spec.seed, families=spec.families, split=spec.split or "train",
                                   difficulty=diff, image_size=size, ood=spec.ood)
        if spec.source:
            for it in items:
                it.source = spec.source
        problems = find_problems(items, check_images=spec.check_images)
        raise_problems(problems)
        return _with_answer_type(items, spec)

    image_root = prepare_image_root(spec, base)  # unpacks images_archive there first, once
    rows, img_base, default_source = read_rows(spec, base)
    if image_root is not None:
        img_base = image_root
    source = spec.source or default_source
    split = spec.split or "train"
    id_prefix = spec.id_prefix if spec.id_prefix is not None else (
        f"{source}-{spec.split}-" if spec.split else f"{source}-")
    convert = _RowConverter(spec, img_base, source, split, id_prefix)
    items: list[Item] = []
    locations: list[str] = []
    problems: list[ItemError] = []
    columns: set[str] = set()
    for idx, (row, where) in enumerate(rows):
        if isinstance(row, ItemError):
            problems.append(row)
            continue
        if isinstance(row, dict):
            columns.update(row)
        try:
            items.append(convert(row, idx, where))
            locations.append(where)
        except ItemError as e:
            problems.extend(getattr(e, "problems", [e]))
    problems.extend(find_problems(items, check_images=spec.check_images, locations=locations))
    _warn_unknown_columns(spec, columns, source, items)
    raise_problems(problems)
    return _with_answer_type(items, spec)


def _warn_unknown_columns(spec: DatasetSpec, columns: set[str], label: str, items: list[Item]) -> None:
    """One warning per load naming the columns no field reads (:mod:`ptdpo.data.columns`)."""
    unknown = unknown_columns(spec, columns)
    if unknown:
        has_images = any(it.images for it in items)
        warnings.warn(unknown_columns_message(spec, unknown, label, has_images), ColumnWarning, stacklevel=3)


def _with_answer_type(items: list[Item], spec: DatasetSpec) -> list[Item]:
    """``spec.answer_type`` recorded as every item's ``meta["answer_type"]`` (what the reward reads)."""
    if spec.answer_type is not None:
        for it in items:
            it.meta["answer_type"] = spec.answer_type
    return items
