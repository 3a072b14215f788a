"""The trainer hands every loss option of the config to the loss (``TrainConfig.loss_options``): a run that
differs only in one of them trains differently."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.data import generate_synthetic
from ptdpo.trainer import Trainer


def _half_correct(texts, items):
    # alternate correct/failed rollouts: every group is informative, so the policy-gradient term is non-zero;
    # several epochs on one batch move the ratio far enough for the clip ranges to act
    return [(float(i % 2), 0.0) for i in range(len(texts))]


def _params_after_one_step(tiny_policy, **options) -> torch.Tensor:
    torch.manual_seed(0)
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a reference away from the policy, so the KL and its direction matter
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = TrainConfig(policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=8,
                      max_response_length=6, lr=5e-2, weight_decay=0.0, kl_coef=1.0, seed=1, epochs_per_batch=4,
                      ptd=PTDConfig(enabled=False, lambda_ptd=0.0), **options).resolved()
    items = generate_synthetic(2, seed=0, families=["count_attr"], image_size=64)
    trainer = Trainer(cfg, model, processor, items, reference=reference, reward_fn=_half_correct)
    trainer.train_step()
    return torch.cat([p.detach().reshape(-1) for p in trainer.policy.parameters()])


@pytest.mark.parametrize("option", [{"kl_direction": "reverse"}, {"dual_clip_c": None}, {"clip_high": 0.2}])
def test_each_loss_option_reaches_the_loss(tiny_policy, option):
    released = _params_after_one_step(tiny_policy)
    assert torch.equal(released, _params_after_one_step(tiny_policy))  # deterministic: differences are the option's
    changed = _params_after_one_step(tiny_policy, **option)
    assert not torch.equal(released, changed), option
