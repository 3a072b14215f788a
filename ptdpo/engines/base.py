"""The engine interface: what rollouts, evaluation, hint generation and the study ask of a generator.

An engine encodes prompts once and samples from them::

    prompts = engine.encode(messages, images)                       # list[EncodedPrompt]
    groups = engine.sample(prompts, n, sampling, seeds)              # n samples per prompt
    best = engine.greedy(prompts, max_new_tokens)                    # one argmax completion each
    engine.sleep(); ...; engine.sync_weights(policy); engine.wake()  # around a training update
    engine.close()

Reproducibility: sample ``j`` of prompt ``i`` is drawn from its own random stream, seeded with
``mix_seed(seeds[i], j)``; it depends on the prompt, that seed and the weights only, never on which
other prompts share the call, how they are batched or how many ranks split the work. Both engines
keep this promise (the transformers engine with per-row generators, vLLM with per-request seeds),
but they do not draw the same numbers: the same seed gives different samples in the two engines.
Greedy completions agree between them up to floating-point ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ptdpo.engines.prompts import EncodedPrompt
from ptdpo.models.sampling import mix_seed


@dataclass
class SamplingConfig:
    """How to draw completions: ``do_sample=False`` is greedy (temperature and top_p unused)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, got {self.temperature} (greedy: do_sample=False)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Sampled:
    """One completion: its tokens (eos included when produced), whether the token limit cut it, its
    decoded text, and, when asked for, the raw log pi of each token and the prompt's token count."""

    completion: torch.Tensor  # [T] long
    truncated: bool
    text: str
    logprobs: torch.Tensor | None = None  # [T] float
    prompt_tokens: int | None = None


class GenerationEngine(Protocol):
    name: str

    def encode(self, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
               enable_thinking: bool = False) -> list[EncodedPrompt]:
        """The prompts of chats (``ptdpo.prompts.build_messages``), with their images."""

    def sample(self, prompts: Sequence[EncodedPrompt], n: int, sampling: SamplingConfig, seeds: Sequence[int],
               logprobs: bool = False) -> list[list[Sampled]]:
        """``n`` completions of each prompt, prompt ``i`` seeded by ``seeds[i]`` (module docstring)."""

    def greedy(self, prompts: Sequence[EncodedPrompt], max_new_tokens: int, logprobs: bool = False) -> list[Sampled]:
        """The argmax completion of each prompt."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Generate from ``model``'s current weights from now on."""

    def sleep(self) -> None:
        """Release accelerator memory held for generation while the trainer updates."""

    def wake(self) -> None:
        """Take that memory back before generating."""

    def close(self) -> None:
        """Release the engine."""


def row_seeds(seeds: Sequence[int], n: int) -> list[int]:
    """The seed of every sample, prompt-major: sample ``j`` of prompt ``i`` gets ``mix_seed(seeds[i], j)``."""
    return [mix_seed(int(s), j) for s in seeds for j in range(n)]


def check_request(prompts: Sequence[EncodedPrompt], n: int, seeds: Sequence[int] | None) -> None:
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: one seed per prompt (group)")


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``seq`` cut into consecutive pieces of at most ``size``: how engines bound the rows of one pass."""
    size = max(1, int(size))
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def regroup(flat: Sequence[Any], n: int) -> list[list[Any]]:
    """Prompt-major flat results back into groups of ``n``."""
    return [list(flat[i : i + n]) for i in range(0, len(flat), n)]
