"""Two RL steps with ``rollout_backend: vllm``: the trainer and a colocated vLLM engine in one process,
rollouts sampled by the engine, the policy's new weights synced into it after every update."""

from __future__ import annotations

import math

import torch

from ptdpo.config import train_config_from_dict
from ptdpo.data.schema import item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.engines import TransformersEngine, VLLMEngine
from ptdpo.prompts import build_messages


def _parity_reward(texts, items):
    # reward variance inside groups, so the random policy gets a policy gradient
    return [(float(len(t) % 2 == 0), 1.0) for t in texts]


def test_two_rl_steps_with_the_vllm_engine(tmp_path, engine_options):
    from ptdpo.models import load_policy
    from ptdpo.rollout.engine import make_rollout_engine
    from ptdpo.trainer import Trainer

    cfg = train_config_from_dict({
        "policy": "tiny:1m", "group_size": 4, "prompts_per_step": 2, "micro_batch_rollouts": 8,
        "max_response_length": 8, "lr": 1e-2, "weight_decay": 0.0, "kl_coef": 0.01, "seed": 1, "max_steps": 2,
        "ptd": {"enabled": False}, "rollout_backend": "vllm", "vllm": engine_options,
    })
    items = generate_synthetic(4, seed=0, families=["count_attr"], image_size=64)
    model, processor = load_policy(cfg.policy)
    engine = make_rollout_engine(cfg, model, processor, tmp_path)
    try:
        assert isinstance(engine, VLLMEngine) and engine.colocated
        assert engine.engine_kwargs["dtype"] == "float32" and "distributed_executor_backend" not in engine.engine_kwargs
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = Trainer(cfg, model, processor, items, engine=engine, reward_fn=_parity_reward)
        results = [trainer.train_step() for _ in range(2)]
        for r in results:
            assert len(r.rollouts) == 8 and all(1 <= x.completion.numel() <= 8 for x in r.rollouts)
            assert all(math.isfinite(v) for v in r.metrics.values())
            tok = processor.tokenizer
            assert all(x.text == tok.decode(x.completion.tolist(), skip_special_tokens=True) for x in r.rollouts)
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        # the engine now generates from the trained weights
        msgs, imgs = [build_messages(it) for it in items], [item_images(it) for it in items]
        hf = TransformersEngine(trainer.policy, processor)
        got = engine.greedy(engine.encode(msgs, imgs), 12)
        want = hf.greedy(hf.encode(msgs, imgs), 12)
        assert [g.completion.tolist() for g in got] == [w.completion.tolist() for w in want]
    finally:
        engine.close()
