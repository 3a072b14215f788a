"""The dataset spec: where items come from and how their columns map onto Item fields.

See :mod:`ptdpo.data.loaders` for what each key means; :func:`ptdpo.data.loaders.load_items` takes a
spec dict or a :class:`DatasetSpec`. Images kept outside the data file (a folder, or an archive that
:mod:`ptdpo.data.archives` fetches and unpacks once) are found through ``image_root``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ptdpo.answers.choices import ANSWER_FORMATS
from ptdpo.answers.match import ANSWER_TYPES

FORMATS = ("jsonl", "parquet", "hf", "hf_disk", "synthetic")
ITEM_FIELDS = ("id", "images", "question", "answer", "choices", "solution", "source", "split", "meta")
# Keys that only the synthetic generator reads; a file dataset given one is almost always a spec that
# inherited them from a synthetic parent through ``extends``.
SYNTHETIC_KEYS = ("n", "seed", "families", "difficulty", "image_size", "ood")


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
    # Relative image paths are taken from this folder (default: the data file's folder). With
    # ``images_archive`` it is where the archive is unpacked (once; see ptdpo.data.archives).
    image_root: str | None = None
    # A zip/tar of the images: a local file, or (format hf with a hub id) a file of that dataset repo.
    images_archive: str | None = None
    # Drop "<image>" placeholders from the question: images go into the chat as image parts.
    strip_image_tokens: bool = False
    # Provenance of a public dataset: its id, the columns assumed, what was checked (not used to load).
    hub: dict[str, Any] = field(default_factory=dict)
    # How the reward compares answers for these items (ptdpo.answers.ANSWER_TYPES, e.g. "vqa"); recorded
    # as every item's meta["answer_type"]. None: the item's own meta, else "auto".
    answer_type: str | None = None
    # Columns that are read by nothing and should not be warned about (True: none warned about).
    ignore_columns: bool | list[str] = False
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
            _check_synthetic_keys(d)
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
        if self.answer_type is not None and self.answer_type not in ANSWER_TYPES:
            raise SpecError(f"unknown answer_type {self.answer_type!r}; known: {list(ANSWER_TYPES)}")
        if self.answer_format not in ANSWER_FORMATS:
            raise SpecError(f"unknown answer_format {self.answer_format!r}; known: {list(ANSWER_FORMATS)}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise SpecError(f"limit must be a non-negative int, got {self.limit!r}")
        if self.images_archive is not None and not self.image_root:
            raise SpecError(f"images_archive {self.images_archive!r} needs 'image_root' (the folder it is "
                            "unpacked into, e.g. on the cache volume)")
        if self.images_archive is not None and self.format == "synthetic":
            raise SpecError("format 'synthetic' draws its images; it takes no images_archive")
        if not isinstance(self.hub, dict):
            raise SpecError(f"hub must be a dict (provenance), got {type(self.hub).__name__}")
        if not isinstance(self.fields, dict):
            raise SpecError(f"fields must be a dict, got {type(self.fields).__name__}")
        for k, v in self.fields.items():
            if k not in ITEM_FIELDS:
                raise SpecError(f"fields: {k!r} is not an Item field; known: {list(ITEM_FIELDS)}")
            multi = k in ("images", "choices")
            if not (isinstance(v, str) or (multi and isinstance(v, list) and all(isinstance(c, str) for c in v))):
                kind = "a column name or a list of column names" if multi else "a column name"
                raise SpecError(f"fields[{k!r}] must be {kind}, got {v!r}")


def _check_synthetic_keys(d: dict[str, Any]) -> None:
    """A file dataset must not carry the synthetic generator's keys (with other than their default values:
    a whole spec written back, as ``dataclasses.asdict`` gives it, is fine): they would be silently ignored."""
    defaults = DatasetSpec(format="synthetic")
    given = [k for k in SYNTHETIC_KEYS if k in d and d[k] != getattr(defaults, k)]
    if d.get("format") == "synthetic" or not given:
        return
    nulls = ", ".join(f'"{k}": null' for k in given)
    raise SpecError(
        f"keys {given} only mean something for format 'synthetic', not {d.get('format')!r}. A config that "
        f"'extends' a synthetic one (e.g. tiny.json) inherits them; remove them in your file with null: "
        f"{{{nulls}}} in this data set (docs/data.md, 'extends')")


# ------------------------------------------------------------------------------ paths of a config file
def _relative(p: Any) -> bool:
    return isinstance(p, str) and bool(p) and "://" not in p and not p.startswith(("/", "~"))


def _looks_like_hub_id(path: Any, folder: Path) -> bool:
    # ``owner/name`` that is not a folder next to the config (as ``ptdpo.data.sources.is_hub_id`` reads it)
    return (isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~"))
            and not (folder / path).exists())


def resolve_spec_paths(spec: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """A dataset spec dict written in a config file, with its relative local paths made absolute against
    the file's ``folder`` (not the working directory). Hub ids, builder names (``json``), files inside a hub
    repo (``data_files`` / ``images_archive`` of an ``hf`` spec with a hub id) and URLs stay as written."""
    if not isinstance(spec, dict):
        return spec
    folder = Path(folder)
    out = dict(spec)
    fmt, path = spec.get("format"), spec.get("path")
    if fmt in ("jsonl", "parquet", "hf_disk") and _relative(path):
        out["path"] = str(folder / path)
    hub = fmt == "hf" and _looks_like_hub_id(path, folder)
    if fmt == "hf" and _relative(path) and (folder / path).exists():
        out["path"] = str(folder / path)
    if fmt == "hf" and not hub and spec.get("data_files") is not None:
        out["data_files"] = _resolve_files(spec["data_files"], folder)
    for key in ("image_root", "cache_dir"):
        if _relative(spec.get(key)):
            out[key] = str(folder / spec[key])
    archive = spec.get("images_archive")
    if _relative(archive) and (not hub or (folder / archive).exists()):
        out["images_archive"] = str(folder / archive)
    return out


def _resolve_files(data_files: Any, folder: Path) -> Any:
    if isinstance(data_files, str):
        return str(folder / data_files) if _relative(data_files) else data_files
    if isinstance(data_files, list):
        return [_resolve_files(x, folder) for x in data_files]
    if isinstance(data_files, dict):
        return {k: _resolve_files(v, folder) for k, v in data_files.items()}
    return data_files
