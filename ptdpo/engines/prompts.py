"""Encoded prompts, the requests every engine takes: encoded once, then sampled, scored and trained on.

An :class:`EncodedPrompt` holds one prompt unpadded, as the model sees it (token ids, its own image
rows), plus what a vLLM engine needs instead (the chat-template text with one placeholder per image,
and the images, which vLLM processes itself). Any subset of prompts is collated on demand, so image
rows always travel with their prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class EncodedPrompt:
    """One prompt as the model sees it, without padding."""

    input_ids: torch.Tensor | None  # [L]; None for a text-only request (a vLLM engine's ``encode``)
    pixel_values: torch.Tensor | None  # [P, D] rows of this prompt's images
    image_grid_thw: torch.Tensor | None  # [n_images, 3]
    mm_token_type_ids: torch.Tensor | None = None  # [L]
    text: str | None = None  # the chat-template text before image-token expansion (for vLLM)
    images: list | None = None  # the PIL images (for vLLM, which runs its own processor)


def encode_chats(processor: Any, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
                 enable_thinking: bool = False) -> list[EncodedPrompt]:
    """One EncodedPrompt per chat (``ptdpo.prompts.build_messages`` messages), each with its images."""
    from ptdpo.models.multimodal import encode_prompts

    images = [list(x) for x in images] if images is not None else [[] for _ in messages]
    batch = encode_prompts(processor, messages, images, enable_thinking=enable_thinking)
    return split_prompt_batch(batch, batch["images_per_sample"], texts=batch["texts"], images=images)


def render_chats(processor: Any, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
                 enable_thinking: bool = False) -> list[EncodedPrompt]:
    """Text-only prompts (chat-template text and images, no tensors): what an engine that processes
    images itself needs, without tokenizing or resizing anything here."""
    from ptdpo.models.multimodal import render_prompts

    images = [list(x) for x in images] if images is not None else [[] for _ in messages]
    if len(images) != len(messages):
        raise ValueError(f"{len(messages)} message lists but {len(images)} image lists")
    texts = render_prompts(processor, messages, enable_thinking=enable_thinking)
    return [EncodedPrompt(None, None, None, text=t, images=imgs) for t, imgs in zip(texts, images)]


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


def distinct_prompts(prompts: Sequence[EncodedPrompt]) -> tuple[list[EncodedPrompt], list[int]]:
    """(the distinct prompts of ``prompts`` in first-seen order, each row's index among them). Two rows
    share a prompt when it is the same object or has the same token ids, image rows and image grid (the
    teacher's prompts are encoded per rollout), so the prompt part of their forward can run once
    (``ptdpo.models.shared_prompt``)."""
    distinct: list[EncodedPrompt] = []
    by_ids: dict[tuple, list[int]] = {}
    rows: list[int] = []
    for p in prompts:
        key = tuple(p.input_ids.tolist()) if p.input_ids is not None else (id(p),)
        match = next((u for u in by_ids.get(key, []) if distinct[u] is p or _same_images(distinct[u], p)), None)
        if match is None:
            match = len(distinct)
            distinct.append(p)
            by_ids.setdefault(key, []).append(match)
        rows.append(match)
    return distinct, rows


def _same_images(a: EncodedPrompt, b: EncodedPrompt) -> bool:
    if (a.pixel_values is None) != (b.pixel_values is None):
        return False
    return a.pixel_values is None or (torch.equal(a.pixel_values, b.pixel_values)
                                      and torch.equal(a.image_grid_thw, b.image_grid_thw))


def collate_prompts(prompts: list[EncodedPrompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts into one batch; image rows are concatenated in row order."""
    missing = [i for i, p in enumerate(prompts) if p.input_ids is None]
    if missing:
        raise ValueError(f"prompts {missing} carry no token ids (text-only requests): encode them with a processor")
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
