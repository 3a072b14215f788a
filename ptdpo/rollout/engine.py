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
    (``workdir``, one per rank); other policies (a folder, a hub id) are loaded from their source.
    The trainer syncs the engine's weights after every update."""
    if cfg.rollout_backend == "hf":
        from ptdpo.engines.hf import TransformersEngine

        return TransformersEngine(policy, processor)
    from ptdpo import distributed as dist_utils
    from ptdpo.engines.vllm_engine import VLLMEngine

    source = cfg.policy
    if source.startswith("tiny:"):
        if workdir is None:
            raise ValueError("a vLLM rollout engine for a tiny: policy needs a folder to save the policy in")
        from ptdpo.models.loading import save_policy

        folder = Path(workdir) / f"rollout_policy_rank{dist_utils.DistInfo.current().rank}"
        source = str(save_policy(policy, processor, folder, metadata={"policy": cfg.policy, "purpose": "vllm"}))
    return VLLMEngine(source, cfg.vllm, colocated=True, processor=processor, where="train.vllm")
