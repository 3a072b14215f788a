"""Loading a policy straight into FSDP2 shards, so that no rank ever holds the whole model.

The model is built with its parameters on the meta device (no storage; buffers such as the rotary
frequencies are computed for real), sharded by the caller's ``shard`` function
(``ptdpo.distributed.shard_model``), given empty float32 storage on its device, and each rank copies
only its own rows of every tensor from the checkpoint's safetensors files, read one slice at a time.
Peak memory per rank: its shard plus one tensor slice. Weights are float32 whatever the checkpoint's
dtype: they are the optimizer's master weights (bf16 compute comes from the FSDP2 policy).

``tiny:`` specs have no files: the random model (a few MB) is built in full, then sharded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ptdpo.models.loading import PolicyLoadError, _is_local, _looks_like_path, load_processor
from ptdpo.models.processor import set_pixel_limits

ShardFn = Callable[[torch.nn.Module], torch.nn.Module]


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Parameters registered inside the block are moved to the meta device as they are created (the
    largest transient allocation is one parameter's ``torch.empty``); buffers stay real, so values that
    constructors compute (rotary frequencies) need no re-initialisation."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def resolve_policy_folder(spec: str) -> Path:
    """A local folder, or a hub id resolved to its snapshot folder (downloaded unless HF_HUB_OFFLINE)."""
    if _is_local(spec):
        return Path(os.path.expanduser(spec))
    if _looks_like_path(spec):
        raise PolicyLoadError(f"policy directory {spec!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as e:  # noqa: BLE001 - any hub/network failure, re-raised naming the id
        offline = " (HF_HUB_OFFLINE is set: no download attempted)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise PolicyLoadError(f"cannot fetch policy {spec!r} from the hub{offline}: {e}") from e


def safetensors_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded ``*.index.json`` or one ``model.safetensors``)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise PolicyLoadError(f"policy folder {str(folder)!r} has no model.safetensors(.index.json): "
                              "sharded loading reads safetensors only")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def shard_rows(n_rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) of a dim-0 shard: FSDP2's ``Shard(0)`` splits like ``torch.chunk`` (equal
    chunks of ceil(n / world) rows, the last ones shorter or empty)."""
    chunk = math.ceil(n_rows / world) if n_rows else 0
    start = min(n_rows, rank * chunk)
    return start, min(n_rows, start + chunk)


def _local_target(name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """(the storage this rank fills, the checkpoint rows it takes or None for the whole tensor)."""
    if not hasattr(tensor, "to_local"):
        return tensor, None
    from torch.distributed.tensor import Shard

    placements = tuple(tensor.placements)
    if len(placements) != 1 or not (isinstance(placements[0], Shard) and placements[0].dim == 0):
        raise PolicyLoadError(f"{name}: sharded loading expects FSDP2's Shard(0) placement, got {placements}")
    mesh = tensor.device_mesh
    local = tensor.to_local()
    start, stop = shard_rows(tensor.shape[0], mesh.size(), mesh.get_local_rank())
    if local.shape[0] != stop - start:
        raise PolicyLoadError(f"{name}: local shard has {local.shape[0]} rows, expected {stop - start} "
                              f"(rows {start}:{stop} of {tensor.shape[0]})")
    return local, (start, stop)


@torch.no_grad()
def load_shards_from_safetensors(model: torch.nn.Module, folder: Path) -> None:
    """Copy this rank's part of every parameter and persistent buffer from ``folder``'s safetensors
    files; a tied parameter is read once under any of its names."""
    from safetensors import safe_open

    files = safetensors_index(folder)
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    targets = [(names_of[id(p)], p) for _, p in model.named_parameters()]
    persistent = set(model.state_dict().keys())
    targets += [([n], b) for n, b in model.named_buffers() if n in persistent]
    missing, used = [], set()
    with contextlib.ExitStack() as stack:
        handles: dict[Path, object] = {}
        for names, tensor in targets:
            key = next((n for n in names if n in files), None)
            if key is None:
                missing.append(names[0])
                continue
            used.add(key)
            if files[key] not in handles:
                handles[files[key]] = stack.enter_context(safe_open(str(files[key]), framework="pt"))
            local, rows = _local_target(key, tensor)
            source = handles[files[key]].get_slice(key)
            if list(source.get_shape()) != list(tensor.shape):
                raise PolicyLoadError(f"{key}: checkpoint shape {source.get_shape()} != model shape "
                                      f"{list(tensor.shape)} in {str(folder)!r}")
            part = source[rows[0] : rows[1]] if rows else source[:]
            local.copy_(part.to(local.dtype))
    unexpected = sorted(set(files) - {n for names, _ in targets for n in names})
    if missing or unexpected:
        raise PolicyLoadError(f"checkpoint {str(folder)!r} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def materialize(model: torch.nn.Module, device: torch.device | str) -> None:
    """Give a (sharded) meta-parameter model empty storage on ``device``, keeping its real buffers."""
    buffers = {n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])


def load_sharded_policy(
    spec: str,
    shard: ShardFn,
    device: torch.device | str,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    attn_implementation: str | None = None,
):
    """(model sharded by ``shard``, processor) for a policy spec (``ptdpo.models.loading``), float32,
    in eval mode, without materialising the whole model on any rank (tiny specs excepted)."""
    if spec.startswith("tiny:"):
        from ptdpo.models.loading import load_policy

        model, processor = load_policy(spec, dtype=torch.float32, min_pixels=min_pixels, max_pixels=max_pixels)
        return shard(model).eval(), processor
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    folder = resolve_policy_folder(spec)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise PolicyLoadError(f"cannot read the config of policy {spec!r}: {e}") from e
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with meta_parameters():
        model = AutoModelForImageTextToText.from_config(config, **kwargs)
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model = shard(model)
    materialize(model, device)
    load_shards_from_safetensors(model, folder)
    try:
        processor = load_processor(str(folder))
    except OSError as e:
        raise PolicyLoadError(f"cannot load the processor of policy {spec!r}: {e}") from e
    if min_pixels is not None or max_pixels is not None:
        set_pixel_limits(processor, min_pixels, max_pixels)
    return model.eval(), processor
