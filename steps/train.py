"""Step body of ``train``: run PTD-PO (or a baseline) from a config, in-process or as a
``torchrun`` job over all GPUs of a node (or several nodes), with checkpoints and resume.

In-process is used for one process (CPU, one GPU). For ``world_size > 1`` the flow writes the
inputs to a folder and launches ``torchrun -m steps.train --workdir DIR``; every rank reads the
same inputs, rank 0 writes the outputs. Over several nodes each node writes its own folder (the
same inputs, and the same checkpoint to resume from, restored on that node) and runs one
``torchrun`` agent for its GPUs (:func:`launch_torchrun` with ``nnodes``/``node_rank``); global
rank 0, on node 0, writes the outputs.

Every training task works in a temporary folder (:func:`training_workdir`: ``ptdpo-train-*`` under the
temp dir) holding the restored checkpoint, the checkpoints written and the final weights: gigabytes at
real scale. It is removed when the task's training ends, whether it succeeded or failed (by then every
checkpoint has been saved to the datastore). A task killed outright (SIGKILL, a lost node) cannot clean
up; the next training task on that machine does: each folder holds a lock file its task keeps locked
(``flock``, released by the kernel when the process dies), and folders whose lock is free are removed.
Folders without a lock file are never touched (they are not ptdpo's, or not yet set up).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ptdpo.config import TrainConfig, train_config_from_dict
from ptdpo.data.schema import Item

STEPS_FILE = "steps.jsonl"  # a torchrun job's steps, one JSON line each (written by rank 0)


@dataclass
class TrainOutput:
    metrics: pd.DataFrame
    model_dir: Path
    final_step: int
    resumed_from_step: int  # 0 when training started from the base policy
    checkpoint_dir: Path
    world_size: int = 1  # processes that trained together (torch.distributed world size)


class InjectedFailure(RuntimeError):
    """Raised on purpose after a given step (``fail_after_step``) to test retry and resume."""


WORKDIR_PREFIX = "ptdpo-train-"
WORKDIR_LOCK = ".ptdpo-train.lock"


def _lock_free(lock: Path) -> bool | None:
    """True when nobody holds ``lock`` (its owner is gone), False when a live process does, None when it
    cannot be told (no such file)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return True


def sweep_stale_workdirs(parent: str | Path | None = None) -> list[Path]:
    """Remove the ``ptdpo-train-*`` folders under ``parent`` (default: the temp dir) left by training
    tasks that died without cleaning up: those whose lock file no live process holds. Returns them."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for path in sorted(parent.glob(WORKDIR_PREFIX + "*")):
        if path.is_dir() and _lock_free(path / WORKDIR_LOCK):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def training_workdir(parent: str | Path | None = None) -> Iterator[Path]:
    """A fresh ``ptdpo-train-*`` folder under ``parent`` (default: the temp dir) for one training task,
    locked by this process while in use and removed on exit, success or failure. Stale folders of dead
    tasks are removed first (:func:`sweep_stale_workdirs`)."""
    import fcntl

    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for stale in sweep_stale_workdirs(parent):
        print(f"[ptdpo] removed {stale}, left behind by a training task that is gone")
    path = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=parent))
    # locked under another name, then renamed (the lock goes with the file): a sweeper starting at the same
    # moment never sees an unlocked lock file in a folder that is in use
    fd = os.open(path / f"{WORKDIR_LOCK}.new", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.replace(path / f"{WORKDIR_LOCK}.new", path / WORKDIR_LOCK)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def hints_by_item(hints: list[dict[str, Any]] | pd.DataFrame | None, verdicts: pd.DataFrame | None = None) -> dict:
    """item_id -> Hint for the hints PTD may use: those whose audit passed (METHOD.md 2.4).

    ``hints`` are the rows of the hint step (or Hint dicts); ``verdicts`` the audit table. Without a
    table, every row that carries a hint counts (used by the torchrun worker, which receives only the
    usable hints)."""
    from ptdpo.hints import Hint, usable_hints

    if hints is None:
        return {}
    rows = hints.to_dict("records") if isinstance(hints, pd.DataFrame) else list(hints)
    if verdicts is not None:
        return usable_hints(rows, verdicts)
    out = {}
    for row in rows:
        hint = row.get("hint", row) if isinstance(row, dict) else row
        if hint is None:
            continue
        hint = hint if isinstance(hint, Hint) else Hint.from_dict(hint)
        out[hint.item_id] = hint
    return out


def run_training(
    train_cfg: dict[str, Any] | TrainConfig,
    items: list[Item],
    hints: dict | None,
    out_dir: str | Path,
    resume_from: str | Path | None = None,
    fail_after_step: int | None = None,
    progress: bool = True,
    policy: Any = None,
    on_checkpoint: Any = None,
    on_step: Any = None,
) -> TrainOutput:
    """Train in this process (and in its torch.distributed group, if one is initialised).

    ``out_dir/checkpoints`` receives checkpoints; if it already holds one (a ``@retry`` of the same
    task) training continues from it, else from ``resume_from`` if given: a checkpoint folder
    (``step-*``, e.g. the one the flow chose and verified), or a root holding step folders, whose
    newest valid checkpoint is used. A ``resume_from`` that yields no usable checkpoint raises
    ``ptdpo.checkpoint.CheckpointError``: it never quietly becomes a start from the base policy.
    ``on_checkpoint(path)`` is called after every checkpoint is written (the flow saves it with
    ``current.checkpoint.save``); ``on_step(result)`` after every step (the flow's experiment tracking
    and live card: ``ptdpo.tracking``). The final weights go to ``out_dir/model``.
    """
    import torch

    from ptdpo import distributed as dist_utils
    from ptdpo.models import load_policy, save_policy
    from ptdpo.trainer import Trainer

    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else train_config_from_dict(train_cfg)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if policy is None:
        model, processor, reference = load_models(cfg)
    else:
        model, processor = policy
        # An in-memory policy (tests, warm starts): the reference is a copy, sharded like the policy below.
        reference = copy.deepcopy(model) if cfg.needs_reference else None
    engine = None
    if cfg.rollout_backend == "vllm":  # built before sharding: it may load the policy's initial weights
        from ptdpo.rollout.engine import make_rollout_engine

        engine = make_rollout_engine(cfg, _whole_policy(cfg, model), processor, out_dir)
    if policy is not None:
        model = dist_utils.shard_model(model, cfg.sharding, cfg.precision)
        if reference is not None:
            reference = dist_utils.shard_model(reference.requires_grad_(False), cfg.sharding, cfg.precision)
    trainer = Trainer(
        cfg, model, processor, items, hints=hints, engine=engine, reference=reference,
        checkpoint_dir=ckpt_dir, on_checkpoint=on_checkpoint, on_step=on_step,
    )
    resumed_from = 0
    if trainer.resume_if_possible():
        resumed_from = trainer.step
    elif resume_from:
        from ptdpo.checkpoint import resolve_checkpoint

        trainer.load(resolve_checkpoint(resume_from))
        resumed_from = trainer.step
    target = trainer.total_steps
    if fail_after_step is not None:
        while trainer.step < target:
            trainer.train_step()
            if trainer.step == fail_after_step:
                if not (cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0):
                    trainer.save()  # unless train_step just saved this step
                raise InjectedFailure(f"injected failure after step {trainer.step}")
    trainer.fit(target, progress=progress)
    trainer.engine.close()  # a vLLM engine holds device memory until closed
    model_dir = out_dir / "model"
    final = dist_utils.full_state_dict(trainer.policy)  # a collective under FSDP: every rank calls it
    if trainer.dist.rank == 0:
        if dist_utils.is_sharded(trainer.policy):
            model_for_save, _ = load_policy(cfg.policy)
            model_for_save.load_state_dict(final)
        else:
            model_for_save = trainer.policy
        save_policy(model_for_save, processor, model_dir, metadata={"train_step": trainer.step, "policy": cfg.policy})
    dist_utils.barrier()
    return TrainOutput(pd.DataFrame(trainer.metrics), model_dir, trainer.step, resumed_from, ckpt_dir,
                       world_size=trainer.dist.world_size)


def load_models(cfg: TrainConfig):
    """(policy, processor, frozen reference or None) for ``cfg``, float32 (the optimizer's master weights;
    transformers would otherwise load Qwen3-VL in bf16). With FSDP each rank loads only its shards of
    each model, straight from the checkpoint files (``ptdpo.models.sharded``), so no rank ever holds a
    whole model; otherwise the policy is loaded on this rank's device and the reference copied from it."""
    import torch

    from ptdpo import distributed as dist_utils
    from ptdpo.models import load_policy
    from ptdpo.models.sharded import load_sharded_policy

    device = f"cuda:{dist_utils.DistInfo.current().local_rank}" if torch.cuda.is_available() else "cpu"
    pixels = dict(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    if cfg.sharding == "fsdp" and dist_utils.fsdp_available():
        def shard(m):
            return dist_utils.shard_model(m, "fsdp", cfg.precision)

        model, processor = load_sharded_policy(cfg.policy, shard, device, **pixels)
        reference = None
        if cfg.needs_reference:
            reference = load_sharded_policy(cfg.policy, shard, device, **pixels)[0].requires_grad_(False)
        return model, processor, reference
    model, processor = load_policy(cfg.policy, dtype=torch.float32, device=device, **pixels)
    reference = copy.deepcopy(model).requires_grad_(False) if cfg.needs_reference else None
    model = dist_utils.shard_model(model, cfg.sharding, cfg.precision)
    if reference is not None:
        reference = dist_utils.shard_model(reference, cfg.sharding, cfg.precision)
    return model, processor, reference


def _whole_policy(cfg: TrainConfig, model):
    """The unsharded policy a vLLM engine may need to start from: ``model`` itself unless FSDP sharded it
    at load time; then a ``tiny:`` policy is rebuilt whole (a few MB; other policies load from their files)."""
    import torch

    from ptdpo import distributed as dist_utils
    from ptdpo.models import load_policy

    if not dist_utils.is_sharded(model):
        return model
    if cfg.policy.startswith("tiny:"):
        return load_policy(cfg.policy, dtype=torch.float32, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)[0]
    return None


# ---------------------------------------------------------------------- multi-process launch
def write_job(workdir: str | Path, train_cfg: TrainConfig | dict, items: list[Item], hints: dict,
              resume_from: str | None, fail_after_step: int | None = None) -> Path:
    """The inputs of a torchrun job in ``workdir``: items, usable hints, the train config (a TrainConfig is
    written resolved), the checkpoint root to resume from and the testing knob ``fail_after_step``."""
    from ptdpo.data.loaders import save_items_jsonl

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_items_jsonl(items, workdir / "items.jsonl")
    with open(workdir / "hints.jsonl", "w") as f:
        for h in hints.values():
            f.write(json.dumps(h.to_dict()) + "\n")
    train = train_cfg.to_dict() if isinstance(train_cfg, TrainConfig) else train_cfg
    (workdir / "job.json").write_text(json.dumps(
        {"train": train, "resume_from": resume_from, "fail_after_step": fail_after_step}))
    return workdir


def launch_torchrun(workdir: str | Path, nproc: int, nnodes: int = 1, node_rank: int = 0,
                    master_addr: str = "127.0.0.1", master_port: int = 29500) -> TrainOutput | None:
    """Run ``steps.train`` under torchrun (``nproc`` processes on this node, ``nnodes`` nodes in all,
    rendezvous at ``master_addr:master_port`` on node 0) and read back rank 0's outputs. On the other
    nodes (``node_rank > 0``) there are none: returns None once this node's processes have finished.
    Raises ``subprocess.CalledProcessError`` if any local process fails."""
    workdir = Path(workdir)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "steps.train", "--workdir", str(workdir),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    subprocess.run(cmd, check=True, env=env)
    if node_rank != 0:
        return None
    result = json.loads((workdir / "result.json").read_text())
    return TrainOutput(
        pd.read_parquet(workdir / "metrics.parquet"), Path(result["model_dir"]), result["final_step"],
        result["resumed_from_step"], Path(result["checkpoint_dir"]),
        world_size=int(result.get("world_size", nproc * nnodes)),
    )


def main(argv: list[str] | None = None) -> None:
    from ptdpo import distributed as dist_utils
    from ptdpo.data.loaders import load_items

    parser = argparse.ArgumentParser(description="ptdpo training worker (one rank of a torchrun job)")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    info = dist_utils.init_from_env()
    job = json.loads((workdir / "job.json").read_text())
    items = load_items({"format": "jsonl", "path": str(workdir / "items.jsonl")})
    hint_rows = [json.loads(line) for line in (workdir / "hints.jsonl").read_text().splitlines() if line.strip()]
    from ptdpo.tracking import step_writer

    # rank 0 writes each step for the step process, which tracks it (ptdpo.tracking.follow_steps)
    on_step = step_writer(workdir / STEPS_FILE) if info.rank == 0 else None
    out = run_training(job["train"], items, hints_by_item(hint_rows), workdir / "out",
                       resume_from=job.get("resume_from"), fail_after_step=job.get("fail_after_step"),
                       progress=info.rank == 0, on_step=on_step)
    if info.rank == 0:
        out.metrics.to_parquet(workdir / "metrics.parquet")
        (workdir / "result.json").write_text(json.dumps({
            "model_dir": str(out.model_dir), "final_step": out.final_step,
            "resumed_from_step": out.resumed_from_step, "checkpoint_dir": str(out.checkpoint_dir),
            "world_size": out.world_size,
        }))
    dist_utils.barrier()


if __name__ == "__main__":
    main()
