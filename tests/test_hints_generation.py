"""The generation loop, the resumable shard cache and the generate_hints step body."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import ptdpo.hints.generation as generation
from ptdpo.data.schema import Item
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.hints import (
    FAILED,
    GENERATORS,
    OK,
    REJECTED,
    HintGenerator,
    HintResult,
    OpenAIGenerator,
    OracleGenerator,
    RawOutput,
    ShardCache,
    VLLMGenerator,
    check_generator_config,
    generator_class,
    make_generator,
    regenerate_with_feedback,
    run_generation,
    shard_cache_path,
)
from steps.hints import generate_hints_shard, join_hint_shards, shard_items

CLEAN = json.dumps({"regions": [{"bbox": [0, 0, 500, 500], "label": "left half", "why": "the objects"}],
                    "steps": ["Count the objects."], "traps": []})
LEAK = json.dumps({"regions": [], "steps": ["There are 7 objects."], "traps": []})


class Scripted(HintGenerator):
    """Returns scripted texts per item and attempt; counts calls. ``None`` in a script skips the item."""

    name = "scripted"
    model = "fake"
    prompt_version = "t1"

    def __init__(self, script, default=CLEAN):
        self.script = script
        self.default = default
        self.calls: list[tuple[str, int, str | None]] = []

    def generate_stream(self, requests):
        for r in requests:
            self.calls.append((r.item.id, r.attempt, r.feedback))
            seq = self.script.get(r.item.id, [])
            text = seq[r.attempt - 1] if r.attempt <= len(seq) else self.default
            if text is None:
                continue
            if text == "ERROR":
                yield RawOutput(r.item.id, error="HTTP 500: boom")
            else:
                yield RawOutput(r.item.id, text=text)


def _items(n=4):
    return [Item(id=f"i{k}", images=[], question="How many objects are there?", answer="7") for k in range(n)]


def test_statuses_history_and_feedback():
    gen = Scripted({"i1": [LEAK, CLEAN], "i2": ["garbage", "garbage"], "i3": [LEAK, LEAK]})
    res = run_generation(gen, _items(), max_attempts=2)
    assert [r.status for r in res] == [OK, OK, FAILED, REJECTED]
    assert res[1].attempts == 2 and res[1].history[0]["passed"] is False
    fb = {c[0]: c[2] for c in gen.calls if c[1] == 2}
    assert "answer_string" in fb["i1"] and "unparseable" in fb["i2"]
    assert res[3].hint is not None and res[3].verdict.reasons == ["answer_string", "no_spatial_cue"]
    assert res[2].raw == "garbage" and "no JSON object" in res[2].error
    assert all(len(r.history) == r.attempts for r in res)


def test_generator_that_skips_an_item_is_recorded_never_dropped():
    res = run_generation(Scripted({"i0": [None]}), _items(2))
    assert [r.status for r in res] == [FAILED, OK] and "no output" in res[0].error


def test_duplicate_ids_and_bad_attempts_rejected():
    items = _items(2) + _items(1)
    with pytest.raises(ValueError, match="duplicate item id"):
        run_generation(Scripted({}), items)
    with pytest.raises(ValueError, match="max_attempts"):
        run_generation(Scripted({}), _items(1), max_attempts=0)


def test_regenerate_with_feedback_from_earlier_results():
    items = _items()
    first = run_generation(Scripted({"i0": [LEAK], "i1": ["ERROR"], "i3": [LEAK]}), items)
    assert [r.status for r in first] == [REJECTED, FAILED, OK, REJECTED]
    gen = Scripted({"i3": [LEAK, LEAK, LEAK]})
    again = regenerate_with_feedback(gen, items, first, max_attempts=3)
    assert [r.status for r in again] == [OK, OK, OK, REJECTED]
    assert again[2] is first[2]  # passing results are kept as they are
    assert again[3].attempts == 3 and len(again[3].history) == 3
    assert sorted({c[0] for c in gen.calls}) == ["i0", "i1", "i3"]
    assert all(c[1] >= 2 for c in gen.calls)
    assert any(c[0] == "i0" and "answer_string" in c[2] for c in gen.calls)


def test_shard_cache_resume_and_torn_lines(tmp_path):
    items = _items()
    gen = Scripted({"i1": ["ERROR"], "i2": [LEAK]})
    cache = ShardCache(shard_cache_path(tmp_path, 3, gen.config_hash()), gen.config_hash())
    res = run_generation(gen, items, cache=cache)
    assert [r.status for r in res] == [OK, FAILED, REJECTED, OK]
    assert len(gen.calls) == 4
    # a crash in the middle of a write leaves a partial last line
    with cache.path.open("a") as f:
        f.write('{"item_id": "i1", "status": "o')
    gen2 = Scripted({})
    res2 = run_generation(gen2, items, cache=cache)
    assert [c[0] for c in gen2.calls] == ["i1"]  # only the failure is retried
    assert [r.status for r in res2] == [OK, OK, REJECTED, OK]
    loaded = cache.load()
    assert cache.skipped_lines == 1 and set(loaded) == {"i0", "i1", "i2", "i3"} and loaded["i1"].status == OK
    lines = cache.path.read_text().split("\n")
    assert lines[-2].startswith('{"item_id": "i1", "status": "ok"') and lines[-3].endswith('"status": "o')
    # rejected items are final unless asked
    gen3 = Scripted({})
    res3 = run_generation(gen3, items, cache=cache, retry_rejected=True)
    assert [c[0] for c in gen3.calls] == ["i2"] and res3[2].status == OK
    # another config hash never sees these lines
    other = ShardCache(cache.path, "0" * 16)
    assert other.load() == {}


def test_result_round_trip():
    (r,) = run_generation(Scripted({"i0": [LEAK]}), _items(1))
    again = HintResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.to_dict() == r.to_dict()


def test_generate_hints_shard_with_oracle(tmp_path):
    items = generate_synthetic(12, seed=5)
    shards = shard_items(items, 3)
    assert [len(s) for s in shards] == [4, 4, 4] and sum(shards, []) == items
    assert [len(s) for s in shard_items(list(range(7)), 3)] == [2, 3, 2]
    all_rows = []
    for k, shard in enumerate(shards):
        rows, failures = generate_hints_shard([it.to_dict() for it in shard], {"name": "oracle", "progress": True},
                                              tmp_path, k)
        assert failures == [] and all(r["usable"] and r["status"] == OK for r in rows)
        all_rows.append(rows)
    joined = join_hint_shards(all_rows)
    assert [r["item_id"] for r in joined] == [it.id for it in items]
    with pytest.raises(ValueError, match="more than one hint shard"):
        join_hint_shards([all_rows[0], all_rows[0]])
    assert len(list(tmp_path.glob("hints-shard*.jsonl"))) == 3
    # unstructured ablation: the same content as one paragraph, from the same cache
    rows_u, _ = generate_hints_shard(shards[0], {"name": "oracle", "structured": False}, tmp_path, 0)
    assert len(list(tmp_path.glob("hints-shard*.jsonl"))) == 3
    for s, u in zip(all_rows[0], rows_u):
        assert u["hint"]["kind"] == "unstructured" and s["hint"]["steps"][0].rstrip(".") in u["hint"]["text"]
    rows_g, _ = generate_hints_shard(shards[0], {"name": "oracle", "structured": False,
                                                 "unstructured_mode": "generate"}, tmp_path, 0)
    assert all(r["hint"]["kind"] == "unstructured" for r in rows_g)
    with pytest.raises(ValueError, match="unstructured_mode"):
        generate_hints_shard(shards[0], {"name": "oracle", "unstructured_mode": "x"}, tmp_path, 0)


def test_make_generator_errors():
    with pytest.raises(ValueError, match="unknown hint generator"):
        make_generator({"name": "gpt-please"})
    with pytest.raises(ValueError, match="bad config"):
        make_generator({"name": "oracle", "model": "x"})
    assert make_generator({"name": "oracle", "max_attempts": 3, "audit": {"max_chars": 900}}).name == "oracle"


def test_generator_registry_gives_classes_without_building_them():
    assert set(GENERATORS) == {"oracle", "openai", "vllm"}
    assert generator_class("oracle") is OracleGenerator and generator_class("openai") is OpenAIGenerator
    assert generator_class("vllm") is VLLMGenerator
    # run options (max_attempts, audit, structured) are not constructor arguments; the check binds the rest
    cfg = {"name": "vllm", "model": "Qwen/Qwen3-VL-235B-A22B-Instruct", "tensor_parallel_size": 8,
           "max_attempts": 3, "audit": {"max_chars": 900}, "structured": True}
    assert check_generator_config(cfg) is VLLMGenerator
    with pytest.raises(ValueError, match=r"bad config for the 'vllm' hint generator: .*tensor_paralel_size"):
        check_generator_config({"name": "vllm", "model": "m", "tensor_paralel_size": 8})
    with pytest.raises(ValueError, match=r"bad config for the 'vllm' hint generator: .*model"):
        check_generator_config({"name": "vllm"})
    with pytest.raises(ValueError, match=r"unknown hint generator 'gpt-please' \(known: oracle, openai, vllm\)"):
        generator_class("gpt-please")


def test_generation_loop_imports_no_generator():
    """The loop knows generators only through the interface (the import circle this replaced)."""
    tree = ast.parse(Path(generation.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "ptdpo.hints.generator_base" in imported
    assert not imported & {"ptdpo.hints.oracle", "ptdpo.hints.openai_gen", "ptdpo.hints.vllm_gen"}
