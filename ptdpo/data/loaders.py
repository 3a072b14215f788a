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
``meta_columns`` copies further columns into ``meta``.

**Images** may be bytes, a path (relative to the data file's folder, or absolute), a base64 string
(plain or ``data:image/...;base64,``), a Hugging Face Image-feature dict ``{"bytes", "path"}`` or a
PIL image (stored as PNG bytes). Paths stay paths unless ``embed_images`` is set.

**Answers.** Numbers become strings (``3.0`` becomes ``"3"``). For multiple-choice rows
``answer_format`` says how the answer is given: ``auto`` (a letter, or exactly one option's text),
``letter``, ``text`` (an option's text) or ``index`` (0-based); the item's answer is always the letter.

Every problem names the file (or dataset) and row, the item id and the field, e.g.
``data.jsonl line 18 (item 'q17'), field 'answer': missing``. jsonl positions are 1-based line
numbers, parquet and datasets positions are 0-based row indices.
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ptdpo.answers.choices import ANSWER_FORMATS, gold_choice, option_hits
from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import (
    Item,
    ItemError,
    find_problems,
    open_image,
    raise_problems,
)

FORMATS = ("jsonl", "parquet", "hf", "hf_disk", "synthetic")
ITEM_FIELDS = ("id", "images", "question", "answer", "choices", "solution", "source", "split", "meta")

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class SpecError(ValueError):
    """A dataset spec that cannot be used (unknown key, bad format, missing path...)."""


@dataclass
class DatasetSpec:
    """Where items come from and how their columns map onto :class:`~ptdpo.data.schema.Item` fields."""

    format: str
    path: str | None = None
    name: str | None = None
    split: str | None = None
    revision: str | None = None
    data_files: str | list[str] | dict[str, Any] | None = None
    fields: dict[str, str | list[str]] = field(default_factory=dict)
    limit: int | None = None
    source: str | None = None
    id_prefix: str | None = None
    answer_format: str = "auto"
    meta_columns: list[str] = field(default_factory=list)
    embed_images: bool = False
    check_images: bool = True
    cache_dir: str | None = None
    # synthetic only
    n: int | None = None
    seed: int = 0
    families: list[str] | None = None
    difficulty: int | list[int] = field(default_factory=lambda: [1, 5])
    image_size: int | list[int] = 128
    ood: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | DatasetSpec) -> DatasetSpec:
        if isinstance(d, DatasetSpec):
            spec = d
        else:
            if not isinstance(d, dict):
                raise SpecError(f"a dataset spec must be a dict, got {type(d).__name__}")
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(d) - set(known))
            if unknown:
                raise SpecError(f"unknown dataset spec key(s) {unknown}; known: {known}")
            if "format" not in d:
                raise SpecError(f"dataset spec needs 'format' (one of {list(FORMATS)})")
            spec = cls(**d)
        spec.check()
        return spec

    def check(self) -> None:
        if self.format not in FORMATS:
            raise SpecError(f"unknown format {self.format!r}; known: {list(FORMATS)}")
        if self.format in ("jsonl", "parquet", "hf_disk") and not self.path:
            raise SpecError(f"format {self.format!r} needs 'path'")
        if self.format == "hf" and not (self.path or self.data_files):
            raise SpecError("format 'hf' needs 'path' (a hub id, a folder or a builder such as 'json')")
        if self.format == "synthetic" and not (self.n or self.limit):
            raise SpecError("format 'synthetic' needs 'n' (or 'limit')")
        if self.answer_format not in ANSWER_FORMATS:
            raise SpecError(f"unknown answer_format {self.answer_format!r}; known: {list(ANSWER_FORMATS)}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise SpecError(f"limit must be a non-negative int, got {self.limit!r}")
        if not isinstance(self.fields, dict):
            raise SpecError(f"fields must be a dict, got {type(self.fields).__name__}")
        for k, v in self.fields.items():
            if k not in ITEM_FIELDS:
                raise SpecError(f"fields: {k!r} is not an Item field; known: {list(ITEM_FIELDS)}")
            multi = k in ("images", "choices")
            if not (isinstance(v, str) or (multi and isinstance(v, list) and all(isinstance(c, str) for c in v))):
                kind = "a column name or a list of column names" if multi else "a column name"
                raise SpecError(f"fields[{k!r}] must be {kind}, got {v!r}")


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


def _looks_base64_image(s: str) -> bytes | None:
    if s.startswith("data:"):
        head, _, data = s.partition(",")
        if ";base64" not in head:
            return None
        return base64.b64decode(data)
    if len(s) < 16:
        return None
    try:
        head = base64.b64decode(s[:24], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(s) > 260:  # far too long for a path: base64 data, decodable or not (validation says)
        return base64.b64decode("".join(s.split()), validate=True)
    if not any(head.startswith(m) for m in _IMAGE_MAGIC) and not (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return base64.b64decode("".join(s.split()), validate=True)


def _image_ref(v: Any, base: Path | None, embed: bool, item_id: str | None, fname: str, where: str) -> bytes | str:
    """One image value (bytes, path, base64, HF dict, PIL image) as bytes or an absolute path."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, dict):
        if v.get("bytes") is not None:
            return _image_ref(v["bytes"], base, embed, item_id, fname, where)
        if v.get("path"):
            return _image_ref(str(v["path"]), base, embed, item_id, fname, where)
        raise ItemError(item_id, fname, "image dict has neither 'bytes' nor 'path'", where)
    if isinstance(v, str):
        s = v.strip()
        try:
            data = _looks_base64_image(s)
        except (binascii.Error, ValueError) as e:
            raise ItemError(item_id, fname, f"invalid base64 image data ({e})", where) from e
        if data is not None:
            return data
        p = Path(s).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        try:
            exists = p.is_file()
        except OSError:
            exists = False
        if not exists:
            shown = s if len(s) <= 80 else s[:77] + "..."
            raise ItemError(item_id, fname, f"image file not found: {shown} (looked at {str(p)[:120]})", where)
        return p.read_bytes() if embed else str(p.resolve())
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(v, Image.Image):
        buf = io.BytesIO()
        v.save(buf, format="PNG")
        return buf.getvalue()
    raise ItemError(item_id, fname, f"cannot use {type(v).__name__} as an image (bytes, path, base64, "
                                    "{'bytes','path'} dict or PIL image)", where)


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
                images.append(_image_ref(v, self.base, self.spec.embed_images, iid, f"images[{i}]", where))
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


# ------------------------------------------------------------------------------------------ sources


def _read_jsonl(path: Path, limit: int | None) -> Iterator[tuple[Any, str]]:
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and n >= limit:
                return
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                row = json.loads(line)
            except ValueError as e:
                yield ItemError(None, "<line>", f"invalid JSON ({e})", where), where
            else:
                yield row, where
            n += 1


def _read_parquet(path: Path, limit: int | None) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    i = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            if limit is not None and i >= limit:
                return
            yield row, f"{path.name} row {i}"
            i += 1


def _iter_dataset(ds: Any, label: str, limit: int | None) -> Iterator[tuple[Any, str]]:
    """Rows of a ``datasets.Dataset`` through its Arrow format: images stay undecoded {bytes, path} dicts."""
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    i = 0
    for table in ds.with_format("arrow").iter(batch_size=256):
        for row in table.to_pylist():
            yield row, f"{label} row {i}"
            i += 1


def _pick_split(dd: Any, split: str | None, label: str) -> Any:
    import datasets

    if isinstance(dd, datasets.DatasetDict):
        if split is None:
            if len(dd) == 1:
                return next(iter(dd.values()))
            raise SpecError(f"{label} has splits {sorted(dd)}; say which one with 'split'")
        if split not in dd:
            raise SpecError(f"{label} has no split {split!r}; it has {sorted(dd)}")
        return dd[split]
    return dd


def _resolve(p: str, base_dir: Path | None) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() or base_dir is None else base_dir / q


def _local_data_files(data_files: Any, base_dir: Path | None) -> Any:
    if data_files is None or base_dir is None:
        return data_files
    if isinstance(data_files, str):
        return str(_resolve(data_files, base_dir)) if "://" not in data_files else data_files
    if isinstance(data_files, list):
        return [_local_data_files(x, base_dir) for x in data_files]
    if isinstance(data_files, dict):
        return {k: _local_data_files(v, base_dir) for k, v in data_files.items()}
    return data_files


def _first_file(data_files: Any) -> str | None:
    if isinstance(data_files, str):
        return data_files
    if isinstance(data_files, list) and data_files:
        return _first_file(data_files[0])
    if isinstance(data_files, dict) and data_files:
        return _first_file(next(iter(data_files.values())))
    return None


def _builder_for(data_file: str | None) -> str:
    """The packaged ``datasets`` builder for a data file, when a spec gives data_files but no path."""
    suffixes = Path(data_file or "").suffixes
    for ext, builder in ((".parquet", "parquet"), (".jsonl", "json"), (".json", "json"), (".csv", "csv"),
                         (".arrow", "arrow")):
        if ext in suffixes:
            return builder
    raise SpecError(f"format 'hf' with data_files {data_file!r} needs 'path' (the builder: parquet, json, csv)")


def _rows(spec: DatasetSpec, base_dir: Path | None) -> tuple[Iterable[tuple[Any, str]], Path | None, str]:
    """(rows with their location labels, folder for relative image paths, default source name)."""
    if spec.format == "jsonl":
        p = _resolve(spec.path, base_dir)
        if not p.is_file():
            raise SpecError(f"jsonl file not found: {p}")
        return _read_jsonl(p, spec.limit), p.parent, p.stem
    if spec.format == "parquet":
        p = _resolve(spec.path, base_dir)
        if not p.is_file():
            raise SpecError(f"parquet file not found: {p}")
        return _read_parquet(p, spec.limit), p.parent, p.stem
    import datasets

    if spec.format == "hf_disk":
        p = _resolve(spec.path, base_dir)
        if not p.exists():
            raise SpecError(f"dataset folder not found: {p}")
        ds = _pick_split(datasets.load_from_disk(str(p)), spec.split, str(p))
        return _iter_dataset(ds, p.name, spec.limit), p, p.name
    # hf
    path = spec.path or _builder_for(_first_file(spec.data_files))
    local = _resolve(path, base_dir)
    if base_dir is not None and local.exists():
        path = str(local)
    data_files = _local_data_files(spec.data_files, base_dir)
    kwargs: dict[str, Any] = {}
    if spec.cache_dir:
        kwargs["cache_dir"] = str(_resolve(spec.cache_dir, base_dir))
    if data_files is not None:
        kwargs["data_files"] = data_files
    if spec.revision:
        kwargs["revision"] = spec.revision
    dd = datasets.load_dataset(path, spec.name, split=spec.split, **kwargs)
    label = spec.path if spec.path else "dataset"
    if spec.name:
        label += f"/{spec.name}"
    ds = _pick_split(dd, spec.split, label)
    first = _first_file(data_files)
    if first and "://" not in first:
        img_base = Path(first).parent
        default_source = Path(first).stem
    else:
        img_base = local if local.is_dir() else base_dir
        default_source = (spec.path or "dataset").rstrip("/").split("/")[-1]
    if spec.split:
        label += f"[{spec.split}]"
    return _iter_dataset(ds, label, spec.limit), img_base, default_source


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
        return items

    rows, img_base, default_source = _rows(spec, base)
    source = spec.source or default_source
    split = spec.split or "train"
    id_prefix = spec.id_prefix if spec.id_prefix is not None else (
        f"{source}-{spec.split}-" if spec.split else f"{source}-")
    convert = _RowConverter(spec, img_base, source, split, id_prefix)
    items: list[Item] = []
    locations: list[str] = []
    problems: list[ItemError] = []
    for idx, (row, where) in enumerate(rows):
        if isinstance(row, ItemError):
            problems.append(row)
            continue
        try:
            items.append(convert(row, idx, where))
            locations.append(where)
        except ItemError as e:
            problems.extend(getattr(e, "problems", [e]))
    problems.extend(find_problems(items, check_images=spec.check_images, locations=locations))
    raise_problems(problems)
    return items


# ------------------------------------------------------------------------------------------ writing


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
    n_images = 0
    for it in items:
        img_hashes = [hashlib.sha256(_image_bytes(r, it.id, i)).hexdigest() for i, r in enumerate(it.images)]
        n_images += len(img_hashes)
        h.update(json.dumps([it.id, it.question, it.answer, it.choices, img_hashes],
                            ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    fams = Counter(it.meta.get("family") for it in items if isinstance(it.meta, dict) and it.meta.get("family"))
    out: dict[str, Any] = {
        "count": len(items),
        "splits": dict(sorted(Counter(it.split for it in items).items())),
        "sources": dict(sorted(Counter(it.source for it in items).items())),
        "n_images": n_images,
        "multiple_choice": sum(1 for it in items if it.choices),
        "content_hash": h.hexdigest(),
    }
    if fams:
        out["families"] = dict(sorted(fams.items()))
    return out
