"""Rollout records and backends: per-rollout prompts keep their own image rows; the vLLM backend's
request building, grouping, seeding, sleep/wake and weight sync (against a stand-in engine: vLLM is a
CUDA build and is not installed in CPU CI)."""

from __future__ import annotations

import sys
import types

import torch

from ptdpo.data.schema import item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.models.multimodal import completion_hidden_states, encode_prompts
from ptdpo.prompts import build_messages
from ptdpo.rollout.base import SamplingConfig
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


class _FakeLLM:
    """Stand-in for ``vllm.LLM`` recording what the backend asks of the engine."""

    def __init__(self, model, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        self.loaded = []
        self.events = []
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load))
        worker = types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))

    def _load(self, weights):
        self.loaded = [(n, tuple(t.shape)) for n, t in weights]

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append((requests, params))
        outs = []
        for i, sp in enumerate(params):
            n = 3 if i % 2 == 0 else sp["max_tokens"]
            finish = "stop" if i % 2 == 0 else "length"
            out = types.SimpleNamespace(token_ids=list(range(100, 100 + n)), text=f"r{i}", finish_reason=finish)
            outs.append(types.SimpleNamespace(outputs=[out]))
        return outs

    def reset_prefix_cache(self):
        self.events.append("reset")

    def sleep(self, level=1):
        self.events.append(f"sleep{level}")

    def wake_up(self):
        self.events.append("wake")


def _fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", mod)


def test_vllm_backend_groups_seeds_and_truncation(monkeypatch, tiny_processor):
    _fake_vllm(monkeypatch)
    from ptdpo.rollout.vllm_backend import VLLMRolloutBackend

    _, prompts, imgs = _encoded(tiny_processor, n=2)
    backend = VLLMRolloutBackend("some/model", min_pixels=1024, max_pixels=16384, suppress_token_ids=[7])
    assert backend.llm.kwargs["mm_processor_kwargs"] == {"min_pixels": 1024, "max_pixels": 16384}
    groups = [[prompts[0]] * 3, [prompts[1]] * 2]
    out = backend.generate_groups(groups, SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.9), [11, 50])
    requests, params = backend.llm.calls[0]
    assert len(requests) == 5
    assert requests[0]["prompt"] == prompts[0].text and requests[3]["prompt"] == prompts[1].text
    assert requests[0]["multi_modal_data"]["image"] == imgs[0]
    # the text vLLM gets holds one placeholder per image: vLLM expands it itself
    assert requests[0]["prompt"].count("<|image_pad|>") == 1
    assert [p["seed"] for p in params] == [11, 12, 13, 50, 51]
    assert all(p["temperature"] == 0.7 and p["top_p"] == 0.9 and p["logit_bias"] == {7: -100.0} for p in params)
    assert [len(g) for g in out] == [3, 2]
    assert out[0][0].truncated is False and out[0][1].truncated is True
    assert out[0][1].completion.tolist() == list(range(100, 105))


def test_vllm_weight_sync_uses_checkpoint_names(monkeypatch, tiny_model, tmp_path):
    _fake_vllm(monkeypatch)
    from safetensors import safe_open

    from ptdpo.rollout.vllm_backend import VLLMRolloutBackend, hf_weight_name

    backend = VLLMRolloutBackend("some/model")
    backend.sleep()
    backend.wake()
    backend.sync_weights(tiny_model)
    assert backend.llm.events == ["sleep1", "wake", "reset"]
    names = {n for n, _ in backend.llm.loaded}
    tiny_model.save_pretrained(tmp_path / "ckpt")
    saved = set()
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            saved |= set(fh.keys())
    # the names streamed to vLLM are the names of a saved Hugging Face checkpoint
    assert names <= saved | {"lm_head.weight"} and len(names) >= len(saved)
    assert hf_weight_name("_fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.w") == "model.layers.0.mlp.w"
