"""The transformers engine (CPU and GPU): batched ``generate`` on the live policy module.

All rows of a call (every sample of every prompt) go through one ``generate`` pass with a KV cache,
``max_batch_rows`` rows at a time; each row draws its tokens from its own stream
(``ptdpo.models.sampling.RowSampler``), so batching changes no sample. The ``n`` samples of a prompt
share its prompt forward (run once, its KV cache copied to the rows: ``generate_completions(rows=...)``).
The engine samples from the module it holds, so a weight sync only swaps the module and there is nothing
to put to sleep.

Under FSDP every rank must run the same number of ``generate`` passes (each pass is a collective):
give every rank the same number of rows, as the rollout collector does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ptdpo.engines.base import Sampled, SamplingConfig, check_request, chunks, regroup, row_seeds
from ptdpo.engines.prompts import EncodedPrompt, collate_prompts, distinct_prompts, encode_chats


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: torch.nn.Module, processor: Any, max_batch_rows: int = 64,
                 suppress_token_ids: Sequence[int] | None = None):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.model = model
        self.processor = processor
        self.max_batch_rows = int(max_batch_rows)
        self.suppress_token_ids = list(suppress_token_ids or [])
        self.pad_id = processor.tokenizer.pad_token_id

    def encode(self, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
               enable_thinking: bool = False) -> list[EncodedPrompt]:
        return encode_chats(self.processor, messages, images, enable_thinking)

    def sample(self, prompts: Sequence[EncodedPrompt], n: int, sampling: SamplingConfig, seeds: Sequence[int],
               logprobs: bool = False) -> list[list[Sampled]]:
        check_request(prompts, n, seeds)
        rows = [p for p in prompts for _ in range(n)]
        seeds_per_row = row_seeds(seeds, n) if sampling.do_sample else None
        return regroup(self._generate(rows, sampling, seeds_per_row, logprobs, share_prompts=n > 1), n)

    def greedy(self, prompts: Sequence[EncodedPrompt], max_new_tokens: int, logprobs: bool = False) -> list[Sampled]:
        check_request(prompts, 1, None)
        return self._generate(list(prompts), SamplingConfig(max_new_tokens, do_sample=False), None, logprobs)

    def _generate(self, rows: list[EncodedPrompt], sampling: SamplingConfig, seeds: list[int] | None,
                  logprobs: bool, share_prompts: bool = False) -> list[Sampled]:
        from ptdpo.models.multimodal import generate_completions

        out: list[Sampled] = []
        for start, chunk in zip(range(0, len(rows), self.max_batch_rows), chunks(rows, self.max_batch_rows)):
            # n samples of a prompt: its forward runs once per pass and its cache serves all its rows; the
            # choice depends on n alone, so every rank of a sharded policy runs the same forwards
            distinct, index = distinct_prompts(chunk) if share_prompts else (list(chunk), None)
            c = generate_completions(
                self.model, self.processor, collate_prompts(distinct, self.pad_id),
                max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                do_sample=sampling.do_sample, suppress_token_ids=self.suppress_token_ids,
                row_seeds=None if seeds is None else seeds[start : start + len(chunk)], output_logprobs=logprobs,
                rows=index,
            )
            for i, p in enumerate(chunk):
                k = int(c.lengths[i])
                out.append(Sampled(
                    completion=c.ids[i, :k].cpu(), truncated=bool(c.truncated[i]), text=c.texts[i],
                    logprobs=c.logprobs[i, :k].cpu() if logprobs else None, prompt_tokens=p.input_ids.numel(),
                ))
        return out

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def sleep(self) -> None:
        pass  # the policy module is the engine's model: nothing separate to release

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass
