"""Bringing your own data: unread columns are named (once), synthetic-only keys are an error on a file
dataset, relative paths in a config come from its folder, and the oracle hint generator refuses data it
cannot serve before generating anything, naming the ways out."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest

from ptdpo.data import Item, SpecError, load_items
from ptdpo.data.columns import ColumnWarning
from ptdpo.hints import HintSourceError
from ptdpo.run_config import RunConfigError, load_config_file, parse_run_config, run_config_from_dict
from steps.hints import generate_hints_shard

ROOT = Path(__file__).resolve().parents[1]


def _png(colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _folder(tmp_path: Path, column: str = "image_path") -> Path:
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (q, a) in enumerate([("Is there a red square?", "yes"), ("What shape is it?", "circle")]):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png())
        rows.append({"qid": f"v{i}", column: f"img/{i}.png", "question": q, "answer": a, "split_name": "train"})
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "vqa.jsonl"


def test_an_image_like_column_is_named_with_the_mapping_that_reads_it(tmp_path):
    path = _folder(tmp_path)
    with pytest.warns(ColumnWarning) as record:
        items = load_items({"format": "jsonl", "path": str(path)})
    assert len(record) == 1  # one warning for the whole load, not one per row
    msg = str(record[0].message)
    assert "'image_path'" in msg and "NO images" in msg and '"fields": {"images": "image_path"}' in msg
    assert "qid" in msg and "split_name" in msg and all(not it.images for it in items)
    # the mapping it names fixes it; ignore_columns silences the rest
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColumnWarning)
        items = load_items({"format": "jsonl", "path": str(path), "fields": {"images": "image_path", "id": "qid"},
                            "ignore_columns": ["split_name"]})
    assert [len(it.images) for it in items] == [1, 1] and items[0].id == "v0"


def test_synthetic_keys_are_an_error_on_a_file_dataset(tmp_path):
    path = _folder(tmp_path)
    with pytest.raises(SpecError) as e:
        load_items({"format": "jsonl", "path": str(path), "n": 16, "difficulty": [1, 2]})
    assert "['n', 'difficulty'] only mean something for format 'synthetic'" in str(e.value)
    assert '"n": null, "difficulty": null' in str(e.value)
    # a config extending tiny-test.json inherits them: the run config says where, and the null patch works
    child = {"extends": "tiny-test.json", "data": {"train": {"format": "jsonl", "path": str(path)}}}
    with pytest.raises(RunConfigError) as e:
        parse_run_config(json.dumps(child))
    assert "data.train:" in str(e.value) and "'n'" in str(e.value) and "extends" in str(e.value)
    child["data"]["train"].update({"n": None, "seed": None, "difficulty": None, "image_size": None})
    rc = run_config_from_dict(parse_run_config(json.dumps(child)))
    assert rc.data.train.format == "jsonl"


def test_relative_paths_and_extends_come_from_the_config_files_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    data = _folder(project / "data")
    (project / "configs").mkdir()
    (project / "configs" / "base.json").write_text(json.dumps({"extends": "tiny-test.json", "name": "base"}))
    cfg = {"extends": "base.json", "name": "mine",
           "data": {"train": {"format": "jsonl", "path": "../data/vqa.jsonl", "n": None, "seed": None,
                              "difficulty": None, "image_size": None, "fields": {"images": "image_path"}}},
           "eval": {"benchmarks": [{"name": "mine", "dataset": {"format": "jsonl", "path": "../data/vqa.jsonl"}}]},
           "hints": {"cache_dir": "hint-cache"}}
    (project / "configs" / "mine.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    loaded = load_config_file(project / "configs" / "mine.json")
    assert loaded["extends_chain"][:2] == ["base.json", "tiny-test.json"]
    assert Path(loaded["data"]["train"]["path"]) == (project / "configs" / "../data/vqa.jsonl")
    assert Path(loaded["data"]["train"]["path"]).resolve() == data.resolve()
    assert Path(loaded["eval"]["benchmarks"][0]["dataset"]["path"]).resolve() == data.resolve()
    assert loaded["hints"]["cache_dir"] == str(project / "configs" / "hint-cache")
    # hub ids and files inside a hub repo stay as written
    hub = load_config_file(ROOT / "configs" / "qwen3vl-2b.json")["data"]["train"]
    assert hub["path"] == "TIGER-Lab/ViRL39K" and hub["data_files"] == "39Krelease.parquet"
    assert hub["images_archive"] == "images.zip"


def test_the_flow_reads_the_config_path_from_its_command_line():
    import sys

    sys.path.insert(0, str(ROOT / "flows"))
    from _common import DEFAULT_CONFIG, config_file

    assert config_file(["flow.py", "--config", "config", "x/c.json", "run"]) == (Path.cwd() / "x/c.json").resolve()
    assert config_file(["flows/ptdpo_flow.py", "run"]) == DEFAULT_CONFIG
    assert config_file(["pytest", "tests"]) is None  # not a flow's command line: nothing known
    assert config_file(["flow.py", "--config-value", "config", "{}", "run"]) is None


def test_a_dataset_answer_type_reaches_the_items(tmp_path):
    path = _folder(tmp_path)
    items = load_items({"format": "jsonl", "path": str(path), "fields": {"images": "image_path"},
                        "ignore_columns": True, "answer_type": "vqa"})
    assert {it.meta["answer_type"] for it in items} == {"vqa"}
    with pytest.raises(SpecError, match="unknown answer_type 'vague'"):
        load_items({"format": "jsonl", "path": str(path), "answer_type": "vague"})


def test_the_oracle_refuses_items_without_scene_metadata_before_generating(tmp_path):
    items = [Item(id="v0", images=[_png()], question="Is there a red square?", answer="yes", source="vqa")]
    with pytest.raises(HintSourceError) as e:
        generate_hints_shard(items, {"name": "oracle"}, tmp_path / "cache", shard_index=0)
    msg = str(e.value)
    assert "synthetic scene metadata" in msg and "item 'v0' from source 'vqa'" in msg
    for way in ('"name": "openai"', '"name": "vllm"', "train.ptd.enabled = false", "docs/data.md"):
        assert way in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jsonl"))


def test_the_grpo_baseline_needs_no_hints():
    rc = load_config_file(ROOT / "configs" / "baselines" / "tiny-grpo.json")
    typed = run_config_from_dict(rc)
    assert not typed.train.ptd.enabled and not typed.train.ptd.uses_hints
    no_hints = {k: v for k, v in rc.items() if k != "hints"}
    assert not run_config_from_dict(no_hints).train.ptd.uses_hints  # a hints section is not needed
