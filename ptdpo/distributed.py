"""Data parallelism with torch.distributed: the same code on 1 process, on 2 CPU processes (gloo)
and on GPUs (NCCL), with plain replicas or FSDP2 sharding.

The trainer normalises every loss term by a global token count, so the per-rank gradients must be
SUMMED across ranks (not averaged). Replicas are summed by :func:`sum_gradients`; FSDP2 averages in
its reduce-scatter, so under FSDP :func:`loss_scale` multiplies the loss by the world size instead.

Precision: parameters are float32 everywhere, so the optimizer updates float32 master weights (a bf16
parameter would lose an lr=1e-6 step to rounding). ``precision = "bf16"`` computes in bf16: under FSDP2
through a ``MixedPrecisionPolicy`` (bf16 all-gathered parameters, float32 gradient reduction), without
FSDP through ``torch.autocast`` (:func:`autocast_needed`).

Every parameter is sharded under FSDP, the LM head included: it sits in the root unit, whose
parameters FSDP keeps gathered between the forward and the backward, so the chunked losses read the
full head with :func:`output_weight` and its gradient is reduce-scattered like any other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ptdpo.collectives import (  # noqa: F401 - the public names of the data-parallel helpers
    CollectiveDeviceError,
    DistInfo,
    all_max,
    all_mean,
    all_reduce,
    all_sum,
    barrier,
    broadcast,
    init_from_env,
    is_distributed,
)

# Set on a model sharded under a bf16 FSDP2 policy (its forward computes in bf16 without autocast).
_BF16_ATTR = "_ptdpo_fsdp_bf16"


def step_seed(seed: int, step: int, round_: int, rank: int) -> int:
    """Sampling seed of one rollout round: a pure function of the run's position, so a resumed run
    samples exactly what the uninterrupted run sampled."""
    return (seed * 1_000_003 + step * 10_007 + round_ * 101 + rank) % (2**31 - 1)


def lockstep_padding(n_local_passes: int, model: torch.nn.Module) -> int:
    """How many extra (dummy) passes this rank must run so that every rank runs as many forward
    passes through ``model`` as the busiest rank: FSDP all-gathers parameters inside each forward,
    so ranks that stop early would leave the others waiting forever. Zero for unsharded models."""
    if not is_sharded(model) or not is_distributed():
        return 0
    return int(all_max(n_local_passes)) - n_local_passes


def fsdp_available() -> bool:
    """FSDP2 needs a process group (a group of one is enough: the GPU acceptance script uses it)."""
    return dist.is_available() and dist.is_initialized()


def mixed_precision_policy(precision: str):
    """bf16 compute over float32 parameters, gradients reduced in float32; None for ``fp32``."""
    if precision != "bf16":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_model(model: torch.nn.Module, sharding: str, precision: str = "fp32") -> torch.nn.Module:
    """``none``: replicas (weights broadcast from rank 0) whose gradients :func:`sum_gradients` adds up;
    ``fsdp``: FSDP2 per decoder layer and vision block, then the root (which holds the embeddings, the
    LM head and the rest). A model on the meta device is sharded as is (``to_empty`` and loading follow:
    ``ptdpo.models.sharded``); a materialised one is broadcast from rank 0 first."""
    if sharding != "fsdp" or not fsdp_available():
        if is_distributed():
            for p in model.parameters():
                broadcast(p.data, src=0)
        return model
    from torch.distributed.fsdp import fully_shard

    if is_distributed() and not any(p.is_meta for p in model.parameters()):
        for p in model.parameters():
            broadcast(p.data, src=0)
    kwargs = {}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    for name, module in model.named_modules():
        if name.endswith(("layers", "blocks")) and isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    setattr(model, _BF16_ATTR, policy is not None)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """The model is an FSDP2 module (``fully_shard`` swaps its class for an ``FSDPModule`` subclass)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def autocast_needed(model: torch.nn.Module, precision: str) -> bool:
    """bf16 compute must come from ``torch.autocast``: the model is not under an FSDP2 bf16 policy."""
    return precision == "bf16" and not getattr(model, _BF16_ATTR, False)


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The full LM-head weight, as a tensor the chunked losses can use and differentiate. Under FSDP the
    root unit is gathered (a no-op right after a forward, which leaves it gathered; a collective
    otherwise: every rank must call this the same number of times)."""
    if is_sharded(model):
        model.unshard()
    return model.get_output_embeddings().weight


def release(model: torch.nn.Module | None) -> None:
    """Free the gathered root unit of a sharded model after forwards without a backward (reference,
    teacher, old-policy scoring); a no-op for unsharded models."""
    if model is not None and is_sharded(model):
        model.reshard()


def loss_scale(model: torch.nn.Module) -> float:
    """What the loss of ``model`` is multiplied by before backward: FSDP2 averages gradients over ranks,
    the trainer's global normalisers need their sum."""
    if is_distributed() and is_sharded(model):
        return float(dist.get_world_size())
    return 1.0


def sum_gradients(model: torch.nn.Module) -> None:
    """Replicas: sum every gradient across ranks. FSDP: nothing (its reduce-scatter did it)."""
    if not is_distributed() or is_sharded(model):
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm clipping that also works when FSDP-sharded (DTensor) gradients and plain
    ones are mixed: shards add their squared norms across ranks, plain gradients count once."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "to_local")]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not hasattr(g, "to_local")]
    device = sharded[0].to_local().device
    sq_sharded = sum((g.to_local().double().pow(2).sum() for g in sharded),
                     torch.zeros((), dtype=torch.float64, device=device))
    if is_distributed():
        all_reduce(sq_sharded)
    sq_plain = sum((g.double().pow(2).sum() for g in plain), torch.zeros((), dtype=torch.float64))
    total = (sq_sharded.cpu() + sq_plain.cpu()).sqrt()
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1.0:
        for g in sharded:
            g.to_local().mul_(coef)
        for g in plain:
            g.mul_(coef)
    return total.float()


def param_groups_by_kind(params: list[torch.nn.Parameter]) -> list[dict]:
    """One optimizer param group per tensor kind (DTensor shards / plain tensors): a foreach optimizer
    step runs one fused kernel per group and cannot mix the two ("mixed torch.Tensor and DTensor")."""
    sharded = [p for p in params if hasattr(p, "to_local")]
    plain = [p for p in params if not hasattr(p, "to_local")]
    return [{"params": group} for group in (sharded, plain) if group]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict, on CPU (a collective under FSDP: every rank calls it; rank 0
    receives it)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}

