"""Per-rollout records and their collation into padded model inputs.

Rollouts are kept unpadded, one record each, with their own prompt tensors (token ids and the
pixel rows of their own images). Any subset (a mini-batch, the PTD rollouts, a data-parallel shard,
groups refilled by dynamic sampling) is collated on demand, so image rows always travel with their
prompt and no batch-level index arithmetic on ``pixel_values`` is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# The prompt records are the engines' requests; re-exported here where rollouts keep them.
from ptdpo.engines.prompts import EncodedPrompt, collate_prompts, split_prompt_batch

__all__ = ["EncodedPrompt", "Rollout", "collate_completions", "collate_prompts", "pad_rows", "split_prompt_batch"]


@dataclass
class Rollout:
    item_index: int  # index into the step's prompt list
    group: int  # group id (one per prompt and sampling round)
    prompt: EncodedPrompt
    completion: torch.Tensor  # [T] real tokens only (eos included when produced)
    truncated: bool
    text: str
    reward: float = 0.0
    accuracy: float = 0.0
    format: float = 0.0
    advantage: float = 0.0
    in_pg: bool = True  # contributes to the policy-gradient term (DAPO drops uniform groups)
    ptd: bool = False
    ref_kl: bool = True  # reference-KL on (off for PTD groups with mask_ref_kl_on_ptd_groups)
    # HDPO: sampled from the privileged prompt (the ground truth in context), not from the student's;
    # ``prompt`` is still the student's answer-free prompt, the one the distillation scores it with
    privileged: bool = False
    old_logprobs: torch.Tensor | None = None  # [T]
    ref_logprobs: torch.Tensor | None = None  # [T]
    extras: dict[str, Any] = field(default_factory=dict)


def collate_completions(completions: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad completions: (ids [B, T], mask [B, T]) with the mask on real tokens only."""
    width = max(1, max(c.numel() for c in completions))
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : c.numel()] = c
        mask[i, : c.numel()] = 1
    return ids, mask


def pad_rows(rows: list[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    """Stack 1-D (or [T, H]) per-rollout tensors right-padded to ``width`` along dim 0."""
    first = rows[0]
    out = first.new_full((len(rows), width, *first.shape[1:]), value)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out
