"""ViRL39K as it is published, end to end through ``prepare_data``: a few rows written by the test in the
set's own layout (``39Krelease.parquet`` with ``question``/``answer``/``PassRate_32BTrained``/
``PassRate_7BBase``/``category``/``source``/``qid``/``image``, the questions starting with a literal
``<image>``, the images only inside ``images.zip`` under ``images/``), read with the recipe config's own
data spec; plus the pieces: unpacking once, the hub routing of the archive, counting prompt tokens as the
trainer does, and the over-long filter with its count in ``data_manifest``."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ptdpo.data import ItemError, SpecError, load_items
from ptdpo.data.archives import MARKER, prepare_image_root, read_marker, resolve_archive, unpack_once
from ptdpo.data.schema import Item
from ptdpo.data.sources import is_hub_id
from ptdpo.data.spec import DatasetSpec
from ptdpo.data.text import strip_image_tokens

ROOT = Path(__file__).resolve().parents[1]
VIRL_COLUMNS = ["question", "answer", "PassRate_32BTrained", "PassRate_7BBase", "category", "source", "qid", "image"]
LONG = "Read every number in the table carefully before you answer. " * 60  # far over 600 tokens


def _jpeg(width: int, height: int, seed: int) -> bytes:
    img = Image.new("RGB", (width, height), (40 * seed % 256, 120, 200))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def _rows() -> list[dict]:
    """Five rows in ViRL39K's layout: one image, two images, an over-long question, a 7B-unannotated row."""
    return [
        {"question": "<image>\nWhat is the area of the triangle?", "answer": "\\boxed{12}",
         "PassRate_32BTrained": 0.5, "PassRate_7BBase": 0.25, "category": "(GradeSchool) Geometric",
         "source": "MMK12", "qid": "q-geo-1", "image": ["images/Processed-q-geo-1-0.jpg"]},
        {"question": "<image><image>\nWhich figure has more sides?\nA. left\nB. right", "answer": "\\boxed{B}",
         "PassRate_32BTrained": 1.0, "PassRate_7BBase": 0.875, "category": "Spatial Reasoning",
         "source": "M3CoT", "qid": "q-two-2", "image": ["images/Processed-q-two-2-0.jpg",
                                                           "images/Processed-q-two-2-1.jpg"]},
        {"question": "<image>\n" + LONG + "What is the total?", "answer": "\\boxed{17^\\circ}",
         "PassRate_32BTrained": 0.125, "PassRate_7BBase": -1.0, "category": "Tables/Diagrams/Charts",
         "source": "R1-OneVision", "qid": "q-long-3", "image": ["images/Processed-q-long-3-0.jpg"]},
        {"question": "<image>\nHow many apples are left?", "answer": "\\boxed{3}",
         "PassRate_32BTrained": 0.75, "PassRate_7BBase": -1.0, "category": "(GradeSchool) Non-Geo Math",
         "source": "MM-Eureka", "qid": "q-count-4", "image": ["images/Processed-q-count-4-0.jpg"]},
    ]


def write_virl39k(folder: Path, rows: list[dict] | None = None, leave_out: str | None = None) -> Path:
    """``folder``/39Krelease.parquet and ``folder``/images.zip (members ``images/<name>.jpg``); the images
    exist nowhere else. ``leave_out``: an image path the archive does not hold."""
    rows = _rows() if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "images.zip", "w") as zf:
        seed = 0
        for r in rows:
            for path in r["image"]:
                seed += 1
                if path != leave_out:
                    zf.writestr(path, _jpeg(96 + 16 * seed, 64 + 8 * seed, seed))
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("question", pa.string()), ("answer", pa.string()), ("PassRate_32BTrained", pa.float64()),
        ("PassRate_7BBase", pa.float64()), ("category", pa.string()), ("source", pa.string()),
        ("qid", pa.string()), ("image", pa.list_(pa.string())),
    ]))
    pq.write_table(table, folder / "39Krelease.parquet")
    return folder


def recipe_spec(folder: Path, image_root: Path) -> dict:
    """configs/qwen3vl-2b.json's data.train with only the place changed: the local parquet and archive
    instead of the hub repo (same columns, meta columns, <image> handling)."""
    spec = copy.deepcopy(json.loads((ROOT / "configs" / "qwen3vl-2b.json").read_text())["data"]["train"])
    for key in ("path", "data_files", "split", "cache_dir"):
        spec.pop(key, None)
    spec.update(format="parquet", path=str(folder / "39Krelease.parquet"),
                images_archive=str(folder / "images.zip"), image_root=str(image_root))
    return spec


TRAIN = {"policy": "tiny:0.5m", "max_prompt_length": 600, "min_pixels": 4096, "max_pixels": 16384}


# ------------------------------------------------------------------------------------------ end to end


def test_prepare_data_reads_virl39k_and_filters_the_overlong_prompt(tmp_path):
    """Done when: an over-long prompt is filtered at prepare_data, with a count in data_manifest."""
    from ptdpo.config import train_config_from_dict
    from ptdpo.data.prompt_length import count_prompt_tokens
    from ptdpo.models.loading import load_policy_processor
    from ptdpo.rollout.collect import encode_student_prompts
    from steps.data import prepare_data

    folder = write_virl39k(tmp_path / "hub")
    root = tmp_path / "cache" / "ViRL39K"
    prepared = prepare_data({"train": recipe_spec(folder, root)}, train=TRAIN)
    m = prepared.manifest["train"]

    assert m["loaded"] == 4 and m["count"] == 3
    assert m["filtered_overlong"] == 1
    (example,) = m["filtered_overlong_examples"]
    assert example["id"] == "q-long-3" and example["tokens"] > 600
    assert m["prompt_tokens"]["limit"] == 600 and 0 < m["prompt_tokens"]["max"] <= 600
    assert m["prompt_tokens"]["policy"] == "tiny:0.5m"
    assert m["images_archive"]["files"] == 5 and m["images_archive"]["image_root"] == str(root)
    assert m["n_images"] == 4 and m["max_images_per_item"] == 2

    items = {it.id: it for it in prepared.train_items}
    assert sorted(items) == ["q-count-4", "q-geo-1", "q-two-2"]
    geo, two = items["q-geo-1"], items["q-two-2"]
    # <image> placeholders gone: the images go in as image parts
    assert geo.question == "What is the area of the triangle?"
    assert two.question.startswith("Which figure has more sides?") and "<image" not in two.question
    # images resolved from the unpacked archive
    assert two.images == [str((root / "images" / f"Processed-q-two-2-{i}.jpg").resolve()) for i in (0, 1)]
    assert all(Path(p).is_file() for it in items.values() for p in it.images)
    # the real meta columns, the \boxed{} answer as published
    assert geo.meta == {"category": "(GradeSchool) Geometric", "source": "MMK12", "PassRate_32BTrained": 0.5,
                        "PassRate_7BBase": 0.25}
    assert items["q-count-4"].meta["PassRate_7BBase"] == -1.0
    assert geo.answer == "\\boxed{12}" and geo.source == "MMK12"
    # the verifiable reward reads the published \boxed{} golds
    from ptdpo.rewards import score_batch

    completions = ["<think>6*4/2</think><answer>12</answer>", "<think>-</think><answer>B</answer>",
                   "<think>-</think><answer>4</answer>"]
    scored = score_batch(completions, [geo, two, items["q-count-4"]], max_workers=0, timeout_s=5.0)
    assert [r.accuracy for r in scored] == [1.0, 1.0, 0.0]

    # the count is the trainer's: its guard passes every kept item and raises on the dropped one
    cfg = train_config_from_dict(dict(TRAIN))
    processor = load_policy_processor("tiny:0.5m", min_pixels=4096, max_pixels=16384)
    prompts = encode_student_prompts(processor, list(items.values()), cfg)
    assert max(p.input_ids.numel() for p in prompts) == m["prompt_tokens"]["max"]
    dropped = load_items(recipe_spec(folder, root))[2]
    assert dropped.id == "q-long-3"
    assert count_prompt_tokens(processor, [dropped], template=cfg.prompt_template) == [example["tokens"]]
    with pytest.raises(ItemError, match="q-long-3"):
        encode_student_prompts(processor, [dropped], cfg)

    # the same data without the training options, or with the filter off: nothing dropped, nothing counted
    for kwargs, data in (({}, {}), ({"train": TRAIN}, {"filter_overlong": False})):
        m2 = prepare_data({"train": recipe_spec(folder, root), **data}, **kwargs).manifest["train"]
        assert m2["count"] == 4 and m2["filtered_overlong"] is None


def test_prepare_data_refuses_a_set_with_no_prompt_short_enough(tmp_path):
    from steps.data import prepare_data

    folder = write_virl39k(tmp_path / "hub")
    with pytest.raises(ValueError, match="every one of the 4 items.*max_prompt_length = 20"):
        prepare_data({"train": recipe_spec(folder, tmp_path / "img")}, train={**TRAIN, "max_prompt_length": 20})


def test_a_missing_image_names_the_item_and_the_path(tmp_path):
    missing = "images/Processed-q-count-4-0.jpg"
    folder = write_virl39k(tmp_path / "hub", leave_out=missing)
    with pytest.raises(ItemError) as e:
        load_items(recipe_spec(folder, tmp_path / "img"))
    assert e.value.item_id == "q-count-4" and e.value.field_name == "images[0]"
    assert missing in str(e.value) and str(tmp_path / "img") in str(e.value)
    assert "39Krelease.parquet row 3" in str(e.value)


# ------------------------------------------------------------------------------------------ archives


def test_unpack_once_is_idempotent_and_redoes_a_half_unpacked_folder(tmp_path):
    folder = write_virl39k(tmp_path / "hub")
    archive, dest = folder / "images.zip", tmp_path / "root"
    assert unpack_once(archive, dest) == 5
    marker = read_marker(dest)
    assert marker["archive"] == "images.zip" and marker["files"] == 5 and marker["size"] == archive.stat().st_size
    assert unpack_once(archive, dest) == 0  # the marker says it is there

    # a crash mid-way: a file cut short, no marker yet -> unpacked again, the file whole
    victim = dest / "images" / "Processed-q-geo-1-0.jpg"
    whole = victim.read_bytes()
    victim.write_bytes(whole[:10])
    (dest / MARKER).unlink()
    (dest / "unrelated.txt").write_text("kept")  # a folder that holds other files is never wiped
    assert unpack_once(archive, dest) == 5
    assert victim.read_bytes() == whole and (dest / "unrelated.txt").read_text() == "kept"

    # another archive (another size) in the same folder -> unpacked again
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("images/new.jpg", _jpeg(32, 32, 9))
    assert unpack_once(other, dest) == 1 and read_marker(dest)["archive"] == "other.zip"


def test_archives_stay_inside_their_folder_and_tar_works_too(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
        zf.writestr("/abs.txt", "y")
    unpack_once(evil, tmp_path / "z")
    assert not (tmp_path / "escaped.txt").exists() and not Path("/abs.txt").exists()
    assert sorted(p.name for p in (tmp_path / "z").rglob("*.txt")) == ["abs.txt", "escaped.txt"]

    tgz = tmp_path / "images.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        data = _jpeg(16, 16, 1)
        info = tarfile.TarInfo("images/a.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert unpack_once(tgz, tmp_path / "t") == 1 and (tmp_path / "t" / "images" / "a.jpg").read_bytes() == data

    not_archive = tmp_path / "images.zip.part"
    not_archive.write_text("not an archive")
    with pytest.raises(SpecError, match="neither a zip nor a tar"):
        unpack_once(not_archive, tmp_path / "n")


def test_the_archive_of_a_hub_spec_is_fetched_from_its_repo(tmp_path, monkeypatch):
    """The recipe's spec (format hf, hub id, images_archive a file name) asks the hub download function for
    that repo's file at the spec's revision; the fetch itself is the hub API call, not run here."""
    import ptdpo.data.archives as archives

    folder = write_virl39k(tmp_path / "hub")
    calls = []

    def fake_fetch(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return folder / filename

    monkeypatch.setattr(archives, "fetch_hub_file", fake_fetch)
    spec = json.loads((ROOT / "configs" / "qwen3vl-2b.json").read_text())["data"]["train"]
    spec = DatasetSpec.from_dict({**spec, "image_root": str(tmp_path / "root"), "revision": "abc123"})
    assert is_hub_id(spec.path) and spec.data_files == "39Krelease.parquet"
    root = prepare_image_root(spec, base_dir=tmp_path)
    assert calls == [("TIGER-Lab/ViRL39K", "images.zip", "abc123")]
    assert root == tmp_path / "root" and (root / "images" / "Processed-q-two-2-1.jpg").is_file()
    # a local archive wins over the hub; neither -> a clear error
    assert resolve_archive(DatasetSpec.from_dict({**spec.__dict__, "images_archive": str(folder / "images.zip")}))
    local = DatasetSpec.from_dict({"format": "parquet", "path": "x.parquet", "images_archive": "nope.zip",
                                   "image_root": "r"})
    with pytest.raises(SpecError, match="nope.zip.*no hub dataset"):
        resolve_archive(local, tmp_path)
    assert len(calls) == 1


def test_is_hub_id(tmp_path):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert is_hub_id("TIGER-Lab/ViRL39K") and not is_hub_id("owner/name", tmp_path)
    assert not is_hub_id("parquet") and not is_hub_id("./a/b") and not is_hub_id("/data/x") and not is_hub_id(None)


# ------------------------------------------------------------------------------------------ spec, config


def test_spec_and_config_errors_name_the_key():
    from ptdpo.run_config import RunConfigError, data_section

    with pytest.raises(SpecError, match="images_archive 'images.zip' needs 'image_root'"):
        DatasetSpec.from_dict({"format": "parquet", "path": "x.parquet", "images_archive": "images.zip"})
    with pytest.raises(RunConfigError) as e:
        data_section({"train": {"format": "synthetic", "n": 2, "strip_image_tokens": "yes"},
                      "filter_overlong": "no"})
    text = str(e.value)
    assert "data.train.strip_image_tokens" in text and "data.filter_overlong" in text


def test_recipes_name_virl39k_as_published_and_the_papers_prompt_lengths():
    from ptdpo.run_config import run_config_from_dict
    from tests.test_configs import cfg_of

    for name, limit in (("qwen3vl-2b.json", 8192), ("qwen3vl-4b.json", 8192), ("qwen3vl-8b.json", 4096),
                        ("qwen3vl-8b-2node.json", 4096)):
        rc = run_config_from_dict(cfg_of(name))
        spec, t = rc.data.train, rc.train
        assert t.max_prompt_length == limit, name
        assert t.vllm.max_model_len >= t.max_prompt_length + t.max_response_length, name
        assert set(spec.meta_columns) == {"category", "source", "PassRate_32BTrained", "PassRate_7BBase"}
        mapped = set(spec.fields.values()) | set(spec.meta_columns)
        assert mapped <= set(VIRL_COLUMNS) and set(spec.hub["columns"]) == set(VIRL_COLUMNS)
        assert (spec.path, spec.data_files, spec.images_archive) == ("TIGER-Lab/ViRL39K", "39Krelease.parquet",
                                                                     "images.zip")
        assert spec.strip_image_tokens and spec.image_root.startswith("/cache/") and rc.data.filter_overlong
        assert spec.hub["verified"] is False


# ------------------------------------------------------------------------------------------ counting


def test_counting_matches_the_processor_on_decoded_images(tiny_processor):
    """The header-size count equals ``encode_prompts`` (the trainer's encoding) for tiny and huge images,
    odd aspect ratios, several images, none, thinking on and off, default and recipe pixel limits; and the
    weight-free processor of ``tiny:0.5m`` is ``load_policy``'s."""
    from ptdpo.data.prompt_length import count_prompt_tokens
    from ptdpo.models.loading import load_policy_processor

    sizes = [(17, 900), (640, 480), (33, 33), (1500, 200), (3000, 2000)]
    items = [Item(id=f"i{k}", images=[_jpeg(w, h, k)] * (1 + k % 3), question="Count. " * (3 + 29 * k), answer="1")
             for k, (w, h) in enumerate(sizes)]
    items.append(Item(id="text", images=[], question="No image here.", answer="2"))
    for limits in ((None, None), (200704, 1003520)):
        processor = load_policy_processor("tiny:0.5m", *limits)
        for thinking in (False, True):
            fast = count_prompt_tokens(processor, items, enable_thinking=thinking, batch_size=4)
            assert fast == count_prompt_tokens(processor, items, enable_thinking=thinking, exact=True)
    assert count_prompt_tokens(load_policy_processor("tiny:0.5m"), items) == count_prompt_tokens(
        tiny_processor, items, exact=True)
    with pytest.raises(ItemError, match="bad.*images\\[0\\].*size"):
        count_prompt_tokens(tiny_processor, [Item(id="bad", images=[b"not an image"], question="q", answer="1")])


def test_strip_image_tokens():
    assert strip_image_tokens("<image>\nWhat is x?") == "What is x?"
    assert strip_image_tokens("Compare <image 1> and <image_2>.") == "Compare (image 1) and (image 2)."
    assert strip_image_tokens("<IMAGE><image> Which?") == "Which?"
    assert strip_image_tokens("<image>") == "<image>"  # nothing else to ask: kept as it was
