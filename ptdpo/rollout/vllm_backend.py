"""vLLM rollout backend: a colocated engine that shares the GPU with training.

Written for vLLM's offline ``LLM`` API (V1 engine, in-process so the trainer can reach the model
runner): sleep mode frees the KV cache and weights while the trainer updates, ``sync_weights``
streams the policy's current parameters into the engine after every optimizer step.

UNVERIFIED here: vLLM is a CUDA build and this project's CI has no GPU. The pure parts (request
building, output conversion, weight naming) are tested on CPU; the engine calls are not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from ptdpo.rollout.base import Sampled, SamplingConfig
from ptdpo.rollout.records import EncodedPrompt

# Wrapper prefixes that FSDP, activation checkpointing and DDP add to parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.", "_orig_mod.")


def hf_weight_name(name: str) -> str:
    """Parameter name as a Hugging Face checkpoint spells it (what vLLM's loaders expect)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def iter_policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) pairs of the policy, unsharding FSDP2 DTensors one at a time so the peak
    extra memory is one parameter, not the whole model."""
    for name, param in model.state_dict().items():
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
        yield hf_weight_name(name), tensor.detach()


def build_requests(prompts: list[EncodedPrompt]) -> list[dict[str, Any]]:
    """vLLM prompt dicts: the chat-template text (image placeholders unexpanded) plus the images,
    which vLLM's own processor expands with the same min/max pixels as the trainer's."""
    requests = []
    for i, p in enumerate(prompts):
        if p.text is None:
            raise ValueError(f"prompt {i} has no chat-template text; encode it with texts kept for vLLM")
        req: dict[str, Any] = {"prompt": p.text}
        if p.images:
            req["multi_modal_data"] = {"image": list(p.images)}
        requests.append(req)
    return requests


def to_sampled(token_ids: list[int], text: str, finish_reason: str | None) -> Sampled:
    return Sampled(
        completion=torch.tensor(list(token_ids), dtype=torch.long),
        truncated=finish_reason == "length",
        text=text,
    )


class VLLMRolloutBackend:
    """Colocated vLLM engine. ``engine_kwargs`` go to ``vllm.LLM`` (tensor_parallel_size,
    gpu_memory_utilization, max_model_len, dtype, ...)."""

    def __init__(
        self,
        model_path: str,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        suppress_token_ids: list[int] | None = None,
        **engine_kwargs: Any,
    ):
        # The trainer reaches into the engine's model runner to load weights: keep it in-process.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        mm_kwargs = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v}
        engine_kwargs.setdefault("enable_sleep_mode", True)
        engine_kwargs.setdefault("gpu_memory_utilization", 0.35)
        engine_kwargs.setdefault("limit_mm_per_prompt", {"image": 4})
        if mm_kwargs:
            engine_kwargs.setdefault("mm_processor_kwargs", mm_kwargs)
        self.llm = LLM(model=model_path, **engine_kwargs)
        self.suppress_token_ids = suppress_token_ids or []
        self.asleep = False

    def _sampling_params(self, sampling: SamplingConfig):
        from vllm import SamplingParams

        kwargs: dict[str, Any] = dict(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        if self.suppress_token_ids:
            kwargs["logit_bias"] = {int(t): -100.0 for t in self.suppress_token_ids}
        return SamplingParams(**kwargs)

    def generate(self, prompts: list[EncodedPrompt], sampling: SamplingConfig) -> list[Sampled]:
        outputs = self.llm.generate(build_requests(prompts), self._sampling_params(sampling), use_tqdm=False)
        return [to_sampled(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]

    def generate_groups(
        self, groups: list[list[EncodedPrompt]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Sampled]]:
        from dataclasses import replace

        flat = [p for g in groups for p in g]
        # per-request seeds: sample j of group i uses seeds[i] + j, independent of the batch
        params = [
            self._sampling_params(replace(sampling, seed=seeds[i] + j))
            for i, g in enumerate(groups)
            for j in range(len(g))
        ]
        outputs = self.llm.generate(build_requests(flat), params, use_tqdm=False)
        sampled = [to_sampled(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]
        out, start = [], 0
        for g in groups:
            out.append(sampled[start : start + len(g)])
            start += len(g)
        return out

    def _runner_model(self):
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        worker = getattr(worker, "worker", worker)
        return worker.model_runner.model

    def sync_weights(self, model: torch.nn.Module) -> None:
        self._runner_model().load_weights(iter_policy_weights(model))
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
