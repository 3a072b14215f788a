"""The optimizer and learning-rate schedule of a training run.

AdamW over the trainable parameters, which are float32 (the master weights; ``ptdpo.distributed``),
split into one param group per tensor kind so that a ``foreach`` step never mixes FSDP2's DTensor
shards with plain tensors. ``train.optimizer_foreach`` forces the foreach path on or off (torch's
default: on for CUDA tensors, off on CPU, which is why the CPU tests force it).
"""

from __future__ import annotations

import math

import torch

from ptdpo.config import TrainConfig
from ptdpo.distributed import param_groups_by_kind


class PrecisionError(RuntimeError):
    """A trainable parameter is not float32: the optimizer would update it without a float32 master copy."""


def check_fp32_masters(params: list[torch.nn.Parameter], names: dict[int, str] | None = None) -> None:
    """Trainable parameters must be float32: AdamW on bf16 weights rounds most lr=1e-6 steps away."""
    for p in params:
        if p.dtype != torch.float32:
            name = (names or {}).get(id(p), "a parameter")
            raise PrecisionError(
                f"{name} is {p.dtype}: the trainer keeps float32 master weights (train.precision = 'bf16' "
                "computes in bf16 over them); load the policy in float32 (load_policy(..., dtype='float32'))"
            )


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    kwargs = {} if cfg.optimizer_foreach is None else {"foreach": cfg.optimizer_foreach}
    return torch.optim.AdamW(
        param_groups_by_kind(params), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
        **kwargs,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
