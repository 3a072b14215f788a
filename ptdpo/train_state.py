"""What a training checkpoint holds and how every rank writes and reads it.

Model and optimizer state go through torch.distributed.checkpoint's ``get_state_dict`` /
``set_state_dict``, keyed by parameter name, in one of two layouts (``train.checkpoint_format``):

- ``sharded``: each rank writes its own parameter and Adam-moment shards (DCP ``shards/__<rank>_0.distcp``
  files plus ``shards/.metadata``) into the staging folder, which every rank must see (one node);
- ``full``: the state is gathered to rank 0 (CPU), which writes ``model.pt`` and ``optimizer.pt``;
  loading reads them on rank 0 and broadcasts each tensor's shards. Works when ranks do not share
  a disk (nodes with node-local checkpoint folders: only rank 0's folder is saved and restored).

Either way rank 0 writes ``trainer.pt`` (scheduler, sampler, RNG, step, metrics) and commits the folder
(``ptdpo.checkpoint``: atomic rename, ``latest`` pointer, ``meta.json`` listing every file, every rank's
shards included, with its size and sha256). Loading checks first that every recorded file is there
with its recorded size (on every rank, so all of them stop together), and a file that cannot be read
is named with its folder and step (``CheckpointError``); the full hash check is the caller's, once,
where the checkpoint is chosen (``ptdpo.checkpoint.find_valid_checkpoint``). Before this
module, rank 0 saved ``optimizer.state_dict()`` holding only ITS shards and every rank loaded rank 0's
moments: no error, corrupted optimizer state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ptdpo import distributed as dist_utils
from ptdpo.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    checkpoint_problems,
    commit_checkpoint,
    staging_folder,
    torch_load,
)

SHARDS = "shards"


def resolve_format(fmt: str, model: torch.nn.Module) -> str:
    """``auto``: ``sharded`` for an FSDP model whose ranks are all on this node (one filesystem),
    else ``full``."""
    if fmt != "auto":
        return fmt
    one_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == dist_utils.DistInfo.current().world_size
    return "sharded" if dist_utils.is_sharded(model) and one_node else "full"


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def save_train_state(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     trainer_state: dict[str, Any], keep: int, fmt: str = "auto") -> Path | None:
    """Write checkpoint ``step`` under ``root`` (a collective: every rank calls it). Returns the folder
    on rank 0, None elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    fmt = resolve_format(fmt, model)
    rank0 = dist_utils.DistInfo.current().rank == 0
    if fmt == "sharded":
        import torch.distributed.checkpoint as dcp

        tmp = staging_folder(root, step, fresh=rank0)
        dist_utils.barrier()  # the staging folder exists (and is empty) before anyone writes
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDS))
        dist_utils.barrier()  # every rank's shards are on disk before the folder is committed
    else:
        model_state, optim_state = get_state_dict(
            model, optimizer, options=_options(full_state_dict=True, cpu_offload=True))
    path = None
    if rank0:
        if fmt == "full":
            tmp = staging_folder(root, step)
            torch.save(model_state, tmp / "model.pt")
            torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
        world = dist_utils.DistInfo.current().world_size
        path = commit_checkpoint(root, tmp, step, keep, {"format": fmt, "world_size": world})
    dist_utils.barrier()
    return path


def load_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                     ) -> tuple[dict[str, Any], int]:
    """Load model and optimizer state of checkpoint ``path`` into this rank's (shards of) ``model`` and
    ``optimizer``; return (trainer_state, step). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    path = Path(path)
    problems = checkpoint_problems(path, hashes=False)
    if problems:
        raise CheckpointError(path, None, problems)
    meta = checkpoint_meta(path)
    step = int(meta["step"])
    fmt = meta.get("format", "full")
    if fmt == "sharded":
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        try:
            dcp.load(state, checkpoint_id=str(path / SHARDS))
        except Exception as e:  # noqa: BLE001 - DCP's errors name no checkpoint
            raise CheckpointError(path, step, [f"{SHARDS}/ cannot be read ({type(e).__name__}: {e})"]) from e
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    elif fmt == "full":
        if not (path / "optimizer.pt").exists():
            raise FileNotFoundError(f"checkpoint {str(path)!r} has no optimizer.pt (written by an older ptdpo "
                                    "that kept one rank's optimizer shards only); it cannot be resumed exactly")
        broadcast = dist_utils.is_distributed() and dist_utils.is_sharded(model)
        rank0 = dist_utils.DistInfo.current().rank == 0
        model_state, optim_state = {}, {}
        if rank0 or not broadcast:
            model_state = torch_load(path, "model.pt", step, weights_only=True)
            optim_state = torch_load(path, "optimizer.pt", step, weights_only=False)
        # Two calls: set_state_dict would take a rank's empty model dict for "optimizer only" and skip
        # the model's broadcast there, leaving rank 0 waiting.
        options = _options(full_state_dict=True, broadcast_from_rank0=broadcast)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
    else:
        raise ValueError(f"checkpoint {str(path)!r}: unknown format {fmt!r} in meta.json")
    trainer_state = torch_load(path, "trainer.pt", step, weights_only=False)
    return trainer_state, step
