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
_REPLICATED_PARAMS: dict[int, list[torch.nn.Parameter]] = {}


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
        # The LM head stays replicated: the chunked PTD loss and log-probs use its weight outside the
        # model's forward, where FSDP would hand out a shard. Its gradient is averaged by hand.
        head = set(model.get_output_embeddings().parameters())
        fully_shard(model, ignored_params=head)
        _FSDP_MODELS.add(id(model))
        _REPLICATED_PARAMS[id(model)] = list(head)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return id(model) in _FSDP_MODELS


def loss_scale(model: torch.nn.Module | None = None) -> float:
    if is_distributed() and _FSDP_MODELS:
        return float(dist.get_world_size())
    return 1.0


def sum_gradients(model: torch.nn.Module) -> None:
    """Replicas: sum every gradient across ranks. FSDP: only the parameters left out of sharding
    (the LM head); their loss was scaled by the world size like the sharded ones', so average."""
    if not is_distributed():
        return
    if id(model) in _FSDP_MODELS:
        grads = [p.grad for p in _REPLICATED_PARAMS.get(id(model), []) if p.grad is not None]
        for g in grads:
            dist.all_reduce(g)
            g.div_(dist.get_world_size())
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


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm clipping that also works when FSDP-sharded (DTensor) gradients and
    replicated ones (the LM head) are mixed: shards add their squared norms across ranks, replicated
    gradients count once."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "to_local")]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not hasattr(g, "to_local")]
    sq_sharded = sum((g.to_local().double().pow(2).sum() for g in sharded), torch.zeros((), dtype=torch.float64))
    sq_sharded = sq_sharded.to(sharded[0].to_local().device)
    if is_distributed():
        dist.all_reduce(sq_sharded)
    sq_plain = sum((g.double().pow(2).sum() for g in plain), torch.zeros((), dtype=torch.float64))
    total = (sq_sharded.cpu() + sq_plain.cpu()).sqrt()
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1.0:
        for g in sharded:
            g.to_local().mul_(coef)
        for g in plain:
            g.mul_(coef)
    return total.float()


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
