"""Every registered benchmark maps a local fixture, written in its dataset's public schema, into Items.

No network: each fixture is a small parquet file with the dataset's real column names (images as Hugging
Face Image-feature structs ``{"bytes": PNG, "path": ...}``, as the hub's parquet exports store them),
loaded through ``ptdpo.data.loaders.load_items`` with the spec's own field mapping and only the location
swapped for the local file. For each row a plausible correct model output is scored too, so the spec's
answer type, transforms and the reward module agree.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptdpo.data.schema import item_images
from ptdpo.eval import (
    PAPER_SUITE,
    REGISTRY,
    BenchmarkError,
    BenchmarkSpec,
    GenerationConfig,
    Sample,
    get_benchmark,
    load_benchmark,
    parse_lettered_options,
    prompt_item,
    registry_table,
    resolve_benchmark,
    score_samples,
)


def _png(seed: int = 0, size: int = 40) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250 - 20 * seed, 240))
    ImageDraw.Draw(img).rectangle([5 + seed, 5, 20 + seed, 25], fill=(30 * seed % 256, 90, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _img(seed: int = 0, path: str | None = None) -> dict:
    return {"bytes": _png(seed), "path": path}


def _write(tmp_path, name: str, rows: list[dict]):
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _think(ans: str) -> str:
    return f"<think>reasoning</think><answer>{ans}</answer>"




def _mathverse_row(index: str, version: str, question: str, answer: str, qtype: str, seed: int) -> dict:
    """A MathVerse testmini row; query_wo / query_cot carry the benchmark's own answer instructions."""
    shown = question or "the question shown in the image"
    return {
        "sample_index": index, "problem_index": str(int(index) % 7), "problem_version": version,
        "question": question, "image": _img(seed), "answer": answer, "question_type": qtype,
        "metadata": {"split": "testmini", "subject": "Plane Geometry"},
        "query_wo": f"According to {shown}, please directly answer the question and provide the correct option "
                    "letter, e.g., A, B, C, D.",
        "query_cot": f"According to {shown}, please first conduct reasoning, and then answer the question and "
                     "provide the correct option letter, e.g., A, B, C, D, at the end.",
        "question_for_eval": question or "Which angle? A:30 B:45",
    }


MATHVERSE_ROWS = [
    _mathverse_row("5", "Vision Only", "", "B", "multi-choice", 1),
    _mathverse_row("1", "Text Dominant", "As shown in the figure, find the angle.\nChoices:\nA:30\nB:45", "B",
                   "multi-choice", 2),
    _mathverse_row("10", "Vision Only", "", "5", "free-form", 3),
    _mathverse_row("20", "Vision Dominant", "Find the angle.\nChoices:\nA:30\nB:45\nC:60", "C", "multi-choice", 4),
]

# Each fixture: rows in the public schema, expectations after loading, one correct output per item.
FIXTURES: dict[str, dict] = {
    "geometry3k": {
        "rows": [
            {
                "images": [_img(1)],
                "problem": "<image>Find x. Round to the nearest tenth.",
                "answer": "3\\sqrt{3}",
            },
            {"images": [_img(2)], "problem": "<image>Find the area of the figure.", "answer": "48"},
        ],
        "n": 2,
        "answers": ["3\\sqrt{3}", "48"],
        "good": [_think("\\sqrt{27}"), "so \\boxed{48.0}"],
        "check": lambda items: items[0].question == "Find x. Round to the nearest tenth.",
    },
    "mathvista": {
        "rows": [
            {
                "pid": "1",
                "question": "How many bars are there?",
                "image": "images/1.jpg",
                "decoded_image": _img(1, "images/1.jpg"),
                "choices": ["3", "4", "5"],
                "unit": None,
                "precision": None,
                "answer": "4",
                "question_type": "multi_choice",
                "answer_type": "text",
                "metadata": {"source": "FigureQA", "task": "figure question answering"},
                "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, "
                "D, at the end.\nQuestion: How many bars are there?\nChoices:\n(A) 3\n(B) 4\n(C) 5",
            },
            {
                "pid": "2",
                "question": "What is the slope of the line?",
                "image": "images/2.jpg",
                "decoded_image": _img(2, "images/2.jpg"),
                "choices": None,
                "unit": None,
                "precision": 2.0,
                "answer": "1.41",
                "question_type": "free_form",
                "answer_type": "float",
                "metadata": {"source": "FunctionQA", "task": "textbook question answering"},
                "query": "Hint: Please answer the question requiring a floating-point number with two decimal "
                "places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What is the "
                "slope of the line?",
            },
        ],
        "n": 2,
        "answers": ["B", "1.41"],  # multiple-choice option text becomes its letter
        "good": [_think("(B)"), _think("1.414")],  # 1.414 agrees with 1.41 at the item's precision 2
        "check": lambda items: (
            items[0].choices == ["3", "4", "5"]
            and items[1].meta["precision"] == 2.0
            and items[0].meta["query"].startswith("Hint:")
        ),
    },
    "mathvista_multi_choice": {
        "rows": None,  # the mathvista rows (filled in below): only the multiple-choice one is kept
        "n": 1,
        "answers": ["B"],
        "good": [_think("(B)")],
        "check": lambda items: items[0].id == "1" and items[0].choices == ["3", "4", "5"],
    },
    "mathverse": {
        "rows": MATHVERSE_ROWS,
        "n": 3,  # the free-form row is not rule-verifiable: filtered out
        "answers": ["B", "B", "C"],
        "good": [_think("B"), _think("(B)"), _think("C")],
        "check": lambda items: (
            [it.id for it in items] == ["5", "1", "20"]
            # the bare question column, never query_cot / query_wo and their answer instructions
            and items[0].question == "Answer the question shown in the image."
            and items[1].question == "As shown in the figure, find the angle.\nChoices:\nA:30\nB:45"
            and not any("conduct reasoning" in it.question or "directly answer" in it.question for it in items)
        ),
    },
    "mathverse_vision_dependent": {
        "rows": MATHVERSE_ROWS,
        "n": 2,  # multiple choice in the vision versions only: the Text Dominant and free-form rows go
        "answers": ["B", "C"],
        "good": [_think("B"), _think("C")],
        "check": lambda items: [it.meta["problem_version"] for it in items] == ["Vision Only", "Vision Dominant"],
    },
    "mmk12": {
        "rows": [
            {
                "images": [_img(1)],
                "problem": "<image>As shown in the figure, what is the area of the shaded part?\n"
                "A. 2\nB. 4\nC. 6\nD. 8",
                "answer": "B",
            },
            {"images": [_img(2)], "problem": "<image>Find the value of x in the figure.", "answer": "\\frac{3}{2}"},
        ],
        "n": 2,
        "answers": ["B", "\\frac{3}{2}"],
        "good": [_think("B"), _think("1.5")],
        "check": lambda items: items[0].question.startswith("As shown in the figure") and items[0].choices is None,
    },
    "mathverse_vision_only": {
        "rows": [
            {
                "sample_index": "5",
                "problem_index": "1",
                "problem_version": "Vision Only",
                "question": "",
                "image": _img(1),
                "answer": "B",
                "question_type": "multi-choice",
                "metadata": {"split": "testmini", "subject": "Plane Geometry"},
                "query_wo": "According to the question shown in the image, please directly answer the question and "
                "provide the correct option letter, e.g., A, B, C, D.",
                "query_cot": "According to the question shown in the image, please first conduct reasoning, and then "
                "answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
                "question_for_eval": "",
            },
            {
                "sample_index": "1",
                "problem_index": "1",
                "problem_version": "Text Dominant",
                "question": "As shown in the figure, find the angle.",
                "image": _img(2),
                "answer": "B",
                "question_type": "multi-choice",
                "metadata": {"split": "testmini", "subject": "Plane Geometry"},
                "query_wo": "Please directly answer the question.",
                "query_cot": "Please first conduct reasoning.",
                "question_for_eval": "As shown in the figure, find the angle.",
            },
            {
                "sample_index": "10",
                "problem_index": "2",
                "problem_version": "Vision Only",
                "question": "",
                "image": _img(3),
                "answer": "5",
                "question_type": "free-form",
                "metadata": {"split": "testmini", "subject": "Functions"},
                "query_wo": "According to the question shown in the image, please directly answer the question.",
                "query_cot": "According to the question shown in the image, please first conduct reasoning, and then "
                "answer the question.",
                "question_for_eval": "",
            },
        ],
        "n": 2,  # the Text Dominant row is filtered out
        "answers": ["B", "5"],
        "good": [_think("Option B"), _think("5.0")],
        "check": lambda items: [it.id for it in items] == ["5", "10"] and items[0].choices is None,
    },
    "wemath": {
        "rows": [
            {
                "ID": "2steps_1",
                "split": "testmini",
                "knowledge concept": "Properties of Rectangles",
                "question": "As shown in the figure, what is the perimeter of the rectangle?",
                "option": "A. 12 cm; B. 14 cm; C. 16 cm; D. 18 cm; E. No correct answer",
                "answer": "B",
                "image_path": _img(1),
                "key": "2steps_1",
                "question number": 1,
                "knowledge concept description": "A rectangle has two pairs of equal sides.",
            },
            {
                "ID": "2steps_2",
                "split": "testmini",
                "knowledge concept": "Area of Rectangles",
                "question": "What is the area?",
                "option": "A. 10; B. 12; C. 24; D. 48; E. No correct answer",
                "answer": "C",
                "image_path": _img(2),
                "key": "2steps_2",
                "question number": 2,
                "knowledge concept description": "Area is length times width.",
            },
        ],
        "n": 2,
        "answers": ["B", "C"],
        "good": [_think("14 cm"), _think("C")],  # option text counts too
        "check": lambda items: items[0].choices == ["12 cm", "14 cm", "16 cm", "18 cm", "No correct answer"],
    },
    "logicvista": {
        "rows": [
            {
                "id": "logic_1",
                "image": _img(1),
                "question": "Which shape comes next? A. circle B. square C. star D. triangle",
                "answer": "C",
                "reasoning": "The number of corners increases.",
                "skill": ["inductive"],
                "broad_capability": "reasoning",
                "specific_capability": "patterns",
                "imagesource": "web",
            },
            {
                "id": "logic_2",
                "image": _img(2),
                "question": "Which two figures are mirror images? A. 1 B. 2 C. 3 D. 4",
                "answer": "A, C",
                "reasoning": "Figures 1 and 3 are reflections.",
                "skill": ["spatial"],
                "broad_capability": "reasoning",
                "specific_capability": "mirror",
                "imagesource": "web",
            },
        ],
        "n": 2,
        "answers": ["C", "A, C"],
        "good": [_think("C"), _think("C and A")],
        "check": lambda items: items[1].choices is None,
    },
    "mmmu_pro_vision": {
        "rows": [
            {
                "id": "test_Accounting_1",
                "image": _img(1),
                "options": "['$6', '$7', '$8']",
                "answer": "B",
                "subject": "Accounting",
            },
            {
                "id": "test_Art_2",
                "image": _img(2),
                "options": "['Baroque', 'Rococo', 'Gothic', 'Renaissance']",
                "answer": "D",
                "subject": "Art",
            },
        ],
        "n": 2,
        "answers": ["B", "D"],
        "good": [_think("B"), _think("(D)")],
        "check": lambda items: items[0].choices is None and items[0].meta["subject"] == "Accounting",
        "prompt_has": "shown in the image",
    },
    "mmmu_pro_standard10": {
        "rows": [
            {
                "id": "test_Math_1",
                "question": "<image 1> What is the value of x in the figure?",
                "options": str([str(v) for v in range(1, 11)]),
                "explanation": "",
                "image_1": _img(1),
                "image_2": None,
                "image_3": None,
                "image_4": None,
                "image_5": None,
                "image_6": None,
                "image_7": None,
                "img_type": "['Diagrams']",
                "answer": "C",
                "topic_difficulty": "Medium",
                "subject": "Math",
            },
            {
                "id": "test_Physics_2",
                "question": "Compare <image 1> and <image 2>. Which moves faster?",
                "options": str(
                    [
                        "the car",
                        "the bike",
                        "the same",
                        "cannot tell",
                        "the train",
                        "the boat",
                        "the plane",
                        "the horse",
                        "the runner",
                        "the snail",
                    ]
                ),
                "explanation": "",
                "image_1": _img(2),
                "image_2": _img(3),
                "image_3": None,
                "image_4": None,
                "image_5": None,
                "image_6": None,
                "image_7": None,
                "img_type": "['Photographs']",
                "answer": "A",
                "topic_difficulty": "Easy",
                "subject": "Physics",
            },
        ],
        "n": 2,
        "answers": ["C", "A"],
        "good": [_think("3"), _think("the car")],
        "check": lambda items: (
            len(items[0].choices) == 10
            and len(items[1].images) == 2
            and items[1].question == "Compare (image 1) and (image 2). Which moves faster?"
        ),
    },
    "superclevr_count": {
        "rows": [
            {
                "image": _img(1),
                "problem": "How many different items are there in the image?",
                "solution": "<answer> 3 </answer>",
            },
            {
                "image": _img(2),
                "problem": "How many items are there in the image?",
                "solution": "<answer>7</answer>",
            },
        ],
        "n": 2,
        "answers": ["3", "7"],
        "good": [_think("3"), _think("seven")],
        "check": lambda items: True,
    },
    "clevr_count": {
        "rows": [
            {"images": [_img(1)], "problem": "<image>How many items are there in the image?", "answer": "4"},
            {"images": [_img(2)], "problem": "<image>How many items are there in the image?", "answer": "10"},
        ],
        "n": 2,
        "answers": ["4", "10"],
        "good": [_think("4"), "\\boxed{10}"],
        "check": lambda items: items[0].question == "How many items are there in the image?",
    },
}

FIXTURES["mathvista_multi_choice"]["rows"] = FIXTURES["mathvista"]["rows"]

HUB_BENCHMARKS = [n for n, s in REGISTRY.items() if s.dataset.get("format") == "hf"]


def test_every_hub_benchmark_has_a_fixture():
    assert sorted(HUB_BENCHMARKS) == sorted(FIXTURES)
    for name in PAPER_SUITE:
        assert name in REGISTRY


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_spec_maps_public_schema_fixture(tmp_path, name):
    fx = FIXTURES[name]
    spec = get_benchmark(name)
    assert spec.hub["id"] == spec.dataset["path"]
    assert spec.hub["verified"] is False  # nothing here was checked against the live hub
    mapped = {c for v in spec.dataset["fields"].values() for c in (v if isinstance(v, list) else [v])}
    used = mapped | set(spec.dataset.get("meta_columns", [])) | set(spec.filters)
    assert used <= set(spec.hub["columns"]), used - set(spec.hub["columns"])
    assert set(spec.hub["columns"]) == set(fx["rows"][0]), "the fixture must use the public schema"
    local = spec.with_local_file(_write(tmp_path, name, fx["rows"]))
    assert local.dataset["format"] == "parquet" and local.dataset["fields"] == spec.dataset["fields"]
    items = load_benchmark(local)
    assert len(items) == fx["n"]
    assert [it.answer for it in items] == fx["answers"]
    for it in items:
        assert it.id and it.question.strip()
        assert len(it.images) >= 1
        assert all(img.size == (40, 40) for img in item_images(it))
        assert "<image" not in it.question
    assert fx["check"](items)
    # the prompt the model sees
    prompts = [prompt_item(spec, it) for it in items]
    if "prompt_has" in fx:
        assert all(fx["prompt_has"] in p.question for p in prompts)
    if name == "mathvista":
        assert prompts[0].question.startswith("Hint:") and prompts[0].choices is None
    # a correct output scores 1, the spec's answer type and the reward module agree
    cfg = GenerationConfig(show_progress=False)
    samples = [[Sample(text, 10, False)] for text in fx["good"]]
    preds = score_samples(local, items, samples, cfg, model="oracle")
    assert preds["correct"].tolist() == [1.0] * len(items), preds[["gold", "extracted", "reason"]].to_dict(
        "records"
    )
    wrong = [[Sample(_think("Z"), 3, False)] for _ in items]
    assert score_samples(local, items, wrong, cfg, model="oracle")["correct"].sum() == 0


def test_limit_applies_after_filters(tmp_path):
    spec = get_benchmark("mathverse_vision_only").with_local_file(
        _write(tmp_path, "mv", FIXTURES["mathverse_vision_only"]["rows"])
    )
    assert [it.id for it in load_benchmark(spec, limit=1)] == ["5"]
    assert "problem_version" in spec.loader_spec()["meta_columns"]
    assert "limit" not in spec.loader_spec()


@pytest.mark.parametrize("name", ["synthetic_id", "synthetic_ood"])
def test_synthetic_specs(name):
    items = load_benchmark(name, limit=3)
    assert len(items) == 3
    assert all(it.meta["ood"] is (name == "synthetic_ood") for it in items)
    assert get_benchmark(name).hub["verified"] is True


def test_user_benchmark_from_config_without_code(tmp_path):
    import base64

    path = tmp_path / "mine.jsonl"
    rows = [
        {"id": "u1", "images": [base64.b64encode(_png(1)).decode()], "question": "How many?", "answer": "3"},
        {
            "id": "u2",
            "images": [base64.b64encode(_png(2)).decode()],
            "question": "Which?",
            "answer": "B",
            "choices": ["red", "blue"],
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = resolve_benchmark({"name": "mine", "dataset": {"format": "jsonl", "path": "mine.jsonl"}})
    items = load_benchmark(spec, base_dir=tmp_path)
    assert [it.id for it in items] == ["u1", "u2"] and items[1].choices == ["red", "blue"]
    # and a parquet one
    pq.write_table(pa.Table.from_pylist([{"q": "Count?", "a": 2, "img": _img(0)}]), tmp_path / "mine.parquet")
    spec = BenchmarkSpec.from_dict(
        {
            "name": "mine_pq",
            "answer_type": "number",
            "dataset": {
                "format": "parquet",
                "path": str(tmp_path / "mine.parquet"),
                "fields": {"question": "q", "answer": "a", "images": "img"},
            },
        }
    )
    items = load_benchmark(spec)
    assert items[0].answer == "2" and items[0].question == "Count?"


def test_overrides_by_name_and_bad_specs():
    spec = resolve_benchmark({"name": "mathvista", "limit": 5})
    assert spec.limit == 5 and spec.dataset == get_benchmark("mathvista").dataset
    assert resolve_benchmark(spec.to_dict()) == spec
    with pytest.raises(BenchmarkError):
        resolve_benchmark("nope")
    with pytest.raises(BenchmarkError):
        BenchmarkSpec.from_dict({"name": "x", "dataset": {"format": "jsonl"}, "answer_type": "essay"})
    with pytest.raises(BenchmarkError):
        BenchmarkSpec.from_dict({"name": "x", "dataset": {"format": "jsonl"}, "colour": 1})
    with pytest.raises(BenchmarkError):
        BenchmarkSpec.from_dict({"name": "x", "dataset": {"format": "jsonl"}, "transforms": ["shout"]})


def test_registry_table():
    table = {r["name"]: r for r in registry_table()}
    assert table["mathvista"]["dataset"] == "AI4Math/MathVista" and table["mathvista"]["split"] == "testmini"
    assert table["mmmu_pro_vision"]["config"] == "vision"
    assert all(not r["verified"] for n, r in table.items() if n in HUB_BENCHMARKS)


def test_parse_lettered_options():
    assert parse_lettered_options("A. 1; B. 2; C. 3") == ["1", "2", "3"]
    assert parse_lettered_options("(A) x (B) y") == ["x", "y"]
    assert parse_lettered_options("A. 1; C. 3") is None
    assert parse_lettered_options("") is None


def test_paper_suite_is_papos_and_graded_by_the_last_box(tmp_path):
    """METHOD.md 5: the PAPO suite (counting on clevr_count_70k, MMK12, MathVerse filtered to multiple
    choice), graded as PAPO-Eval grades: the last \\boxed{} of each sample, nothing else."""
    from ptdpo.rewards import score_batch

    assert PAPER_SUITE == ("geometry3k", "mathvista", "mathverse", "mmmu_pro_vision", "logicvista", "clevr_count",
                           "wemath", "mmk12")
    for name in PAPER_SUITE:
        spec = get_benchmark(name)
        assert spec.hub["papo_eval"]["dataset"] == "PAPO-Galaxy/PAPO_eval" and spec.hub["papo_eval"]["rows"] > 0
        assert "query_cot" not in json.dumps(spec.dataset) and "query_cot" not in spec.prompt_template
        items = load_benchmark(spec.with_local_file(_write(tmp_path, name, FIXTURES[name]["rows"])))
        boxed = [f"<think>reading the figure</think>The answer is \\boxed{{{a}}}." for a in FIXTURES[name]["answers"]]
        out = score_batch(boxed, items, answer_type=spec.answer_type, template="boxed", max_workers=1)
        assert [(r.accuracy, r.format) for r in out] == [(1.0, 1.0)] * len(items), (name, [r.reason for r in out])
        tagged = [_think(a) for a in FIXTURES[name]["answers"]]  # the right answer, not in a box
        out = score_batch(tagged, items, answer_type=spec.answer_type, template="boxed", max_workers=1)
        assert [r.accuracy for r in out] == [0.0] * len(items), name
    with pytest.raises(BenchmarkError, match="question_from"):
        BenchmarkSpec.from_dict({"name": "x", "dataset": {"format": "jsonl"}, "transforms": ["question_from:q"]})
