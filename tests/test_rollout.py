"""Rollout records and the engines behind rollouts: per-rollout prompts keep their own image rows; the
transformers engine samples a batch in one pass without changing any group's samples; what the vLLM
engine asks of vLLM (requests, per-request seeds, engine arguments, the tensor-parallel rule, the
sleep/wake order, weight names). The vLLM engine itself runs in tests/vllm_engine (the vLLM environment)."""

from __future__ import annotations

import pytest
import torch

from ptdpo.config import VLLMConfig
from ptdpo.data.schema import item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.engines import SamplingConfig, TransformersEngine
from ptdpo.engines.vllm_args import (
    EngineConfigError,
    SleepPlan,
    build_requests,
    engine_kwargs,
    sampling_kwargs,
    tensor_parallel_group,
    vllm_options,
)
from ptdpo.models.multimodal import completion_hidden_states, completion_logprobs, encode_prompts
from ptdpo.models.sampling import inverse_cdf, mix_seed, nucleus
from ptdpo.prompts import build_messages
from ptdpo.rollout.records import collate_completions, collate_prompts, split_prompt_batch


def _encoded(processor, n=3, sizes=(64, 96, 128)):
    items = [generate_synthetic(1, seed=s, image_size=sizes[s % len(sizes)])[0] for s in range(n)]
    msgs = [build_messages(it) for it in items]
    imgs = [item_images(it) for it in items]
    batch = encode_prompts(processor, msgs, imgs)
    return batch, split_prompt_batch(batch, batch["images_per_sample"], texts=batch["texts"], images=imgs), imgs


def test_split_then_collate_restores_the_batch(tiny_processor):
    batch, prompts, _ = _encoded(tiny_processor)
    again = collate_prompts(prompts, tiny_processor.tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(again[key], batch[key]), key
    # images of different sizes have different patch counts: each prompt keeps exactly its own rows
    rows = [p.pixel_values.shape[0] for p in prompts]
    assert len(set(rows)) > 1 and sum(rows) == batch["pixel_values"].shape[0]


def test_subset_collation_matches_full_batch_forward(tiny_model, tiny_processor):
    _, prompts, _ = _encoded(tiny_processor)
    pad = tiny_processor.tokenizer.pad_token_id
    comps = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13])]
    ids, mask = collate_completions(comps, pad)
    with torch.no_grad():
        full = completion_hidden_states(tiny_model, collate_prompts(prompts, pad), ids, mask)
        # the last prompt alone, as a mini-batch of one: same hidden states on its real tokens
        ids1, mask1 = collate_completions(comps[2:], pad)
        one = completion_hidden_states(tiny_model, collate_prompts(prompts[2:], pad), ids1, mask1)
    assert torch.allclose(full[2, :4], one[0, :4], atol=1e-5)


# ------------------------------------------------------------------------------ transformers engine


def _tokens(groups):
    return [[s.completion.tolist() for s in g] for g in groups]


def test_a_groups_samples_do_not_depend_on_its_batch(tiny_policy):
    """Float32 tiny policy: a group sampled alone, in a batch with other groups (longer and shorter
    prompts, so different left padding) and split over several passes gives the same tokens."""
    model, processor = tiny_policy
    _, prompts, _ = _encoded(processor, n=3)
    sampling = SamplingConfig(10, temperature=1.0, top_p=0.95)
    engine = TransformersEngine(model, processor)
    alone = engine.sample([prompts[1]], 4, sampling, [11])
    batch = engine.sample(prompts, 4, sampling, [5, 11, 7])
    assert _tokens(batch)[1] == _tokens(alone)[0]
    split = TransformersEngine(model, processor, max_batch_rows=3).sample(prompts[::-1], 4, sampling, [7, 11, 5])
    assert _tokens(split)[::-1] == _tokens(batch)
    assert len({tuple(t) for t in _tokens(alone)[0]}) > 1  # the samples of a group are not copies
    assert _tokens(engine.sample([prompts[1]], 4, sampling, [12])) != _tokens(alone)
    greedy = engine.greedy(prompts, 8)
    assert [g.completion.tolist() for g in engine.greedy(prompts[1:2], 8)] == [greedy[1].completion.tolist()]


def test_engine_logprobs_are_the_training_forwards(tiny_policy):
    model, processor = tiny_policy
    _, prompts, _ = _encoded(processor, n=3)
    groups = TransformersEngine(model, processor).sample(prompts, 2, SamplingConfig(8, 0.7), [1, 2, 3],
                                                         logprobs=True)
    flat = [s for g in groups for s in g]
    pad = processor.tokenizer.pad_token_id
    ids, mask = collate_completions([s.completion for s in flat], pad)
    with torch.no_grad():
        ref = completion_logprobs(model, collate_prompts([p for p in prompts for _ in range(2)], pad), ids, mask)
    for i, s in enumerate(flat):
        torch.testing.assert_close(s.logprobs, ref[i, : s.completion.numel()], atol=1e-5, rtol=1e-5)
        assert s.text == processor.tokenizer.decode(s.completion.tolist(), skip_special_tokens=True)


def test_row_sampler_math_against_float64_references():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.1, 0.6, 0.05, 0.25]], dtype=torch.float64)
    # nucleus 0.75: the smallest set of the most likely tokens holding 0.75 of the mass
    assert nucleus(probs, 0.75).tolist() == [[0.5, 0.0, 0.3, 0.0], [0.0, 0.6, 0.0, 0.25]]
    assert torch.equal(nucleus(probs, 1.0), probs)
    u = torch.rand(40_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for row in probs:
        draws = inverse_cdf(row.expand(len(u), -1).float(), u)
        freq = torch.bincount(draws, minlength=4).double() / len(u)
        assert freq[1 if row[1] == 0 else 0] >= 0 and (freq - row).abs().max() < 0.01
        assert not (row == 0).any() or freq[row == 0].sum() == 0  # a zero-probability token never comes
    assert len({mix_seed(s, j) for s in range(100) for j in range(8)}) == 800  # s + j would collide
    assert all(0 <= mix_seed(s, 3) < 2**63 for s in (0, 1, 2**62))


# ------------------------------------------------------------------------------ vLLM engine, pure parts


def test_vllm_requests_and_per_request_seeds(tiny_processor):
    _, prompts, imgs = _encoded(tiny_processor, n=2)
    requests = build_requests([prompts[0]] * 3 + [prompts[1]] * 2)
    assert len(requests) == 5
    assert requests[0]["prompt"] == prompts[0].text and requests[3]["prompt"] == prompts[1].text
    assert requests[0]["multi_modal_data"]["image"] == imgs[0]
    # the text vLLM gets holds one placeholder per image: vLLM expands it itself
    assert requests[0]["prompt"].count("<|image_pad|>") == 1
    from ptdpo.engines.base import row_seeds

    seeds = row_seeds([11, 50], 3)
    assert seeds == [mix_seed(11, 0), mix_seed(11, 1), mix_seed(11, 2), mix_seed(50, 0), mix_seed(50, 1), mix_seed(50, 2)]
    sampled = SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.9)
    kw = sampling_kwargs(sampled, seeds[0], suppress_ids=[7], logprobs=True)
    assert kw == {"n": 1, "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0,
                  "repetition_penalty": 1.0, "seed": seeds[0], "skip_special_tokens": True,
                  "logit_bias": {7: -100.0}, "logprobs": 0}
    greedy = sampling_kwargs(SamplingConfig(32, do_sample=False), 3)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 1 and greedy["seed"] is None
    bare = split_prompt_batch(encode_prompts(tiny_processor, [[{"role": "user", "content": "hi"}]]), [0])[0]
    with pytest.raises(ValueError, match="no chat-template text"):
        build_requests([bare])


def test_vllm_engine_arguments_colocated_and_alone():
    opts = vllm_options({"tensor_parallel_size": 2, "max_model_len": 8192, "dtype": "bfloat16"}, "train.vllm")
    kw = engine_kwargs("Qwen/Qwen3-VL-8B-Thinking", opts, colocated=True, sleep_available=True, world_size=8,
                       pixel_limits=(200704, 1003520), where="train.vllm")
    assert kw == {"model": "Qwen/Qwen3-VL-8B-Thinking", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.35,
                  "dtype": "bfloat16", "enforce_eager": False, "enable_sleep_mode": True,
                  "limit_mm_per_prompt": {"image": 4}, "seed": 0, "max_model_len": 8192,
                  "mm_processor_kwargs": {"size": {"shortest_edge": 200704, "longest_edge": 1003520}},
                  "distributed_executor_backend": "external_launcher"}
    assert engine_kwargs("m", VLLMConfig(kv_cache_gib=1.5), colocated=False, sleep_available=False)[
        "kv_cache_memory_bytes"] == 3 * 2**29
    alone = engine_kwargs("m", VLLMConfig(), colocated=False, sleep_available=True)
    assert alone["gpu_memory_utilization"] == 0.9 and alone["enable_sleep_mode"] is False
    assert "distributed_executor_backend" not in alone
    cpu = engine_kwargs("m", VLLMConfig(), colocated=True, sleep_available=False)
    assert cpu["enable_sleep_mode"] is False and "distributed_executor_backend" not in cpu
    # seeded requests on vLLM's CPU sampler fail after a chunked prefill: prompts are prefilled whole there
    assert engine_kwargs("m", VLLMConfig(), colocated=True, sleep_available=False, cpu=True)[
        "enable_chunked_prefill"] is False
    assert engine_kwargs("m", VLLMConfig(engine_kwargs={"enable_chunked_prefill": True}), colocated=False,
                         sleep_available=False, cpu=True)["enable_chunked_prefill"] is True
    with pytest.raises(EngineConfigError, match=r"train\.vllm\.enable_sleep_mode = true"):
        engine_kwargs("m", VLLMConfig(enable_sleep_mode=True), colocated=True, sleep_available=False,
                      where="train.vllm")
    with pytest.raises(EngineConfigError, match=r"tensor_parallel_size = 2 does not divide the 3 training"):
        engine_kwargs("m", opts, colocated=True, sleep_available=True, world_size=3, where="train.vllm")
    with pytest.raises(EngineConfigError, match="needs 2 training processes"):
        engine_kwargs("m", opts, colocated=True, sleep_available=True, world_size=1, where="train.vllm")
    with pytest.raises(EngineConfigError, match=r"engine_kwargs sets \['dtype'\]"):
        engine_kwargs("m", VLLMConfig(engine_kwargs={"dtype": "half"}), colocated=False, sleep_available=True)
    with pytest.raises(EngineConfigError, match=r"train\.vllm\.tensor_parallel_size"):
        vllm_options({"tensor_parallel_size": 0}, "train.vllm")
    assert [tensor_parallel_group(r, 8, 2) for r in (0, 1, 5)] == [[0, 1], [0, 1], [4, 5]]


def test_qwen3vl_8b_rollout_engine_is_servable_on_its_node():
    """configs/qwen3vl-8b.json: tensor parallelism 2 over the 8 training ranks of its node (4 replicas)."""
    from pathlib import Path

    from ptdpo.run_config import load_run_config

    run = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "qwen3vl-8b.json")
    cfg = run.train
    assert cfg.rollout_backend == "vllm" and run.resources["train"].gpu == 8
    kw = engine_kwargs(cfg.policy, cfg.vllm, colocated=True, sleep_available=True, world_size=8,
                       pixel_limits=(cfg.min_pixels, cfg.max_pixels), where="train.vllm")
    assert kw["tensor_parallel_size"] == 2 and kw["distributed_executor_backend"] == "external_launcher"
    assert [tensor_parallel_group(r, 8, 2) for r in range(8)][6] == [6, 7]


def test_sleep_wake_order_around_a_weight_update():
    """The GPU order (forced here: CPU vLLM has no sleep mode): sleep after the rollouts, wake the weights
    before loading new ones, wake the KV cache before generating. Never load into a sleeping engine."""
    plan = SleepPlan(enabled=True)
    calls = plan.sleep() + plan.sleep() + plan.before_load() + plan.wake() + plan.wake()
    assert calls == [("sleep", {"level": 1}), ("wake_up", {"tags": ["weights"]}), ("wake_up", {"tags": ["kv_cache"]})]
    assert plan.sleep() + plan.wake() == [("sleep", {"level": 1}), ("wake_up", {"tags": ["weights", "kv_cache"]})]
    assert plan.before_load() == []  # awake: load directly
    off = SleepPlan(enabled=False)
    assert off.sleep() + off.before_load() + off.wake() == []


def test_vllm_weight_sync_uses_checkpoint_names(tiny_model, tmp_path):
    from safetensors import safe_open

    from ptdpo.engines import hf_weight_name, iter_policy_weights

    names = {n for n, _ in iter_policy_weights(tiny_model)}
    tiny_model.save_pretrained(tmp_path / "ckpt")
    saved = set()
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            saved |= set(fh.keys())
    # the names streamed to vLLM are the names of a saved Hugging Face checkpoint
    assert names <= saved | {"lm_head.weight"} and len(names) >= len(saved)
    assert hf_weight_name("_fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.w") == "model.layers.0.mlp.w"


def test_saved_policy_has_what_vllm_loads(tiny_policy, tmp_path):
    import json

    from ptdpo.models import save_policy

    model, processor = tiny_policy
    path = save_policy(model, processor, tmp_path / "p")
    video = json.loads((path / "video_preprocessor_config.json").read_text())
    ip = processor.image_processor
    assert video == {"size": {"longest_edge": ip.size["longest_edge"], "shortest_edge": ip.size["shortest_edge"]},
                     "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
                     "image_std": [0.5] * 3, "video_processor_type": "Qwen3VLVideoProcessor"}
    assert model.config.text_config.head_dim >= 32  # vLLM's CPU attention serves head sizes from 32
