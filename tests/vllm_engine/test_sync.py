"""Weight sync into a colocated vLLM engine after an optimizer step, plain and FSDP2-sharded, and what
sleep mode does on a platform without it (one engine for the module)."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.data.schema import item_images
from ptdpo.engines import EngineConfigError, TransformersEngine, VLLMEngine
from ptdpo.models.multimodal import completion_logprobs
from ptdpo.prompts import build_messages
from ptdpo.rollout.records import collate_completions, collate_prompts

STEPS = 16


@pytest.fixture(scope="module")
def policy(policy_dir):
    from ptdpo.models import load_policy

    return load_policy(policy_dir)


@pytest.fixture(scope="module")
def engine(policy_dir, policy, engine_options):
    eng = VLLMEngine(policy_dir, engine_options, colocated=True, processor=policy[1])
    yield eng
    eng.close()


def _greedy_and_forward(model, processor, engine, items):
    """(engine greedy completions, the transformers engine's, log pi of the engine's tokens under
    ``model``'s training forward)."""
    msgs, imgs = [build_messages(it) for it in items], [item_images(it) for it in items]
    got = engine.greedy(engine.encode(msgs, imgs), STEPS, logprobs=True)
    hf = TransformersEngine(model, processor)
    want = hf.greedy(hf.encode(msgs, imgs), STEPS)
    prompts = hf.encode(msgs, imgs)
    ids, mask = collate_completions([g.completion for g in got], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        lp = completion_logprobs(model, collate_prompts(prompts, processor.tokenizer.pad_token_id), ids, mask)
    return got, want, lp, mask


def _one_adamw_step(model, processor, items):
    """One AdamW step (lr 1e-2) pushing the policy toward a fixed response, so greedy outputs change."""
    hf = TransformersEngine(model, processor)
    prompts = hf.encode([build_messages(it) for it in items], [item_images(it) for it in items])
    target = torch.tensor(processor.tokenizer.encode(" red red cube three", add_special_tokens=False))
    ids, mask = collate_completions([target] * len(prompts), processor.tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    loss = -completion_logprobs(model, collate_prompts(prompts, processor.tokenizer.pad_token_id), ids, mask).mean()
    loss.backward()
    opt.step()
    model.eval()


def _assert_engine_matches(model, processor, engine, items):
    got, want, lp, mask = _greedy_and_forward(model, processor, engine, items)
    assert [g.completion.tolist() for g in got] == [w.completion.tolist() for w in want]
    from ptdpo.rollout.records import pad_rows

    engine_lp = pad_rows([g.logprobs for g in got], mask.shape[1])
    gap = float(((engine_lp - lp) * mask).abs().max())
    assert gap < 1e-4, gap
    return got, gap


def test_sync_after_an_optimizer_step(policy, engine, items):
    model, processor = copy.deepcopy(policy[0]), policy[1]
    before, _ = _assert_engine_matches(model, processor, engine, items)
    _one_adamw_step(model, processor, items)
    stale, want, _, _ = _greedy_and_forward(model, processor, engine, items)
    assert [s.completion.tolist() for s in stale] != [w.completion.tolist() for w in want]  # the step changed them
    engine.sync_weights(model)
    after, gap = _assert_engine_matches(model, processor, engine, items)
    print(f"after one AdamW step and a sync ({engine.sync_seconds:.3f} s): same greedy tokens, "
          f"largest log-prob gap {gap:.2e}")
    assert [a.completion.tolist() for a in after] != [b.completion.tolist() for b in before]


def test_sync_from_an_fsdp2_sharded_policy(policy, engine, items):
    """FSDP2 DTensors are gathered one parameter at a time, under their checkpoint names."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    assert dist.is_initialized()  # the in-process vLLM engine runs in a one-process gloo world
    model, processor = copy.deepcopy(policy[0]), policy[1]
    _one_adamw_step(model, processor, items[:2])
    sharded = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (1,))
    for layer in [*sharded.model.language_model.layers, *sharded.model.visual.blocks]:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    assert any(hasattr(p, "full_tensor") for p in sharded.state_dict().values())
    engine.sync_weights(sharded)
    _assert_engine_matches(model, processor, engine, items)


def test_no_sleep_mode_on_cpu(policy_dir, engine, items, engine_options):
    from vllm.platforms import current_platform

    assert not current_platform.is_sleep_mode_available()
    assert engine.engine_kwargs["enable_sleep_mode"] is False and not engine.sleep_plan.enabled
    engine.sleep()  # no-ops here: generating afterwards must not hang
    msgs, imgs = [build_messages(items[0])], [item_images(items[0])]
    assert len(engine.greedy(engine.encode(msgs, imgs), 4)[0].completion) >= 1
    engine.wake()
    with pytest.raises(EngineConfigError, match="enable_sleep_mode = true"):
        VLLMEngine(policy_dir, {**engine_options, "enable_sleep_mode": True}, colocated=True, where="train.vllm")
