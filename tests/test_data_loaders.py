"""Loaders: jsonl, parquet, Hugging Face datasets (save_to_disk folders and load_dataset on local files),
field mappings, round trips, manifests and errors that name the file, row, item and field."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ptdpo.data import (
    DatasetSpec,
    ItemError,
    SpecError,
    generate_synthetic,
    load_items,
    manifest,
    open_image,
    save_items_jsonl,
    save_items_parquet,
)


def _png(color=(255, 0, 0), size=(8, 8), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FIELDS = {"id": "pid", "images": "image", "question": "problem", "answer": "answer", "choices": "options"}


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "red.png").write_bytes(_png((255, 0, 0)))
    (d / "blue.jpg").write_bytes(_png((0, 0, 255), fmt="JPEG"))
    return d


# -------------------------------------------------------------------------------------------- jsonl


def test_jsonl_relative_and_absolute_paths_with_mapping(tmp_path, image_dir):
    rows = [
        {"pid": "q1", "image": "imgs/red.png", "problem": "What colour?", "answer": "red"},
        {"pid": 2, "image": str(image_dir / "blue.jpg"), "problem": "Pick one.", "answer": "blue",
         "options": ["red", "blue"]},
        {"pid": "q3", "image": ["imgs/red.png", "imgs/blue.jpg"], "problem": "How many?", "answer": 2.0},
    ]
    sub = tmp_path / "data"
    sub.mkdir()
    p = _write_jsonl(tmp_path / "data.jsonl", rows)
    items = load_items({"format": "jsonl", "path": str(p), "fields": FIELDS})
    assert [it.id for it in items] == ["q1", "2", "q3"]
    assert items[0].images == [str((image_dir / "red.png").resolve())]
    assert items[1].images == [str(image_dir / "blue.jpg")]
    assert items[1].choices == ["red", "blue"] and items[1].answer == "B"  # option text -> letter
    assert items[2].answer == "2" and len(items[2].images) == 2
    assert open_image(items[2].images[1]).getpixel((4, 4))[2] > 200
    assert all(it.source == "data" and it.split == "train" for it in items)
    # the spec's path itself relative to base_dir; embed_images reads the bytes
    items2 = load_items({"format": "jsonl", "path": "data.jsonl", "fields": FIELDS, "embed_images": True},
                        base_dir=tmp_path)
    assert items2[0].images == [(image_dir / "red.png").read_bytes()]
    assert [it.id for it in items2] == [it.id for it in items]


def test_jsonl_base64_images_and_defaults(tmp_path):
    png = _png((0, 255, 0))
    rows = [
        {"id": "a", "images": [base64.b64encode(png).decode()], "question": "q?", "answer": "x"},
        {"id": "b", "image": "data:image/png;base64," + base64.b64encode(png).decode(), "question": "q?",
         "answer": "y", "solution": "because", "meta": {"k": 1}},
    ]
    p = _write_jsonl(tmp_path / "b64.jsonl", rows)
    items = load_items({"format": "jsonl", "path": str(p), "split": "test", "source": "mine"})
    assert items[0].images == [png] and items[1].images == [png]
    assert items[1].solution == "because" and items[1].meta == {"k": 1}
    assert all(it.split == "test" and it.source == "mine" for it in items)


def test_limit_and_ids_from_row_index(tmp_path):
    rows = [{"problem": f"q{i}?", "answer": i} for i in range(10)]
    p = _write_jsonl(tmp_path / "noid.jsonl", rows)
    items = load_items({"format": "jsonl", "path": str(p), "limit": 4, "split": "val",
                        "fields": {"question": "problem"}})
    assert [it.id for it in items] == ["noid-val-0", "noid-val-1", "noid-val-2", "noid-val-3"]
    items = load_items({"format": "jsonl", "path": str(p), "id_prefix": "bench/", "fields": {"question": "problem"}})
    assert items[-1].id == "bench/9" and items[-1].answer == "9"


# ------------------------------------------------------------------------------------------ parquet


def test_parquet_raw_bytes_choice_columns_and_answer_formats(tmp_path):
    t = pa.table({
        "qid": ["m1", "m2", "m3"],
        "img": [_png(), _png((0, 0, 255)), None],
        "q": ["Which?", "Which?", "Which?"],
        "A": ["cat", "dog", "x"], "B": ["dog", "cat", "y"], "C": ["eel", None, "z"],
        "ans": ["b", "dog", "C"],
        "extra": [1, 2, 3],
    })
    p = tmp_path / "mc.parquet"
    pq.write_table(t, p)
    spec = {"format": "parquet", "path": str(p), "meta_columns": ["extra"],
            "fields": {"id": "qid", "images": "img", "question": "q", "answer": "ans", "choices": ["A", "B", "C"]}}
    items = load_items(spec)
    assert [it.answer for it in items] == ["B", "A", "C"]
    assert items[1].choices == ["dog", "cat"]  # empty option column dropped
    assert items[0].images == [_png()] and items[2].images == []
    assert items[2].meta == {"extra": 3}
    # index answers
    t2 = pa.table({"id": ["i1"], "question": ["?"], "answer": [1], "choices": [["p", "q"]]})
    pq.write_table(t2, tmp_path / "idx.parquet")
    (it,) = load_items({"format": "parquet", "path": str(tmp_path / "idx.parquet"), "answer_format": "index"})
    assert it.answer == "B"


def test_choices_as_dict_and_as_string(tmp_path):
    rows = [
        {"id": "d", "question": "?", "answer": "Two", "choices": {"B": "Two", "A": "One"}},
        {"id": "s", "question": "?", "answer": "A", "choices": "['left', 'right']"},
        {"id": "j", "question": "?", "answer": "right", "choices": '["left", "right"]'},
    ]
    items = load_items({"format": "jsonl", "path": str(_write_jsonl(tmp_path / "c.jsonl", rows))})
    assert [(it.choices, it.answer) for it in items] == [
        (["One", "Two"], "B"), (["left", "right"], "A"), (["left", "right"], "B")]


# ---------------------------------------------------------------------------------- Hugging Face


def _hf_rows(tmp_path):
    import datasets

    feats = datasets.Features({
        "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "image": datasets.Image(), "extra_images": datasets.List(datasets.Image()),
        "options": datasets.Value("string"),
    })
    data = {
        "question": ["How many red?", "Which colour?"],
        "answer": ["1", "blue"],
        "image": [{"bytes": _png(), "path": None}, {"bytes": _png((0, 0, 255)), "path": None}],
        "extra_images": [[], [{"bytes": _png((0, 255, 0)), "path": None}]],
        "options": [None, "['red', 'blue']"],
    }
    return datasets.Dataset.from_dict(data, features=feats)


def test_hf_save_to_disk_folder(tmp_path):
    import datasets

    ds = _hf_rows(tmp_path)
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    folder = tmp_path / "hfdisk"
    dd.save_to_disk(str(folder))
    before = sorted(x.name for x in folder.rglob("*"))
    spec = {"format": "hf_disk", "path": str(folder), "split": "train",
            "fields": {"images": ["image", "extra_images"], "choices": "options"}}
    items = load_items(spec)
    assert [it.id for it in items] == ["hfdisk-train-0", "hfdisk-train-1"]
    assert items[0].images == [_png()] and len(items[1].images) == 2
    assert items[1].choices == ["red", "blue"] and items[1].answer == "B"
    assert all(it.split == "train" for it in items)
    assert sorted(x.name for x in folder.rglob("*")) == before  # no cache files written into the folder
    (only,) = load_items({**spec, "split": "test"})
    assert only.answer == "B"
    with pytest.raises(SpecError, match=r"has splits \['test', 'train'\]"):
        load_items({**spec, "split": None})
    with pytest.raises(SpecError, match="no split 'dev'"):
        load_items({**spec, "split": "dev"})
    # a plain Dataset folder needs no split
    ds.save_to_disk(str(tmp_path / "plain"))
    assert len(load_items({"format": "hf_disk", "path": str(tmp_path / "plain"), "limit": 1})) == 1


def test_hf_load_dataset_parquet_and_json_local_files(tmp_path, image_dir):
    ds = _hf_rows(tmp_path)
    ds.to_parquet(str(tmp_path / "bench.parquet"))
    spec = {"format": "hf", "path": "parquet", "data_files": "bench.parquet", "split": "train",
            "cache_dir": "hf_cache", "fields": {"choices": "options"}, "source": "bench"}
    items = load_items(spec, base_dir=tmp_path)
    assert [it.answer for it in items] == ["1", "B"]
    assert items[0].images == [_png()] and items[0].id == "bench-train-0"
    # json builder with relative image paths (relative to the data file) and an id column
    rows = [{"pid": "j1", "image": "imgs/red.png", "problem": "?", "answer": "red", "options": ["red", "blue"]}]
    _write_jsonl(tmp_path / "j.jsonl", rows)
    (it,) = load_items({"format": "hf", "path": "json", "data_files": str(tmp_path / "j.jsonl"),
                        "split": "train", "cache_dir": str(tmp_path / "hf_cache"), "fields": FIELDS})
    assert it.id == "j1" and it.answer == "A" and it.images == [str((image_dir / "red.png").resolve())]
    # without 'path' the builder follows the data file's extension
    again = load_items({"format": "hf", "data_files": "bench.parquet", "cache_dir": "hf_cache",
                        "fields": {"choices": "options"}}, base_dir=tmp_path)
    assert [x.answer for x in again] == ["1", "B"]


# ------------------------------------------------------------------------------ round trips, manifest


def test_round_trip_jsonl_and_parquet(tmp_path):
    items = generate_synthetic(15, seed=3)
    assert any(it.choices for it in items)
    back_j = load_items({"format": "jsonl", "path": str(save_items_jsonl(items, tmp_path / "o" / "s.jsonl"))})
    back_p = load_items({"format": "parquet", "path": str(save_items_parquet(items, tmp_path / "s.parquet"))})
    assert back_j == items
    assert back_p == items
    assert manifest(back_j) == manifest(back_p) == manifest(items)


def test_round_trip_embeds_path_images(tmp_path, image_dir):
    rows = [{"id": "p1", "image": "imgs/red.png", "question": "?", "answer": "a"}]
    items = load_items({"format": "jsonl", "path": str(_write_jsonl(tmp_path / "p.jsonl", rows))})
    assert isinstance(items[0].images[0], str)
    back = load_items({"format": "parquet", "path": str(save_items_parquet(items, tmp_path / "p.parquet"))})
    assert back[0].images == [(image_dir / "red.png").read_bytes()]
    assert manifest(back)["content_hash"] == manifest(items)["content_hash"]  # same image content


def test_manifest_counts_and_hash():
    items = generate_synthetic(10, seed=1) + generate_synthetic(5, seed=1, split="test", ood=True)
    m = manifest(items)
    assert m["count"] == 15 and m["splits"] == {"test": 5, "train": 10}
    assert m["sources"] == {"synthetic": 15} and m["n_images"] == 15
    assert sum(m["families"].values()) == 15
    assert len(m["content_hash"]) == 64
    json.dumps(m)
    changed = generate_synthetic(10, seed=1) + generate_synthetic(5, seed=1, split="test", ood=True)
    assert manifest(changed) == m
    changed[3].answer = changed[3].answer + "0"
    assert manifest(changed)["content_hash"] != m["content_hash"]
    changed = generate_synthetic(10, seed=1) + generate_synthetic(5, seed=1, split="test", ood=True)
    changed[7].images = [_png()]
    assert manifest(changed)["content_hash"] != m["content_hash"]


def test_synthetic_spec():
    items = load_items({"format": "synthetic", "n": 6, "seed": 2, "split": "test", "ood": True,
                        "families": ["count_attr", "compare"], "difficulty": [2, 3], "image_size": 96})
    assert items == generate_synthetic(6, seed=2, split="test", ood=True, families=["count_attr", "compare"],
                                       difficulty=(2, 3), image_size=96)
    assert len(load_items({"format": "synthetic", "n": 6, "limit": 2})) == 2


# ------------------------------------------------------------------------------------------- errors


def test_errors_name_file_row_item_and_field(tmp_path):
    rows = [
        {"pid": "q0", "image": "imgs/none.png", "problem": "ok?", "answer": "1"},
        {"pid": "q1", "problem": "What?"},
        {"pid": "q2", "problem": "  ", "answer": "2"},
        {"pid": "q3", "image": [base64.b64encode(_png()).decode(), base64.b64encode(b"x" * 300).decode()],
         "problem": "?", "answer": "3"},
        {"pid": "q2", "problem": "dup?", "answer": "4"},
        {"pid": "q5", "problem": "?", "answer": "Z", "options": ["a", "b"]},
    ]
    p = _write_jsonl(tmp_path / "data.jsonl", rows)
    spec = {"format": "jsonl", "path": str(p), "fields": FIELDS}
    with pytest.raises(ItemError) as ei:
        load_items(spec)
    msg = str(ei.value)
    for expected in [
        r"data.jsonl line 1 (item 'q0'), field 'images[0]': image file not found: imgs/none.png",
        r"data.jsonl line 2 (item 'q1'), field 'answer': missing (column 'answer')",
        r"data.jsonl line 3 (item 'q2'), field 'question': empty",
        r"data.jsonl line 4 (item 'q3'), field 'images[1]': cannot decode image",
        r"data.jsonl line 5 (item 'q2'), field 'id': duplicate id, also at data.jsonl line 3",
        r"data.jsonl line 6 (item 'q5'), field 'answer': 'Z' is not an option letter or an option's text",
    ]:
        assert expected in msg, (expected, msg)
    assert len(ei.value.problems) == 6
    # one problem alone is raised as itself, and pytest.raises(match=) finds it
    _write_jsonl(p, rows[1:2])
    with pytest.raises(ItemError, match=r"data\.jsonl line 1 \(item 'q1'\), field 'answer': missing"):
        load_items(spec)


def test_bad_rows_in_parquet_and_jsonl_syntax(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "images": [[_png()], [b"garbage"]], "question": ["?", "?"],
                             "answer": ["1", None]}), tmp_path / "bad.parquet")
    with pytest.raises(ItemError) as ei:
        load_items({"format": "parquet", "path": str(tmp_path / "bad.parquet")})
    assert "bad.parquet row 1 (item 'b'), field 'answer': missing" in str(ei.value)
    assert "bad.parquet row 1 (item 'b'), field 'images[0]': cannot decode image" in str(ei.value)
    (tmp_path / "broken.jsonl").write_text('{"id": "a", "question": "?", "answer": "1"}\n{"id": "b",\n')
    with pytest.raises(ItemError, match=r"broken\.jsonl line 2 \(item without id\), field '<line>': invalid JSON"):
        load_items({"format": "jsonl", "path": str(tmp_path / "broken.jsonl")})
    with pytest.raises(ItemError, match=r"field 'id': missing \(column 'pid'\)"):
        load_items({"format": "jsonl", "path": str(tmp_path / "broken.jsonl"), "fields": {"id": "pid"}, "limit": 1})


def test_spec_errors(tmp_path):
    with pytest.raises(SpecError, match=r"unknown dataset spec key\(s\) \['pathh'\]"):
        load_items({"format": "jsonl", "pathh": "x"})
    with pytest.raises(SpecError, match="unknown format 'csv'"):
        load_items({"format": "csv", "path": "x"})
    with pytest.raises(SpecError, match="jsonl file not found"):
        load_items({"format": "jsonl", "path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(SpecError, match=r"fields: 'label' is not an Item field"):
        load_items({"format": "jsonl", "path": "x", "fields": {"label": "y"}})
    with pytest.raises(SpecError, match="needs 'n'"):
        load_items({"format": "synthetic"})
    assert DatasetSpec.from_dict({"format": "hf", "path": "org/ds", "split": "test"}).answer_format == "auto"


def test_public_api_still_lives_at_ptdpo_data_loaders():
    """The loader was split by concern (spec, sources, writers); what callers import from it stays there."""
    import ptdpo.data.loaders as loaders
    from ptdpo.data import sources, spec, writers

    assert loaders.DatasetSpec is spec.DatasetSpec is DatasetSpec and loaders.SpecError is SpecError
    assert loaders.manifest is writers.manifest is manifest
    assert loaders.save_items_jsonl is save_items_jsonl and loaders.save_items_parquet is save_items_parquet
    assert loaders.load_items is load_items and loaders.FORMATS == spec.FORMATS
    assert callable(sources.read_rows) and callable(sources.image_ref)
