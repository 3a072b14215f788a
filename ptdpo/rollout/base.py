"""The rollout backend interface: sample completions for encoded prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ptdpo.rollout.records import EncodedPrompt


@dataclass
class Sampled:
    completion: torch.Tensor  # [T] real tokens only
    truncated: bool
    text: str


@dataclass
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    seed: int | None = None


class RolloutBackend(Protocol):
    def generate(self, prompts: list[EncodedPrompt], sampling: SamplingConfig) -> list[Sampled]:
        """One completion per prompt, in order (repeat a prompt G times for G rollouts)."""

    def generate_groups(
        self, groups: list[list[EncodedPrompt]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Sampled]]:
        """Completions for groups of prompts, group ``i`` sampled with ``seeds[i]``: a group's
        samples do not depend on which other groups share the call."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next ``generate`` sample from ``model``'s current weights."""

    def sleep(self) -> None:
        """Release accelerator memory held for generation while the trainer updates."""

    def wake(self) -> None:
        """Take the memory back before generating."""
