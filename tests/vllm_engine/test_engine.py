"""The vLLM engine against the transformers engine on the same saved policy, and evaluation and hint
generation through it (one engine for the module)."""

from __future__ import annotations

import pytest

from ptdpo.data.schema import item_images
from ptdpo.engines import SamplingConfig, TransformersEngine, VLLMEngine
from ptdpo.prompts import build_messages


@pytest.fixture(scope="module")
def hf(policy_dir):
    from ptdpo.models import load_policy

    model, processor = load_policy(policy_dir)
    return TransformersEngine(model, processor)


@pytest.fixture(scope="module")
def engine(policy_dir, hf, engine_options):
    eng = VLLMEngine(policy_dir, engine_options, processor=hf.processor)
    yield eng
    eng.close()


def _chats(items):
    return [build_messages(it) for it in items], [item_images(it) for it in items]


def test_greedy_with_images_equals_the_transformers_engine(engine, hf, items):
    msgs, imgs = _chats(items)
    got = engine.greedy(engine.encode(msgs, imgs), 24, logprobs=True)
    want = hf.greedy(hf.encode(msgs, imgs), 24, logprobs=True)
    for g, w in zip(got, want):
        assert g.completion.tolist() == w.completion.tolist()
        assert g.text == w.text and g.truncated == w.truncated
    gap = max(float((g.logprobs - w.logprobs).abs().max()) for g, w in zip(got, want))
    print(f"largest log-prob gap, vLLM vs transformers greedy: {gap:.2e}")
    assert gap < 1e-4
    # the engine's log-probs are the model's raw ones: the training forward agrees
    assert all(g.prompt_tokens and g.prompt_tokens > 10 for g in got)


def test_a_groups_samples_do_not_depend_on_the_batch(engine, items):
    msgs, imgs = _chats(items[:3])
    prompts = engine.encode(msgs, imgs)
    sampling = SamplingConfig(12, temperature=1.0, top_p=0.95)
    alone = engine.sample([prompts[1]], 4, sampling, [11])[0]
    batch = engine.sample(prompts, 4, sampling, [5, 11, 7])
    assert [s.completion.tolist() for s in batch[1]] == [s.completion.tolist() for s in alone]
    # the samples of a group differ from each other and from a neighbour group of the same prompt
    assert len({tuple(s.completion.tolist()) for s in alone}) > 1
    other = engine.sample([prompts[1]], 4, sampling, [12])[0]
    assert [s.completion.tolist() for s in other] != [s.completion.tolist() for s in alone]


def test_truncation_and_eos(engine, hf, items):
    msgs, imgs = _chats(items)
    eos = {hf.processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    groups = engine.sample(engine.encode(msgs, imgs), 8, SamplingConfig(6), list(range(len(items))))
    flat = [s for g in groups for s in g]
    for s in flat:
        ids = s.completion.tolist()
        assert 1 <= len(ids) <= 6
        assert s.truncated == (ids[-1] not in eos), ids
        assert s.truncated or not (set(ids[:-1]) & eos)
    vision = set(engine.suppressed_ids())
    assert not vision & {t for s in flat for t in s.completion.tolist()}


def test_evaluation_through_the_vllm_engine(engine, hf, policy_dir):
    from ptdpo.eval import TransformersBackend, VLLMBackend, run_benchmark

    backend = VLLMBackend(policy_dir, llm=engine)
    greedy = {"max_new_tokens": 8, "batch_size": 2, "show_progress": False, "limit": 4}
    preds, rows, err = run_benchmark(backend, "synthetic_id", greedy, model_name="tiny-vllm")
    assert err is None and len(preds) == 4
    ref, _, err = run_benchmark(TransformersBackend(hf.model, hf.processor), "synthetic_id", greedy)
    assert err is None and preds["raw_output"].tolist() == ref["raw_output"].tolist()
    sampled = {**greedy, "temperature": 1.0, "k": 3, "pass_k": [1, 3], "seed": 4}
    preds, rows, err = run_benchmark(backend, "synthetic_id", sampled, model_name="tiny-vllm")
    assert err is None and len(preds) == 12 and preds["response_tokens"].between(1, 8).all()
    got = {r["metric"]: r["value"] for r in rows}
    assert {"avg@3", "pass@3", "accuracy"} <= set(got)
    again, _, _ = run_benchmark(backend, "synthetic_id", {**sampled, "batch_size": 1})
    assert again["raw_output"].tolist() == preds["raw_output"].tolist()  # per-item seeds: chunking changes nothing


def test_hint_generator_offline_through_the_engine(engine, policy_dir, items):
    """The random model writes garbage: the real path runs end to end (requests built from items with
    images, outputs parsed, audited, failures recorded with their raw text), not the hint quality."""
    from ptdpo.data.schema import Item
    from ptdpo.hints import FAILED, OK, REJECTED, make_generator, run_generation

    unreadable = Item(id="broken", images=["/no/such/image.png"], question="How many?", answer="3")
    gen = make_generator({"name": "vllm", "model": policy_dir, "max_tokens": 24, "batch_size": 2,
                          "temperature": 0.7, "llm": engine.llm})
    results = run_generation(gen, [*items[:3], unreadable], max_attempts=2)
    status = {r.item_id: r for r in results}
    assert status["broken"].status == FAILED and "images[0]" in status["broken"].error
    for it in items[:3]:
        r = status[it.id]
        assert r.status in (OK, REJECTED, FAILED) and r.attempts == 2 and r.raw
        first = r.history[0]
        assert first["usage"]["prompt_tokens"] > 50 and 1 <= first["usage"]["completion_tokens"] <= 24
