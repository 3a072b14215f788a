"""The benchmark registry: one small declarative spec per benchmark, no code per benchmark.

A :class:`BenchmarkSpec` says where the data is (``dataset``: the data loader's spec dict, see
``ptdpo.data.loaders.load_items``: format, hub id or local path, config ``name``, ``split``, ``revision``,
``fields`` mapping columns onto the Item schema, ``meta_columns``, ``answer_format``), how answers are
compared (``answer_type``: ``number`` | ``expression`` | ``choice`` | ``text`` | ``vqa`` | ``auto``), how the prompt is
built (``prompt_template``, ``show_choices``) and which metric is headline (``metric``). A few generic,
named ``transforms`` and ``filters`` cover what a column mapping cannot (strip ``<image>`` tokens, parse
``"A. x; B. y"`` option strings, keep only MathVerse's vision-only rows).

The built-in benchmarks are data: ``benchmarks.json`` next to this module, read by :func:`load_catalogue`.

A user's own benchmark is a jsonl or parquet file plus a spec in config, without code::

    {"name": "my_bench", "dataset": {"format": "jsonl", "path": "data/my_bench.jsonl"},
     "answer_type": "number"}

and a registered benchmark can be adjusted by name: ``{"name": "mathvista", "limit": 100}``.

``hub`` records, for each public benchmark, the dataset id, config, split and columns this spec
assumes, and whether they were checked against the live Hugging Face hub. None were: this project was
built without network access. Column names were cross-checked against public code that loads these
datasets where such code was found (``hub["evidence"]``), and every spec is tested against a local
fixture written in the dataset's published schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ptdpo.answers.choices import gold_choice
from ptdpo.answers.match import ANSWER_TYPES
from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item
from ptdpo.data.text import strip_image_tokens

TRANSFORMS = ("strip_image_tokens", "options_from_text", "answer_from_tags", "question_from")


class BenchmarkError(ValueError):
    """An unusable benchmark spec (unknown name, bad key, bad value)."""


@dataclass
class BenchmarkSpec:
    """A benchmark, declaratively (see the module docstring).

    - ``dataset``: the loader spec (``ptdpo.data.loaders.DatasetSpec`` keys). Relative paths are resolved
      against ``base_dir`` when loading.
    - ``answer_type``: how answers are compared (``ptdpo.answers.match_answer``); ``auto`` decides per
      item (options or a letter gold -> choice, a digit/LaTeX/operator -> math, else free text).
    - ``prompt_template``: ``str.format`` template for the question text shown to the model, over
      ``question`` and the item's ``meta`` keys (missing keys render empty); ``show_choices``: append the
      item's options as ``A. ...`` lines (off when the template already shows them).
    - ``filters``: ``{meta_key: value or [values]}``; rows whose value differs are dropped (the keys are
      added to ``meta_columns``). ``limit`` applies after filtering.
    - ``transforms``: ``strip_image_tokens`` (drop ``<image>`` / ``<image 3>`` placeholders from the
      question), ``options_from_text:<meta key>`` (parse ``"A. 1; B. 2"`` into ``choices``),
      ``answer_from_tags`` (``"<answer> 3 </answer>"`` -> ``"3"``), ``question_from:<meta key>`` (the
      question is that meta column: MathVerse's bare ``question``, not its ``query_cot`` whose answer
      instruction conflicts with the prompt template's).
    - ``blank_question``: the question text of rows whose question is blank after the transforms
      (MathVerse's Vision Only rows carry their question only in the image).
    - ``metric``: the headline metric (``accuracy``; with k samples per item it is avg@k).
    - ``hub``: provenance of a public dataset id and its columns (``verified`` is False unless checked
      against the live hub).
    """

    name: str
    dataset: dict[str, Any]
    answer_type: str = "auto"
    prompt_template: str = "{question}"
    show_choices: bool = True
    metric: str = "accuracy"
    filters: dict[str, Any] = field(default_factory=dict)
    transforms: list[str] = field(default_factory=list)
    limit: int | None = None
    description: str = ""
    hub: dict[str, Any] = field(default_factory=dict)
    blank_question: str = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise BenchmarkError("a benchmark needs a non-empty 'name'")
        if not isinstance(self.dataset, Mapping) or "format" not in self.dataset:
            raise BenchmarkError(
                f"benchmark {self.name!r}: 'dataset' must be a loader spec dict with 'format'"
            )
        if self.answer_type not in ANSWER_TYPES:
            raise BenchmarkError(
                f"benchmark {self.name!r}: answer_type {self.answer_type!r} not in {list(ANSWER_TYPES)}"
            )
        for t in self.transforms:
            if t.split(":", 1)[0] not in TRANSFORMS:
                raise BenchmarkError(
                    f"benchmark {self.name!r}: unknown transform {t!r}; known: {list(TRANSFORMS)}"
                )
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise BenchmarkError(f"benchmark {self.name!r}: limit must be a non-negative int")
        if not isinstance(self.filters, Mapping):
            raise BenchmarkError(f"benchmark {self.name!r}: filters must be a dict")
        for t in self.transforms:
            kind, _, arg = t.partition(":")
            if kind == "question_from" and (not arg or arg not in (self.dataset.get("meta_columns") or [])):
                raise BenchmarkError(f"benchmark {self.name!r}: transform {t!r} needs a meta column of "
                                     "dataset.meta_columns after the colon")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchmarkSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BenchmarkError(f"unknown benchmark spec key(s) {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(dict(d)))

    def replace(self, **changes: Any) -> BenchmarkSpec:
        d = self.to_dict()
        d.update(copy.deepcopy(changes))
        return BenchmarkSpec.from_dict(d)

    def with_local_file(self, path: str | Path, format: str | None = None) -> BenchmarkSpec:
        """The same benchmark read from a local jsonl/parquet file (hub id, config and revision dropped;
        field mapping, meta columns and answer format kept): for fixtures, mirrors and air-gapped runs."""
        path = Path(path)
        fmt = format or {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(
            path.suffix, "parquet"
        )
        ds = {
            k: v
            for k, v in self.dataset.items()
            if k not in ("path", "name", "revision", "data_files", "split")
        }
        ds.update(format=fmt, path=str(path))
        if self.dataset.get("split"):
            ds["split"] = self.dataset["split"]
        return self.replace(dataset=ds)

    def loader_spec(self) -> dict[str, Any]:
        """The dict handed to ``load_items``: ``dataset`` plus filter keys in ``meta_columns``, and the limit
        when no filter runs after loading."""
        d = copy.deepcopy(dict(self.dataset))
        meta_cols = list(d.get("meta_columns") or [])
        for key in self.filters:
            if key not in meta_cols:
                meta_cols.append(key)
        if meta_cols:
            d["meta_columns"] = meta_cols
        if self.limit is not None and not self.filters:
            d["limit"] = self.limit if d.get("limit") is None else min(d["limit"], self.limit)
        if self.hub and d.get("format") != "synthetic":
            # a public set's spec is written against its published columns: the unread ones are known
            d.setdefault("ignore_columns", True)
        return d


# ---------------------------------------------------------------------------------------------- loading


def _keep(item: Item, filters: Mapping[str, Any]) -> bool:
    for key, want in filters.items():
        have = item.meta.get(key) if isinstance(item.meta, dict) else None
        wanted = want if isinstance(want, list | tuple | set) else [want]
        if have not in wanted:
            return False
    return True


_OPTION_SPLIT_RE = re.compile(r"(?:^|[;\n]|\s)\s*\(?([A-Z])[.):]\s*")


def parse_lettered_options(text: str) -> list[str] | None:
    """``"A. 1; B. 2; C. 3"`` / ``"(A) 1 (B) 2"`` -> ``["1", "2", "3"]``; None unless the letters run A, B, C..."""
    if not isinstance(text, str) or not text.strip():
        return None
    marks = list(_OPTION_SPLIT_RE.finditer(text))
    letters = [m.group(1) for m in marks]
    if len(marks) < 2 or "".join(letters) != CHOICE_LETTERS[: len(marks)]:
        return None
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        opt = text[m.end() : end].strip().rstrip(";").strip()
        if not opt:
            return None
        out.append(opt)
    return out if len(set(out)) == len(out) else None


def _transform(item: Item, transforms: Iterable[str], blank_question: str = "") -> Item:
    for t in transforms:
        kind, _, arg = t.partition(":")
        if kind == "strip_image_tokens":
            item.question = strip_image_tokens(item.question)
        elif kind == "options_from_text":
            raw = item.meta.get(arg or "option") if isinstance(item.meta, dict) else None
            opts = parse_lettered_options(raw) if isinstance(raw, str) else None
            if opts and not item.choices:
                options = gold_choice(item.answer, opts, "letter")
                if options is not None and len(options) == 1:
                    item.choices = opts
                    item.answer = CHOICE_LETTERS[next(iter(options))]
        elif kind == "answer_from_tags":
            m = re.search(r"<answer>(.*?)</answer>", item.answer, re.DOTALL | re.IGNORECASE)
            if m and m.group(1).strip():
                item.answer = m.group(1).strip()
        elif kind == "question_from":
            value = item.meta.get(arg) if isinstance(item.meta, dict) else None
            item.question = value.strip() if isinstance(value, str) else ""
    if not item.question.strip() and blank_question:
        item.question = blank_question
    return item


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render_question(spec: BenchmarkSpec, item: Item) -> str:
    """The question text shown to the model: ``prompt_template`` over ``question`` and ``meta``."""
    values = _Blank({k: v for k, v in (item.meta or {}).items() if isinstance(k, str)})
    values["question"] = item.question
    values["choices_text"] = "\n".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(item.choices or []))
    try:
        text = spec.prompt_template.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError):
        text = item.question
    return text.strip() or item.question


def prompt_item(spec: BenchmarkSpec, item: Item) -> Item:
    """A copy of ``item`` as the prompt should show it (rendered question; options only if
    ``show_choices``). Scoring keeps using the original item's answer and choices."""
    return Item(
        id=item.id,
        images=item.images,
        question=render_question(spec, item),
        answer=item.answer,
        choices=item.choices if spec.show_choices else None,
        solution=None,
        source=item.source,
        split=item.split,
        meta=item.meta,
    )


def load_benchmark(
    spec: BenchmarkSpec | Mapping[str, Any] | str,
    base_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Item]:
    """Load a benchmark's items through ``ptdpo.data.loaders.load_items``, then filter, transform, limit."""
    from ptdpo.data.loaders import load_items

    spec = resolve_benchmark(spec)
    if limit is not None:
        spec = spec.replace(limit=limit if spec.limit is None else min(limit, spec.limit))
    items = load_items(spec.loader_spec(), base_dir=base_dir)
    if spec.filters:
        items = [it for it in items if _keep(it, spec.filters)]
    items = [_transform(it, spec.transforms, spec.blank_question) for it in items]
    if spec.limit is not None:
        items = items[: spec.limit]
    for it in items:
        it.source = it.source or spec.name
    return items


# ---------------------------------------------------------------------------------------------- registry

REGISTRY: dict[str, BenchmarkSpec] = {}


def register(spec: BenchmarkSpec | Mapping[str, Any], overwrite: bool = False) -> BenchmarkSpec:
    """Add a benchmark to the registry (by name)."""
    spec = spec if isinstance(spec, BenchmarkSpec) else BenchmarkSpec.from_dict(spec)
    if spec.name in REGISTRY and not overwrite:
        raise BenchmarkError(f"benchmark {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def list_benchmarks() -> list[str]:
    return list(REGISTRY)


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; registered: {list(REGISTRY)}") from None


def resolve_benchmark(ref: BenchmarkSpec | Mapping[str, Any] | str) -> BenchmarkSpec:
    """A spec from a registered name, a full spec dict, or ``{"name": <registered>, <overrides>...}``."""
    if isinstance(ref, BenchmarkSpec):
        return ref
    if isinstance(ref, str):
        return get_benchmark(ref)
    if isinstance(ref, Mapping):
        if "dataset" not in ref:
            name = ref.get("name")
            if name not in REGISTRY:
                raise BenchmarkError(
                    f"benchmark {name!r} has no 'dataset' and is not registered; registered: {list(REGISTRY)}"
                )
            overrides = {k: v for k, v in ref.items() if k != "name"}
            return REGISTRY[name].replace(**overrides) if overrides else REGISTRY[name]
        return BenchmarkSpec.from_dict(ref)
    raise BenchmarkError(f"cannot make a benchmark from {type(ref).__name__}")


def registry_table() -> list[dict[str, Any]]:
    """One row per registered benchmark: name, dataset id, split, answer type, verified."""
    rows = []
    for s in REGISTRY.values():
        rows.append(
            {
                "name": s.name,
                "dataset": s.hub.get("id") or s.dataset.get("path") or s.dataset.get("format"),
                "config": s.dataset.get("name"),
                "split": s.dataset.get("split"),
                "answer_type": s.answer_type,
                "verified": bool(s.hub.get("verified", False)),
            }
        )
    return rows


CATALOGUE_PATH = Path(__file__).with_name("benchmarks.json")


def load_catalogue(path: str | Path = CATALOGUE_PATH) -> list[BenchmarkSpec]:
    """The specs of a benchmark catalogue file, ``{"benchmarks": [spec dict, ...]}``, in file order.

    The built-in benchmarks live in ``benchmarks.json`` next to this module: data, not code, so adding
    or correcting a benchmark touches no Python."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"benchmark catalogue {path}: cannot read it: {e}") from None
    entries = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise BenchmarkError(f"benchmark catalogue {path}: needs a top-level 'benchmarks' list")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BenchmarkError(f"benchmark catalogue {path}: benchmarks[{i}] is not an object")
        try:
            specs.append(BenchmarkSpec.from_dict(entry))
        except (BenchmarkError, TypeError) as e:
            where = f"benchmark catalogue {path}: benchmarks[{i}] ({entry.get('name')!r})"
            raise BenchmarkError(f"{where}: {e}") from None
    return specs


for _spec in load_catalogue():
    register(_spec)

#: The paper's evaluation suite (METHOD.md section 5): PAPO's, as its data notes and evaluation scripts define
#: it (benchmarks.json records the evidence for each entry).
PAPER_SUITE = (
    "geometry3k",
    "mathvista",
    "mathverse",
    "mmmu_pro_vision",
    "logicvista",
    "clevr_count",
    "wemath",
    "mmk12",
)
