"""Evaluation end to end: a user's jsonl benchmark with the tiny model, k samples, crash isolation, what the
vLLM backend asks of vLLM (the engine itself runs in tests/vllm_engine), lazy imports."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ptdpo.eval import (
    PREDICTION_COLUMNS,
    RESULT_COLUMNS,
    GenerationConfig,
    Sample,
    TransformersBackend,
    VLLMBackend,
    load_benchmark,
    prompt_item,
    resolve_benchmark,
    run_benchmark,
)
from steps.evaluate import evaluate_benchmark, evaluate_suite, resolve_benchmarks

REPO = Path(__file__).resolve().parents[1]
FAST = {"max_new_tokens": 6, "batch_size": 4, "show_progress": False}


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40 * seed % 256, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def user_bench(tmp_path) -> dict:
    rows = [
        {
            "id": f"u{i}",
            "images": [base64.b64encode(_png(i)).decode()],
            "question": f"How many squares? ({i})",
            "answer": str(i),
        }
        for i in range(3)
    ]
    rows.append(
        {
            "id": "u3",
            "images": [base64.b64encode(_png(3)).decode()],
            "question": "Which colour?",
            "answer": "B",
            "choices": ["red", "blue", "green"],
        }
    )
    path = tmp_path / "user.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"name": "user_bench", "dataset": {"format": "jsonl", "path": str(path)}, "answer_type": "auto"}


def test_user_jsonl_benchmark_end_to_end_with_tiny_policy(user_bench):
    cfg = {**FAST, "temperature": 1.0, "top_p": 0.95, "k": 2, "pass_k": [1, 2], "seed": 3}
    preds, rows, err = evaluate_benchmark("tiny:0.5m", user_bench, cfg)
    assert err is None
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert len(preds) == 4 * 2 and sorted(preds["sample"].unique()) == [0, 1]
    assert set(preds["item_id"]) == {"u0", "u1", "u2", "u3"}
    assert (preds["model"] == "tiny:0.5m").all() and (preds["benchmark"] == "user_bench").all()
    assert preds["raw_output"].map(lambda s: isinstance(s, str)).all()  # raw outputs kept
    assert preds["reason"].map(lambda s: isinstance(s, str) and s != "").all()
    assert (preds["response_tokens"].between(1, 6)).all()
    assert preds.loc[preds["item_id"] == "u3", "choices"].iloc[0] == json.dumps(["red", "blue", "green"])
    table = pd.DataFrame(rows)
    assert list(table.columns) == RESULT_COLUMNS
    got = {r["metric"]: r for r in rows}
    assert {"accuracy", "avg@2", "pass@1", "pass@2", "mean_response_tokens", "format_rate"} <= set(got)
    assert all(r["n"] == 4 for r in rows)
    for m in ("accuracy", "avg@2", "pass@1", "pass@2", "format_rate", "extraction_rate"):
        assert 0.0 <= got[m]["value"] <= 1.0
    assert got["pass@2"]["value"] >= got["pass@1"]["value"]
    # a tiny random model scores about zero; the accuracy equals the mean of the per-sample table
    assert got["accuracy"]["value"] == pytest.approx(preds.groupby("item_id")["correct"].mean().mean())


def test_transformers_backend_k_samples_and_seed(tiny_policy, user_bench):
    model, processor = tiny_policy
    backend = TransformersBackend(model, processor)
    spec = resolve_benchmark(user_bench)
    items = [prompt_item(spec, it) for it in load_benchmark(spec)][:2]
    cfg = GenerationConfig(**FAST, temperature=1.0, k=3, seed=7)
    a = backend.generate(items, cfg)
    b = backend.generate(items, cfg)
    assert [len(s) for s in a] == [3, 3]
    assert [[x.text for x in s] for s in a] == [[x.text for x in s] for s in b]  # seeded
    assert all(isinstance(x, Sample) and 1 <= x.n_tokens <= 6 for s in a for x in s)
    greedy = GenerationConfig(**FAST, temperature=0.0, k=5)
    assert greedy.k == 1 and greedy.pass_k == [1]
    assert [len(s) for s in backend.generate(items, greedy)] == [1, 1]


class _FailingFor:
    """A backend that crashes on one benchmark's prompts and answers the others perfectly."""

    name = "transformers"

    def __init__(self, bad_source: str) -> None:
        self.bad_source = bad_source

    def generate(self, items, cfg, desc="", on_batch=None):
        if any(it.source == self.bad_source for it in items):
            raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
        return [[Sample(f"<think>t</think><answer>{it.answer}</answer>", 5, False)] * cfg.k for it in items]


def test_crash_in_one_benchmark_leaves_the_others(tiny_policy, user_bench, tmp_path):
    missing = {"name": "missing_file", "dataset": {"format": "jsonl", "path": str(tmp_path / "nope.jsonl")}}
    preds, results, errors = evaluate_suite(
        tiny_policy, [missing, user_bench, {"name": "synthetic_id", "limit": 2}], FAST, model_name="tiny"
    )
    assert list(results.columns) == RESULT_COLUMNS
    assert set(errors) == {"missing_file"} and "not found" in errors["missing_file"]
    err_rows = results[results["benchmark"] == "missing_file"]
    assert err_rows["metric"].tolist() == ["error"] and math.isnan(err_rows["value"].iloc[0])
    assert err_rows["n"].tolist() == [0]
    for bench, n in [("user_bench", 4), ("synthetic_id", 2)]:
        acc = results[(results["benchmark"] == bench) & (results["metric"] == "accuracy")]
        assert acc["n"].tolist() == [n] and 0.0 <= acc["value"].iloc[0] <= 1.0
    assert set(preds["benchmark"]) == {"user_bench", "synthetic_id"}


def test_generation_crash_is_isolated_per_benchmark(user_bench):
    suite = [{**user_bench, "name": "ok_bench"}, {**user_bench, "name": "boom"}]
    # items take the file stem as their source; the failing backend keys on it
    backend = _FailingFor(bad_source="user")
    preds, rows, err = run_benchmark(backend, suite[0], FAST)
    assert err is not None and "device-side assert" in err and rows[0]["metric"] == "error"
    backend = _FailingFor(bad_source="never")
    preds, rows, err = run_benchmark(backend, suite[1], {**FAST, "temperature": 1.0, "k": 2})
    assert err is None and preds["correct"].tolist() == [1.0] * 8
    assert {r["metric"]: r["value"] for r in rows}["accuracy"] == 1.0


def test_unloadable_model_gives_an_error_row(user_bench):
    preds, rows, err = evaluate_benchmark("/definitely/not/a/model/dir", user_bench, FAST)
    assert preds.empty and list(preds.columns) == PREDICTION_COLUMNS
    assert rows == [
        {
            "benchmark": "user_bench",
            "model": "/definitely/not/a/model/dir",
            "metric": "error",
            "value": rows[0]["value"],
            "n": 0,
        }
    ]
    assert math.isnan(rows[0]["value"]) and "PolicyLoadError" in err


def test_resolve_benchmarks_defaults_to_paper_suite():
    names = [d["name"] for d in resolve_benchmarks()]
    assert names[:2] == ["geometry3k", "mathvista"] and len(names) == 8  # with MMK12 (METHOD.md 5)
    assert [d["name"] for d in resolve_benchmarks("synthetic_id, synthetic_ood")] == [
        "synthetic_id",
        "synthetic_ood",
    ]


# ------------------------------------------------------------------------------------------------ vLLM
# The vLLM engine itself runs in tests/vllm_engine (the vLLM environment); here: what it is asked.


def test_vllm_backend_requests_and_options(tiny_processor, user_bench):
    from ptdpo.engines.vllm_args import engine_kwargs, vllm_options

    backend = VLLMBackend(
        "Qwen/Qwen3-VL-2B-Thinking",
        processor=tiny_processor,
        gpu_memory_utilization=0.8,
        mm_processor_kwargs={"min_pixels": 4096, "max_pixels": 16384},
    )
    cfg = GenerationConfig(
        **FAST, temperature=1.0, top_p=0.99, k=4, pass_k=[1, 4], backend="vllm", enable_thinking=True
    )
    spec = resolve_benchmark(user_bench)
    items = [prompt_item(spec, it) for it in load_benchmark(spec)]
    from ptdpo.data.schema import item_images
    from ptdpo.engines.prompts import render_chats
    from ptdpo.engines.vllm_args import build_requests
    from ptdpo.eval.generation import messages_for

    prompts = render_chats(tiny_processor, [messages_for(it, cfg) for it in items], [item_images(it) for it in items],
                           enable_thinking=True)
    reqs = build_requests(prompts)
    assert len(reqs) == 4
    for req, it in zip(reqs, items):
        assert req["prompt"].count("<|image_pad|>") == len(it.images) == len(req["multi_modal_data"]["image"])
        assert it.question in req["prompt"] and "<answer>" in req["prompt"]  # format instruction
        assert req["multi_modal_data"]["image"][0].size == (64, 64)
    assert "C. green" in reqs[3]["prompt"]  # options are shown
    kw = engine_kwargs(backend.model, vllm_options(backend.llm_kwargs, "eval.generation.vllm"), colocated=False,
                       sleep_available=True)
    assert kw["model"] == "Qwen/Qwen3-VL-2B-Thinking"
    assert kw["gpu_memory_utilization"] == 0.8 and kw["limit_mm_per_prompt"] == {"image": 8}
    assert kw["mm_processor_kwargs"]["max_pixels"] == 16384 and kw["enable_sleep_mode"] is False
    with pytest.raises(ValueError, match=r"vllm: unknown key 'gpu_memory_utilisation'"):
        GenerationConfig(backend="vllm", vllm={"gpu_memory_utilisation": 0.8})


class _ScriptedSamples:
    """A backend whose samples are fixed: sample 0 answers "1", the others are cut by the token limit."""

    name = "vllm"

    def generate(self, items, cfg, desc="", on_batch=None):
        return [[Sample("<think>t</think><answer>1</answer>", 7, False)] + [Sample("cut", 9, True)] * (cfg.k - 1)
                for _ in items]


def test_metrics_from_k_samples(user_bench):
    cfg = GenerationConfig(**FAST, temperature=1.0, top_p=0.99, k=4, pass_k=[1, 4], backend="vllm")
    preds, rows, err = run_benchmark(_ScriptedSamples(), user_bench, cfg, model_name="vllm-model")
    assert err is None
    assert len(preds) == 16 and preds["truncated"].sum() == 12
    got = {r["metric"]: r["value"] for r in rows}
    # sample 0 answers "1": correct only for item u1 -> avg@4 = 1/4 * 1/4, pass@4 = 1/4
    assert got["avg@4"] == pytest.approx(1 / 16) and got["pass@4"] == pytest.approx(0.25)
    assert got["truncation_rate"] == pytest.approx(0.75)


def test_transformers_backend_samples_do_not_depend_on_the_batch_size(tiny_policy, user_bench):
    model, processor = tiny_policy
    spec = resolve_benchmark(user_bench)
    items = [prompt_item(spec, it) for it in load_benchmark(spec)]
    texts = []
    for batch_size in (4, 1):
        cfg = GenerationConfig(**{**FAST, "batch_size": batch_size}, temperature=1.0, k=2, seed=5)
        texts.append([[x.text for x in s] for s in TransformersBackend(model, processor).generate(items, cfg)])
    assert texts[0] == texts[1]


def test_importing_eval_does_not_import_vllm_or_torch(tmp_path):
    poison = tmp_path / "vllm"
    poison.mkdir()
    (poison / "__init__.py").write_text("raise ImportError('vllm must not be imported by ptdpo.eval')\n")
    code = (
        "import sys, ptdpo.eval, ptdpo.rewards, steps.evaluate\n"
        "bad = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
