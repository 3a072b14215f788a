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


@dataclass
class EncodedPrompt:
    """One prompt as the model sees it, without padding."""

    input_ids: torch.Tensor  # [L]
    pixel_values: torch.Tensor | None  # [P, D] rows of this prompt's images
    image_grid_thw: torch.Tensor | None  # [n_images, 3]
    mm_token_type_ids: torch.Tensor | None = None  # [L]
    text: str | None = None  # the chat-template text before image-token expansion (for vLLM)
    images: list | None = None  # the PIL images (for vLLM, which runs its own processor)


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
    old_logprobs: torch.Tensor | None = None  # [T]
    ref_logprobs: torch.Tensor | None = None  # [T]
    extras: dict[str, Any] = field(default_factory=dict)


def split_prompt_batch(
    batch: dict[str, torch.Tensor],
    images_per_sample: list[int],
    texts: list[str] | None = None,
    images: list[list] | None = None,
) -> list[EncodedPrompt]:
    """Cut a left-padded processor batch into one EncodedPrompt per row."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    grid = batch.get("image_grid_thw")
    pix = batch.get("pixel_values")
    mm = batch.get("mm_token_type_ids")
    rows_per_image = grid.prod(-1).tolist() if grid is not None else []
    out, img, row = [], 0, 0
    for b in range(ids.shape[0]):
        n_img = images_per_sample[b]
        n_rows = int(sum(rows_per_image[img : img + n_img]))
        out.append(
            EncodedPrompt(
                input_ids=ids[b][mask[b]].clone(),
                pixel_values=pix[row : row + n_rows].clone() if n_img else None,
                image_grid_thw=grid[img : img + n_img].clone() if n_img else None,
                mm_token_type_ids=mm[b][mask[b]].clone() if mm is not None else None,
                text=texts[b] if texts is not None else None,
                images=images[b] if images is not None else None,
            )
        )
        img += n_img
        row += n_rows
    return out


def collate_prompts(prompts: list[EncodedPrompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts into one batch; image rows are concatenated in row order."""
    width = max(p.input_ids.numel() for p in prompts)
    n = len(prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    has_mm = any(p.mm_token_type_ids is not None for p in prompts)
    mm = torch.zeros((n, width), dtype=torch.long) if has_mm else None
    for i, p in enumerate(prompts):
        L = p.input_ids.numel()
        ids[i, width - L :] = p.input_ids
        mask[i, width - L :] = 1
        if mm is not None and p.mm_token_type_ids is not None:
            mm[i, width - L :] = p.mm_token_type_ids
    batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    pix = [p.pixel_values for p in prompts if p.pixel_values is not None]
    if pix:
        batch["pixel_values"] = torch.cat(pix)
        batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in prompts if p.image_grid_thw is not None])
    if mm is not None:
        batch["mm_token_type_ids"] = mm
    return batch


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
