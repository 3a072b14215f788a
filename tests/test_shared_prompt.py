"""Forwards that run each distinct prompt once and copy its KV cache to its rows (``ptdpo.models.shared_prompt``,
``generate_completions(rows=...)``): the same hidden states as full-sequence forwards (float64: to 1e-9),
the same samples as sampling the repeated prompts, and the trainer's scoring forwards use them."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.data.schema import item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.engines import SamplingConfig, TransformersEngine
from ptdpo.engines.prompts import collate_prompts, distinct_prompts, encode_chats
from ptdpo.models.multimodal import completion_hidden_states, generate_completions
from ptdpo.models.shared_prompt import shared_prompt_hidden_states
from ptdpo.prompts import build_messages
from ptdpo.rollout.records import collate_completions


def _prompts(processor):
    """Two image prompts of different sizes (different image-token counts) and two text-only prompts of
    different lengths: every row of a collated batch is left-padded differently."""
    items = [generate_synthetic(1, seed=s, image_size=size)[0] for s, size in ((0, 64), (1, 128))]
    with_images = encode_chats(processor, [build_messages(it) for it in items], [item_images(it) for it in items])
    texts = [[{"role": "user", "content": [{"type": "text", "text": t}]}]
             for t in ("How many?", "Count the red squares and the blue circles, then add them.")]
    return with_images + encode_chats(processor, texts)


ROWS = [2, 0, 0, 3, 1, 2, 1, 0]  # rows of one prompt need not be adjacent; every prompt is used


def _completions(pad: int):
    lengths = [5, 1, 7, 3, 7, 2, 6, 4]  # ragged, one of length 1
    comps = [torch.arange(10, 10 + n) * (i + 1) % 200 + 20 for i, n in enumerate(lengths)]
    return collate_completions(comps, pad)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_shared_prompt_forward_equals_the_full_forward(tiny_policy, dtype, atol):
    model, processor = tiny_policy
    model = copy.deepcopy(model).to(dtype)
    pad = processor.tokenizer.pad_token_id
    prompts = _prompts(processor)
    ids, mask = _completions(pad)
    batch = collate_prompts(prompts, pad)
    full_batch = collate_prompts([prompts[r] for r in ROWS], pad)
    if dtype == torch.float64:
        batch["pixel_values"] = batch["pixel_values"].double()
        full_batch["pixel_values"] = full_batch["pixel_values"].double()
    with torch.no_grad():
        full = completion_hidden_states(model, full_batch, ids, mask)
        shared = shared_prompt_hidden_states(model, batch, ROWS, ids, mask)
    m = mask.bool()
    assert shared.shape == full.shape
    torch.testing.assert_close(shared[m], full[m], atol=atol, rtol=0)
    # one completion token: only the prompt forward runs
    with torch.no_grad():
        one = shared_prompt_hidden_states(model, batch, ROWS, ids[:, :1], mask[:, :1])
    torch.testing.assert_close(one[:, 0], full[:, 0], atol=atol, rtol=0)


def test_shared_prompt_forward_checks_its_rows(tiny_policy):
    model, processor = tiny_policy
    pad = processor.tokenizer.pad_token_id
    batch = collate_prompts(_prompts(processor), pad)
    ids, mask = _completions(pad)
    with pytest.raises(ValueError, match="rows must index the 4 prompts"):
        shared_prompt_hidden_states(model, batch, [0, 1, 2, 4, 0, 0, 0, 0], ids, mask)
    with pytest.raises(ValueError, match="7 rows but completion ids"):
        shared_prompt_hidden_states(model, batch, ROWS[:7], ids, mask)
    with pytest.raises(ValueError, match="rows must index the 4 prompts"):
        generate_completions(model, processor, batch, 3, seed=0, rows=[0, 4])


@pytest.mark.parametrize("do_sample", [True, False])
def test_sampling_with_shared_prompts_gives_the_same_completions(tiny_policy, do_sample):
    """Float32 fixture: the prompts' forward run once and copied gives the tokens and log-probs of sampling
    the repeated prompts (each row keeps its own seed)."""
    model, processor = tiny_policy
    pad = processor.tokenizer.pad_token_id
    prompts = _prompts(processor)
    seeds = [1000 + r for r in range(len(ROWS))] if do_sample else None
    kwargs = dict(max_new_tokens=12, temperature=0.9, top_p=0.95, do_sample=do_sample, row_seeds=seeds,
                  output_logprobs=True)
    repeated = generate_completions(model, processor, collate_prompts([prompts[r] for r in ROWS], pad), **kwargs)
    shared = generate_completions(model, processor, collate_prompts(prompts, pad), rows=ROWS, **kwargs)
    assert torch.equal(shared.ids, repeated.ids) and torch.equal(shared.truncated, repeated.truncated)
    assert shared.texts == repeated.texts
    torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-6, rtol=0)
    if do_sample:
        assert len({tuple(t) for t in shared.ids[[1, 2, 7]].tolist()}) == 3  # one prompt's rows differ
    # a single new token (no generate() after the shared first step), and the logits option
    first = generate_completions(model, processor, collate_prompts(prompts, pad), rows=ROWS,
                                 **{**kwargs, "max_new_tokens": 1})
    assert torch.equal(first.ids[:, 0], repeated.ids[:, 0])
    logits = generate_completions(model, processor, collate_prompts(prompts, pad), rows=ROWS, output_logits=True,
                                  **kwargs)
    assert torch.equal(logits.ids, repeated.ids) and logits.logits.shape[:2] == repeated.ids.shape


def test_distinct_prompts_by_identity_and_by_content(tiny_policy):
    _, processor = tiny_policy
    a, b, c, d = _prompts(processor)
    again = _prompts(processor)  # other objects, same content
    distinct, rows = distinct_prompts([a, a, b, again[0], c, again[1], d, again[3], a])
    assert distinct == [a, b, c, d] and rows == [0, 0, 1, 0, 2, 1, 3, 3, 0]
    # same tokens, other pixels: not the same prompt
    other = copy.copy(again[0])
    other.pixel_values = again[0].pixel_values + 1.0
    distinct, rows = distinct_prompts([a, other])
    assert rows == [0, 1] and distinct[1] is other


def test_engine_and_trainer_forwards_share_prompts(tiny_policy, monkeypatch):
    """The transformers engine shares the prompt forward of a group's samples (the prompts' forward sees
    one row per prompt), and the trainer's reference scoring runs the shared forward and gets the full
    forward's log-probs."""
    from ptdpo.config import PTDConfig, TrainConfig
    from ptdpo.models.multimodal import completion_logprobs
    from ptdpo.trainer import Trainer

    model, processor = tiny_policy
    items = generate_synthetic(2, seed=3, image_size=64)
    rows_seen = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        prompts = encode_chats(processor, [build_messages(it) for it in items], [item_images(it) for it in items])
        TransformersEngine(model, processor).sample(prompts, 4, SamplingConfig(5), [1, 2])
    finally:
        handle.remove()
    assert rows_seen[0][0] == 2 and all(s[0] == 8 and s[1] == 1 for s in rows_seen[1:])

    cfg = TrainConfig(policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=8,
                      max_response_length=6, kl_coef=0.01, seed=0, ptd=PTDConfig(enabled=False)).resolved()
    trainer = Trainer(cfg, copy.deepcopy(model), processor, items, reward_fn=lambda t, i: [(1.0, 1.0)] * len(t))
    rollouts = trainer.collect()
    calls = []
    monkeypatch.setattr("ptdpo.trainer.shared_prompt_hidden_states",
                        lambda *a, **k: calls.append(a[2]) or shared_prompt_hidden_states(*a, **k))
    trainer._reference_and_old_logprobs(rollouts)
    assert calls == [[0, 0, 0, 0, 1, 1, 1, 1]]
    pad = processor.tokenizer.pad_token_id
    ids, mask = collate_completions([r.completion for r in rollouts], pad)
    with torch.no_grad():
        full = completion_logprobs(trainer.reference, collate_prompts([r.prompt for r in rollouts], pad), ids, mask)
    for i, r in enumerate(rollouts):
        torch.testing.assert_close(r.ref_logprobs, full[i, : r.completion.numel()], atol=1e-5, rtol=0)
