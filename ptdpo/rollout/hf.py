"""transformers ``generate`` rollout backend (CPU and GPU): samples from the live policy module, so
weight sync is a no-op and there is nothing to put to sleep."""

from __future__ import annotations

from dataclasses import replace

import torch

from ptdpo.models.multimodal import generate_completions
from ptdpo.rollout.base import Sampled, SamplingConfig
from ptdpo.rollout.records import EncodedPrompt, collate_prompts


class HFRolloutBackend:
    def __init__(self, model: torch.nn.Module, processor, batch_size: int = 64, suppress_ids: list[int] | None = None):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.suppress_ids = suppress_ids
        self.pad_id = processor.tokenizer.pad_token_id

    def generate(self, prompts: list[EncodedPrompt], sampling: SamplingConfig) -> list[Sampled]:
        out: list[Sampled] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            seed = None if sampling.seed is None else sampling.seed + start
            c = generate_completions(
                self.model,
                self.processor,
                collate_prompts(chunk, self.pad_id),
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                do_sample=sampling.do_sample,
                seed=seed,
                suppress_token_ids=self.suppress_ids,
            )
            for i in range(len(chunk)):
                n = int(c.lengths[i])
                out.append(Sampled(completion=c.ids[i, :n].cpu(), truncated=bool(c.truncated[i]), text=c.texts[i]))
        return out

    def generate_groups(
        self, groups: list[list[EncodedPrompt]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Sampled]]:
        # One generate call per group: batching groups together would make a group's samples depend
        # on its batch neighbours (shared RNG stream, different padding).
        return [self.generate(g, replace(sampling, seed=s)) for g, s in zip(groups, seeds)]

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass
