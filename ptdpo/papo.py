"""PAPO's masked images (arXiv 2507.06448): the second policy forward of each micro-batch.

PAPO blacks out random square patches of each image (probability ``papo.mask_ratio`` each; the released
code blackens 14-pixel patches of the PIL image, Qwen2.5-VL's patch size, before its processor) and
scores the rollout's own completion again with the masked image. Here the masking happens after the
processor, on its patch rows: each row of ``pixel_values`` is one vision patch (Qwen3-VL: 16 x 16 pixels,
times the temporal patch, channel-major), so blacking out a row is blacking out one patch of the
resized image. The token ids, ``image_grid_thw`` and ``mm_token_type_ids`` stay the student's: the same
tokens, the same number of image tokens, only the pixels differ. A blacked-out pixel is value 0 before
the processor, i.e. (0 * rescale_factor - mean_c) / std_c after it, per channel c.

One mask per group (prompt) and step, shared by the group's rollouts (the released code masks each
prompt's images once and repeats them with the rollouts), drawn from a seed that is a function of the
run's seed, the step and the group's global index: the same on any rank, the same after a resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ptdpo import distributed as dist_utils
from ptdpo.config import PAPOConfig
from ptdpo.models.sampling import mix_seed
from ptdpo.rollout.records import EncodedPrompt, Rollout

PAPO_SALT = 0x5041504F  # mixed into a group's step seed for its image mask


def black_fill(processor: Any) -> torch.Tensor:
    """[C] the value a black pixel has after the image processor (rescale, then normalise), per channel."""
    ip = getattr(processor, "image_processor", processor)
    mean = torch.as_tensor(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0], dtype=torch.float64)
    std = torch.as_tensor(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0], dtype=torch.float64)
    if not getattr(ip, "do_normalize", True):
        return torch.zeros_like(mean)
    return (0.0 - mean) / std


def mask_patch_rows(pixel_values: torch.Tensor, fill: torch.Tensor, ratio: float, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a copy of ``pixel_values`` [P, D] whose masked rows hold ``fill`` channel by channel, the mask [P]).

    A row is masked with probability ``ratio``, independently. Each row is channel-major (its D values are
    C = ``len(fill)`` equal blocks, one per channel), as the Qwen-VL processors lay patches out."""
    if pixel_values.dim() != 2:
        raise ValueError(f"pixel_values must be [patches, values], got {tuple(pixel_values.shape)}")
    channels = fill.numel()
    if pixel_values.shape[1] % channels:
        raise ValueError(f"a patch row of {pixel_values.shape[1]} values does not split into {channels} channels")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    mask = torch.rand(pixel_values.shape[0], generator=generator) < ratio
    out = pixel_values.clone()
    rows = out.view(out.shape[0], channels, -1)
    rows[mask] = fill.to(out.dtype)[:, None].expand(channels, rows.shape[-1])
    return out, mask


class MaskedImages:
    """The masked copy of every group's prompt for one step, made once and cached."""

    def __init__(self, cfg: PAPOConfig, processor: Any, seed: int):
        self.cfg = cfg
        self.fill = black_fill(processor)
        self.seed = seed
        self.step = -1
        self._cache: dict[int, EncodedPrompt] = {}
        self.masked_rows = 0
        self.rows = 0

    def start_step(self, step: int) -> None:
        self.step = step
        self._cache.clear()
        self.masked_rows = self.rows = 0

    def prompt(self, r: Rollout) -> EncodedPrompt:
        """The prompt of ``r`` with its group's masked images (the prompt itself when it has no image)."""
        p = r.prompt
        if p.pixel_values is None:
            return p
        if r.group not in self._cache:
            gen = torch.Generator().manual_seed(
                mix_seed(dist_utils.step_seed(self.seed, self.step, 0, r.group), PAPO_SALT) % (2**63))
            pixels, mask = mask_patch_rows(p.pixel_values, self.fill, self.cfg.mask_ratio, gen)
            self.masked_rows += int(mask.sum())
            self.rows += mask.numel()
            # images=None: the masked prompt only feeds the training forward, never an engine
            self._cache[r.group] = dataclasses.replace(p, pixel_values=pixels, images=None)
        return self._cache[r.group]

    def prompts(self, rollouts: list[Rollout]) -> list[EncodedPrompt]:
        return [self.prompt(r) for r in rollouts]

    def metrics(self) -> dict[str, float]:
        """The step's fraction of masked patch rows over all ranks (a collective)."""
        masked, rows = dist_utils.all_sum(self.masked_rows), dist_utils.all_sum(self.rows)
        return {"papo_masked_patch_frac": masked / rows if rows else float("nan")}
