"""The dataset spec: where items come from and how their columns map onto Item fields.

See :mod:`ptdpo.data.loaders` for what each key means; :func:`ptdpo.data.loaders.load_items` takes a
spec dict or a :class:`DatasetSpec`. Images kept outside the data file (a folder, or an archive that
:mod:`ptdpo.data.archives` fetches and unpacks once) are found through ``image_root``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ptdpo.answers.choices import ANSWER_FORMATS

FORMATS = ("jsonl", "parquet", "hf", "hf_disk", "synthetic")
ITEM_FIELDS = ("id", "images", "question", "answer", "choices", "solution", "source", "split", "meta")


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
