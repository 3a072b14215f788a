"""Data parallelism with torch.distributed: the same code on 1 process, on 2 CPU processes (gloo)
and on GPUs (NCCL), with plain replicas or FSDP2 sharding.

The trainer normalises every loss term by a global token count, so the per-rank gradients must be
SUMMED across ranks (not averaged). Replicas are summed by :func:`sum_gradients`; FSDP2 averages in
its reduce-scatter, so under FSDP :func:`loss_scale` multiplies the loss by the world size instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_FSDP_MODELS: set[int] = set()


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @staticmethod
    def current() -> DistInfo:
        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo.current()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def step_seed(seed: int, step: int, round_: int, rank: int) -> int:
    """Sampling seed of one rollout round: a pure function of the run's position, so a resumed run
    samples exactly what the uninterrupted run sampled."""
    return (seed * 1_000_003 + step * 10_007 + round_ * 101 + rank) % (2**31 - 1)


def all_sum(x: float | int) -> float:
    if not is_distributed():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_mean(x: float) -> float:
    if not is_distributed():
        return float(x)
    return all_sum(x) / dist.get_world_size()


def all_max(x: float | int) -> float:
    if not is_distributed():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def lockstep_padding(n_local_passes: int, model: torch.nn.Module) -> int:
    """How many extra (dummy) passes this rank must run so that every rank runs as many forward
    passes through ``model`` as the busiest rank: FSDP all-gathers parameters inside each forward,
    so ranks that stop early would leave the others waiting forever. Zero for unsharded models."""
    if id(model) not in _FSDP_MODELS or not is_distributed():
        return 0
    return int(all_max(n_local_passes)) - n_local_passes


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard_model(model: torch.nn.Module, sharding: str) -> torch.nn.Module:
    """``none``: replicas whose gradients :func:`sum_gradients` adds up; ``fsdp``: FSDP2 per decoder
    layer and vision block, then the root. Weights are broadcast from rank 0 first."""
    if not is_distributed():
        return model
    for p in model.parameters():
        dist.broadcast(p.data, src=0)
    if sharding == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for name, module in model.named_modules():
            if name.endswith(("layers", "blocks")) and isinstance(module, torch.nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        _FSDP_MODELS.add(id(model))
    return model


def loss_scale(model: torch.nn.Module | None = None) -> float:
    if is_distributed() and _FSDP_MODELS:
        return float(dist.get_world_size())
    return 1.0


def sum_gradients(model: torch.nn.Module) -> None:
    if not is_distributed() or id(model) in _FSDP_MODELS:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on every rank."""
    if id(model) in _FSDP_MODELS:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if id(model) in _FSDP_MODELS:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
