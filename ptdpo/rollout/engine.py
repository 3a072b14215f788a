"""The rollout engine of a training run, built from ``train.rollout_backend``: the transformers engine
on the live policy (``hf``), or a vLLM engine colocated with the trainer on every rank (``vllm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ptdpo.config import TrainConfig
from ptdpo.engines.base import GenerationEngine


def make_rollout_engine(cfg: TrainConfig, policy: torch.nn.Module, processor: Any,
                        workdir: str | Path | None = None) -> GenerationEngine:
    """The engine the trainer samples rollouts from. Build it before the policy is sharded: for a
    ``tiny:`` policy the vLLM engine loads the policy's initial weights from a folder written here
    (``workdir/rollout_policy``); other policies (a folder, a hub id) are loaded from their source.
    The trainer syncs the engine's weights after every update."""
    if cfg.rollout_backend == "hf":
        from ptdpo.engines.hf import TransformersEngine

        return TransformersEngine(policy, processor)
    from ptdpo.engines.vllm_engine import VLLMEngine

    source = cfg.policy
    if source.startswith("tiny:"):
        source = str(_saved_tiny_policy(cfg, policy, processor, workdir))
    return VLLMEngine(source, cfg.vllm, colocated=True, processor=processor, where="train.vllm")


def _saved_tiny_policy(cfg: TrainConfig, policy: torch.nn.Module, processor: Any, workdir: str | Path | None) -> Path:
    """The folder vLLM loads a ``tiny:`` policy from, written by rank 0 (transformers saves on rank 0
    only) and read by every rank after a barrier."""
    from ptdpo import distributed as dist_utils
    from ptdpo.models.loading import save_policy

    if workdir is None:
        raise ValueError("a vLLM rollout engine for a tiny: policy needs a folder to save the policy in")
    folder = Path(workdir) / "rollout_policy"
    if dist_utils.DistInfo.current().rank == 0:
        save_policy(policy, processor, folder, metadata={"policy": cfg.policy, "purpose": "vllm rollouts"})
    dist_utils.barrier()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} (rank 0's copy of {cfg.policy}) is not visible on this node: vLLM rollouts of a tiny: "
            "policy over several nodes need a shared folder; save the policy and name its folder as train.policy"
        )
    return folder
