"""Reading a dataset's raw rows (jsonl, parquet, Hugging Face datasets) and the images they refer to.

Rows come with a location label for error messages (``data.jsonl line 18``, ``x.parquet row 3``,
``AI4Math/MathVista[testmini] row 7``); an image value in a row (bytes, a path relative to the data
file's folder, base64, a Hugging Face Image-feature dict or a PIL image) becomes bytes or an absolute
path (:func:`image_ref`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ptdpo.data.schema import ItemError
from ptdpo.data.spec import DatasetSpec, SpecError

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


# ------------------------------------------------------------------------------------------- images


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


def image_ref(v: Any, base: Path | None, embed: bool, item_id: str | None, fname: str, where: str) -> bytes | str:
    """One image value (bytes, path, base64, HF dict, PIL image) as bytes or an absolute path."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, dict):
        if v.get("bytes") is not None:
            return image_ref(v["bytes"], base, embed, item_id, fname, where)
        if v.get("path"):
            return image_ref(str(v["path"]), base, embed, item_id, fname, where)
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
            looked = str(p) if len(str(p)) <= 300 else "..." + str(p)[-297:]  # the end names the file
            raise ItemError(item_id, fname, f"image file not found: {shown} (looked at {looked})", where)
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


# --------------------------------------------------------------------------------------------- rows


def _decode_line(raw: bytes, lineno: int) -> str:
    """One line of a jsonl file as text; bytes that are not UTF-8 raise ValueError naming the column
    (a byte offset within the line) and the bytes around it."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM on the first line is not data
    except UnicodeDecodeError as e:
        around = raw[max(0, e.start - 12):e.end + 12]
        raise ValueError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {e.start + 1} ({e.reason}), near "
                         f"{around!r}; save the file as UTF-8") from e


def _id_of_undecodable(raw: bytes, id_field: str) -> str | None:
    """The item id of a line that is not UTF-8, read with the bad bytes replaced, for the message."""
    try:
        row = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    value = row.get(id_field) if isinstance(row, dict) else None
    return str(value) if isinstance(value, str | int) else None


def _read_jsonl(path: Path, limit: int | None, id_field: str = "id") -> Iterator[tuple[Any, str]]:
    n = 0
    with open(path, "rb") as fh:  # decoded line by line, so a bad byte is reported with its line
        for lineno, raw in enumerate(fh, start=1):
            if limit is not None and n >= limit:
                return
            where = f"{path.name} line {lineno}"
            try:
                line = _decode_line(raw, lineno)
            except ValueError as e:
                yield ItemError(_id_of_undecodable(raw, id_field), "<line>", str(e), where), where
                n += 1
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                yield ItemError(None, "<line>", f"invalid JSON ({e})", where), where
            else:
                yield row, where
            n += 1


def _read_parquet(path: Path, limit: int | None) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - Arrow's errors name no file
        raise SpecError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    i = 0
    batches = pf.iter_batches(batch_size=256)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - a corrupt page: say where reading stopped
            raise SpecError(f"{path}: cannot read the rows from row {i} on ({type(e).__name__}: {e})") from e
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
    tables = iter(ds.with_format("arrow").iter(batch_size=256))
    while True:
        try:
            table = next(tables)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - the dataset's files are damaged: say where reading stopped
            raise SpecError(f"{label}: cannot read the rows from row {i} on ({type(e).__name__}: {e})") from e
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


def is_hub_id(path: str | None, base_dir: Path | None = None) -> bool:
    """``owner/name`` that is not a local file or folder (relative to ``base_dir`` or the working folder)."""
    if not path or path.count("/") != 1 or path.startswith((".", "/", "~")):
        return False
    return not _resolve(path, base_dir).exists() and not Path(path).expanduser().exists()


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


def read_rows(spec: DatasetSpec, base_dir: Path | None) -> tuple[Iterable[tuple[Any, str]], Path | None, str]:
    """(rows with their location labels, folder for relative image paths, default source name)."""
    if spec.format == "jsonl":
        p = _resolve(spec.path, base_dir)
        if not p.is_file():
            raise SpecError(f"jsonl file not found: {p}")
        id_column = spec.fields.get("id", "id")
        return _read_jsonl(p, spec.limit, id_column if isinstance(id_column, str) else "id"), p.parent, p.stem
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
    hub = is_hub_id(spec.path, base_dir)
    # data_files of a hub dataset are paths inside its repo, not local files
    data_files = spec.data_files if hub else _local_data_files(spec.data_files, base_dir)
    kwargs: dict[str, Any] = {}
    if spec.cache_dir:
        kwargs["cache_dir"] = str(_resolve(spec.cache_dir, base_dir))
    if data_files is not None:
        kwargs["data_files"] = data_files
    if spec.revision:
        kwargs["revision"] = spec.revision
    label = spec.path if spec.path else "dataset"
    try:
        dd = datasets.load_dataset(path, spec.name, split=spec.split, **kwargs)
    except (SpecError, ImportError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a bad line in a json data file, named by no location
        files = f" (data_files {data_files!r})" if data_files is not None else ""
        raise SpecError(f"cannot load dataset {path!r}{files}: {type(e).__name__}: {e}") from e
    if spec.name:
        label += f"/{spec.name}"
    ds = _pick_split(dd, spec.split, label)
    first = _first_file(data_files)
    if first and "://" not in first and not hub:
        img_base = Path(first).parent
        default_source = Path(first).stem
    else:
        img_base = local if local.is_dir() else base_dir
        default_source = (spec.path or "dataset").rstrip("/").split("/")[-1]
    if spec.split:
        label += f"[{spec.split}]"
    return _iter_dataset(ds, label, spec.limit), img_base, default_source
