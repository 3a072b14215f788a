"""The process group and every collective ptdpo issues itself, each checked against the group's backends.

A process group maps device types to backends: ``cpu:gloo,cuda:nccl`` (what :func:`init_from_env` asks
for on GPUs), ``cuda:nccl`` (an NCCL-only group), ``cpu:gloo,cuda:gloo`` (gloo). A collective handed a
tensor on a device type the group has no backend for fails on the cluster only ("No backend type
associated with device type cpu"), never in the CPU/gloo tests. So the rule is made explicit: every
tensor collective of ptdpo goes through :func:`all_reduce` / :func:`broadcast` / :func:`barrier` here, which
raise :class:`CollectiveDeviceError` before communicating, and the scalar helpers (:func:`all_sum`...)
build their tensors on :func:`collective_device`. A test keeps ``torch.distributed``'s tensor collectives
out of every other module (object collectives place their own tensors; FSDP2's all-gathers and
reduce-scatters run on the parameters' device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Device types each plain backend name serves, for groups whose config is a bare name.
_PLAIN_BACKENDS = {"nccl": ("cuda",), "gloo": ("cpu", "cuda"), "mpi": ("cpu", "cuda"), "xccl": ("xpu",)}


class CollectiveDeviceError(RuntimeError):
    """A collective was given a tensor on a device type its process group has no backend for."""


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


def default_backend() -> str:
    """``cpu:gloo,cuda:nccl`` where CUDA is available (CUDA tensors over NCCL, and CPU tensors still
    work), ``gloo`` otherwise."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None, force: bool = False) -> DistInfo:
    """Join the process group described by torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR...).
    Only for ``WORLD_SIZE > 1`` unless ``force`` (a group of one: FSDP2 and the collectives run as on
    many ranks)."""
    if (force or int(os.environ.get("WORLD_SIZE", "1")) > 1) and not dist.is_initialized():
        backend = backend or default_backend()
        if "nccl" in backend:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return DistInfo.current()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def parse_backend_config(config: str) -> dict[str, str]:
    """``'cpu:gloo,cuda:nccl'`` -> ``{'cpu': 'gloo', 'cuda': 'nccl'}``; a bare name maps to the device
    types that backend serves (``'nccl'`` -> ``{'cuda': 'nccl'}``)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in config.split(",") if p.strip()):
        if ":" in part:
            device, backend = part.split(":", 1)
            out[device.strip()] = backend.strip().lower()
        else:
            backend = part.lower()
            if backend not in _PLAIN_BACKENDS:
                raise ValueError(f"process group backend {config!r}: unknown backend {part!r}; "
                                 f"write it as '<device>:<backend>' pairs")
            for device in _PLAIN_BACKENDS[backend]:
                out.setdefault(device, backend)
    return out


def backend_devices(group=None) -> dict[str, str]:
    """Device type -> backend of ``group`` (default: the world)."""
    get_config = getattr(dist, "get_backend_config", None)  # older torch: only the bare name
    return parse_backend_config(get_config(group) if get_config else dist.get_backend(group))


def check_collective_devices(op: str, tensors: list[torch.Tensor], devices: dict[str, str]) -> None:
    """Raise :class:`CollectiveDeviceError` unless every tensor's device type has a backend in
    ``devices`` (a pure rule: the wrappers below apply it to the real group's map)."""
    for t in tensors:
        if t.device.type not in devices:
            pairs = ",".join(f"{d}:{b}" for d, b in devices.items()) or "none"
            raise CollectiveDeviceError(
                f"{op}: tensor on {t.device} but the process group's backends are {pairs!r} (none for "
                f"{t.device.type!r}); create it on {', '.join(devices) or 'a supported device'} "
                "(ptdpo.collectives.collective_device())"
            )


def collective_device(group=None) -> torch.device:
    """Where a helper tensor for a collective lives: the current CUDA device when the group has a CUDA
    backend and this process has a GPU (NCCL serves only CUDA), else the CPU."""
    devices = backend_devices(group)
    if "cuda" in devices and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if "cpu" in devices:
        return torch.device("cpu")
    raise CollectiveDeviceError(f"no usable device for the process group's backends {devices}")


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """``dist.all_reduce`` in place after the device check; ``op``: sum, max or min."""
    check_collective_devices(f"all_reduce({op})", [tensor], backend_devices(group))
    dist.all_reduce(tensor, op=_OPS[op], group=group)
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    check_collective_devices("broadcast", [tensor], backend_devices(group))
    dist.broadcast(tensor, src=src, group=group)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _all_reduce_scalar(x: float | int, op: str) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64, device=collective_device())
    return float(all_reduce(t, op).item())


def all_sum(x: float | int) -> float:
    return _all_reduce_scalar(x, "sum") if is_distributed() else float(x)


def all_max(x: float | int) -> float:
    return _all_reduce_scalar(x, "max") if is_distributed() else float(x)


def all_mean(x: float) -> float:
    return all_sum(x) / dist.get_world_size() if is_distributed() else float(x)
