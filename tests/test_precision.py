"""bf16 training keeps float32 master weights (one process: torch.autocast over float32 parameters).

The figure behind it: AdamW steps at lr 1e-6 change almost no element of a bf16 weight (the step is
below half a bf16 ulp for all but the smallest weights), so a model loaded in bf16 (transformers' default
for Qwen3-VL) and trained in bf16 would silently learn almost nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.trainer import Trainer


def _parity_reward(texts, items):
    return [(float(len(t) % 2 == 0), 1.0) for t in texts]


def _cfg(**kw) -> TrainConfig:
    base = dict(policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=8, max_response_length=8,
                lr=1e-6, weight_decay=0.0, kl_coef=0.0, seed=1, precision="bf16", ptd=PTDConfig(enabled=False))
    base.update(kw)
    return TrainConfig(**base).resolved()


def test_bf16_compute_over_fp32_masters_moves_what_bf16_weights_would_not(tiny_policy):
    """Ten steps at lr 1e-6 with precision bf16: the forward computes in bf16, the parameters and Adam's
    moments stay float32, and (almost) every element whose gradient Adam sees moves. The same gradients
    applied by AdamW to bf16 copies of the weights move only a few percent of them."""
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = generate_synthetic(4, seed=0, families=["count_attr"], image_size=64)
    trainer = Trainer(_cfg(), model, processor, items, reward_fn=_parity_reward)
    params = [p for p in model.parameters() if p.requires_grad]
    compute = []
    # the update's forwards (with gradients; the HF rollout backend samples outside the trainer's autocast)
    hook = model.model.language_model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _i, out: compute.append(out.dtype) if torch.is_grad_enabled() else None)
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: grads.append([p.grad.detach().clone() if p.grad is not None else None for p in params]) and None)
    before = [p.detach().clone() for p in params]
    bf16 = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params]
    bf16_before = [p.detach().clone() for p in bf16]
    plain = torch.optim.AdamW(bf16, lr=1e-6, weight_decay=0.0)
    for _ in range(10):
        trainer.train_step()
        for q, g in zip(bf16, grads[-1]):
            q.grad = None if g is None else g.to(torch.bfloat16)
        plain.step()
    hook.remove()
    assert compute and set(compute) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in params)
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())
    seen = moved = moved_bf16 = 0
    for p, p0, q, q0, i in zip(params, before, bf16, bf16_before, range(len(params))):
        steps = [g[i] for g in grads if g[i] is not None]
        if not steps:
            continue
        mask = torch.stack(steps).abs().amax(0) > 1e-7  # gradients Adam does not scale down by its eps
        seen += int(mask.sum())
        moved += int((p.detach() != p0)[mask].sum())
        moved_bf16 += int((q.detach() != q0)[mask].sum())
    assert seen > 10_000
    print(f"moved: float32 masters {moved / seen:.4%}, plain bf16 {moved_bf16 / seen:.4%} of {seen} elements")
    assert moved / seen > 0.99
    assert moved_bf16 / seen < 0.2


def test_trainer_refuses_weights_without_fp32_masters(tiny_policy):
    from ptdpo.optim import PrecisionError

    model = copy.deepcopy(tiny_policy[0]).to(torch.bfloat16)
    items = generate_synthetic(2, seed=0, families=["count_attr"], image_size=64)
    with pytest.raises(PrecisionError, match="float32 master weights"):
        Trainer(_cfg(), model, tiny_policy[1], items, reward_fn=_parity_reward)


def test_run_training_loads_float32_whatever_the_checkpoint_dtype(tmp_path, tiny_policy):
    """A folder saved in bf16 (as Qwen3-VL's checkpoints are) loads in bf16 by default; training loads it
    in float32."""
    from ptdpo.models import load_policy, save_policy
    from steps.train import load_models

    folder = tmp_path / "bf16-policy"
    save_policy(copy.deepcopy(tiny_policy[0]).to(torch.bfloat16), tiny_policy[1], folder)
    default, _ = load_policy(str(folder))
    assert next(default.parameters()).dtype == torch.bfloat16  # what run_training used to train
    model, _, reference = load_models(_cfg(policy=str(folder), kl_coef=0.01))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in reference.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in reference.parameters())
