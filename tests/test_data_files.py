"""Data kept as data: the labelled hint set's sources and composer, and the benchmark catalogue file."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ptdpo.eval.registry import CATALOGUE_PATH, BenchmarkError, get_benchmark, list_benchmarks, load_catalogue

ROOT = Path(__file__).resolve().parents[1]
HINT_FIXTURES = ROOT / "tests" / "fixtures" / "hints"


def _script(name: str):
    """A script of scripts/, loaded from its path (scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ labelled hint set
def test_labelled_fixture_is_the_composer_output():
    composer = _script("make_labelled_hints")
    assert composer.OUT == HINT_FIXTURES / "labelled.jsonl"
    text = composer.to_jsonl(composer.compose(*composer.load_sources()))
    assert text == (HINT_FIXTURES / "labelled.jsonl").read_text(encoding="utf-8")


def test_labelled_composer_follows_its_sources(tmp_path):
    composer = _script("make_labelled_hints")
    for f in HINT_FIXTURES.glob("labelled_*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "labelled_items.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["items"][0]["steps"][0] = "A brand-new clean step about the left cluster."
    path.write_text(json.dumps(doc), encoding="utf-8")
    text = composer.to_jsonl(composer.compose(*composer.load_sources(tmp_path)))
    assert "A brand-new clean step about the left cluster." in text
    assert text != (HINT_FIXTURES / "labelled.jsonl").read_text(encoding="utf-8")


def test_labelled_sources_errors_name_the_item_and_field(tmp_path):
    composer = _script("make_labelled_hints")
    for f in HINT_FIXTURES.glob("labelled_*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "labelled_items.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["items"][1]["leaks"][0]["where"] = "footnote"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(composer.SourceError, match=r"items\[1\] \('count-cubes'\): leaks\[0\]\.where is 'footnote'"):
        composer.load_sources(tmp_path)
    del doc["items"][1]["leaks"][0]
    del doc["items"][1]["full_solution"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(composer.SourceError, match=r"count-cubes.*full_solution"):
        composer.load_sources(tmp_path)
    path.write_text(json.dumps({"things": []}), encoding="utf-8")
    with pytest.raises(composer.SourceError, match="'items' list"):
        composer.load_sources(tmp_path)


# ------------------------------------------------------------------------------ benchmark catalogue
def test_catalogue_file_is_what_is_registered():
    specs = load_catalogue()
    assert [s.name for s in specs] == list_benchmarks()
    for s in specs:
        assert s.to_dict() == get_benchmark(s.name).to_dict()
    assert CATALOGUE_PATH.parent == ROOT / "ptdpo" / "eval"


def test_catalogue_errors_name_the_file_and_entry(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="bench.json: cannot read it"):
        load_catalogue(path)
    path.write_text(json.dumps({"specs": []}), encoding="utf-8")
    with pytest.raises(BenchmarkError, match="'benchmarks' list"):
        load_catalogue(path)
    good = {"name": "mine", "dataset": {"format": "jsonl", "path": "x.jsonl"}}
    path.write_text(json.dumps({"benchmarks": [good, {**good, "name": "two", "answer_typ": "number"}]}))
    with pytest.raises(BenchmarkError, match=r"benchmarks\[1\] \('two'\): unknown benchmark spec key"):
        load_catalogue(path)
    path.write_text(json.dumps({"benchmarks": [good, {"dataset": {"format": "jsonl"}}]}))
    with pytest.raises(BenchmarkError, match=r"benchmarks\[1\] \(None\)"):
        load_catalogue(path)
    path.write_text(json.dumps({"benchmarks": [good, {**good, "name": "bad", "answer_type": "vibes"}]}))
    with pytest.raises(BenchmarkError, match=r"benchmarks\[1\] \('bad'\): .*answer_type 'vibes'"):
        load_catalogue(path)
    path.write_text(json.dumps({"benchmarks": [good]}))
    assert [s.name for s in load_catalogue(path)] == ["mine"]
