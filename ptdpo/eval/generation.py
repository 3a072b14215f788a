"""Generation for evaluation: k samples per item, greedy or sampled, transformers (CPU/GPU) or vLLM (GPU).

Both backends take the same :class:`GenerationConfig` and the same prompt items (already rendered by
the benchmark's template, ``ptdpo.eval.registry.prompt_item``) and build the chat messages with
``ptdpo.prompts.build_messages``, so the prompt is the one used in training. They return, per item, a
list of k :class:`Sample` (text, completion token count, truncated flag).

vLLM is imported only inside :class:`VLLMBackend` methods: importing ``ptdpo.eval`` never imports it
(and never imports torch either; the transformers backend imports ``ptdpo.models`` lazily).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ptdpo.data.schema import Item, item_images
from ptdpo.prompts import SYSTEM_PROMPT, build_messages

BACKENDS = ("transformers", "vllm")


@dataclass
class GenerationConfig:
    """How to generate answers for evaluation.

    ``k`` samples per item; ``temperature == 0`` means greedy (then ``k`` is forced to 1: greedy samples
    are identical). ``pass_k``: the k values reported as pass@k (each <= k; 1 is always reported).
    ``batch_size``: items per generate call (each repeated k times for the transformers backend).
    ``enable_thinking`` is passed to the chat template (Qwen3 templates then open ``<think>`` in the
    prompt); ``think_prefilled`` (default: same as ``enable_thinking``) tells the format check that the
    output may start inside the think block. Paper setting (METHOD.md 5): ``max_new_tokens=4096,
    temperature=1.0, k=8`` (avg@8).
    """

    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    k: int = 1
    pass_k: list[int] = field(default_factory=lambda: [1])
    batch_size: int = 8
    seed: int = 0
    enable_thinking: bool = False
    think_prefilled: bool | None = None
    system_prompt: str | None = SYSTEM_PROMPT
    backend: str = "transformers"
    limit: int | None = None
    score_timeout_s: float = 5.0
    score_workers: int | None = None
    accuracy_weight: float = 0.9
    format_weight: float = 0.1
    show_progress: bool = True
    vllm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0:
            self.k = 1
        self.pass_k = sorted({int(j) for j in (self.pass_k or [1]) if 1 <= int(j) <= self.k} | {1})
        if self.think_prefilled is None:
            self.think_prefilled = bool(self.enable_thinking)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | GenerationConfig | None) -> GenerationConfig:
        if d is None:
            return cls()
        if isinstance(d, GenerationConfig):
            return d
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generation config key(s) {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(dict(d)))


@dataclass
class Sample:
    """One generated answer: decoded text, completion tokens (eos included), cut by the length limit?"""

    text: str
    n_tokens: int
    truncated: bool


def messages_for(item: Item, cfg: GenerationConfig) -> list[dict[str, Any]]:
    return build_messages(item, system_prompt=cfg.system_prompt)


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, int(size))
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


class TransformersBackend:
    """``model.generate`` through ``ptdpo.models.multimodal`` (any device the model is on)."""

    name = "transformers"

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor

    def generate(
        self,
        items: Sequence[Item],
        cfg: GenerationConfig,
        desc: str = "generate",
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        from ptdpo.models.multimodal import encode_prompts, generate_completions, repeat_interleave_prompts

        out: list[list[Sample]] = []
        k = cfg.k
        with _progress(len(items), desc, cfg.show_progress) as bar:
            for b, chunk in enumerate(_chunks(list(items), cfg.batch_size)):
                messages = [messages_for(it, cfg) for it in chunk]
                images = [item_images(it) for it in chunk]
                batch = encode_prompts(self.processor, messages, images, enable_thinking=cfg.enable_thinking)
                if k > 1:
                    batch = repeat_interleave_prompts(batch, k)
                comp = generate_completions(
                    self.model,
                    self.processor,
                    batch,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature if cfg.do_sample else 1.0,
                    top_p=cfg.top_p,
                    do_sample=cfg.do_sample,
                    seed=cfg.seed + b,
                )
                lengths = [int(x) for x in comp.lengths.tolist()]
                trunc = [bool(x) for x in comp.truncated.tolist()]
                for i in range(len(chunk)):
                    rows = range(i * k, (i + 1) * k)
                    out.append([Sample(comp.texts[r], lengths[r], trunc[r]) for r in rows])
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        return out


class VLLMBackend:
    """vLLM offline inference (GPU): ``vllm.LLM`` + ``SamplingParams(n=k, ...)``, multimodal prompts.

    Prompts are rendered with the policy's own processor chat template (``processor`` or, by default,
    ``ptdpo.models.load_processor(model)``) and passed as ``{"prompt": text, "multi_modal_data":
    {"image": [PIL images]}}``, so the image placeholders and the template are those of training. Extra
    ``vllm.LLM`` keyword arguments come from ``llm_kwargs`` (``GenerationConfig.vllm``): e.g.
    ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``dtype``,
    ``mm_processor_kwargs={"min_pixels": ..., "max_pixels": ...}`` (use the training processor's limits).
    """

    name = "vllm"

    def __init__(self, model: str, processor=None, llm=None, **llm_kwargs: Any) -> None:
        self.model = model
        self._processor = processor
        self._llm = llm
        self.llm_kwargs = dict(llm_kwargs)

    @property
    def processor(self):
        if self._processor is None:
            from ptdpo.models.loading import load_processor

            self._processor = load_processor(self.model)
        return self._processor

    def llm(self):
        if self._llm is None:
            from vllm import LLM

            kwargs = {"limit_mm_per_prompt": {"image": 8}, "trust_remote_code": False}
            kwargs.update(self.llm_kwargs)
            self._llm = LLM(model=self.model, **kwargs)
        return self._llm

    @staticmethod
    def sampling_params(cfg: GenerationConfig):
        from vllm import SamplingParams

        return SamplingParams(
            n=cfg.k,
            temperature=float(cfg.temperature),
            top_p=float(cfg.top_p) if cfg.do_sample else 1.0,
            top_k=-1 if cfg.do_sample else 1,
            max_tokens=int(cfg.max_new_tokens),
            seed=int(cfg.seed),
            skip_special_tokens=True,
        )

    def build_requests(self, items: Sequence[Item], cfg: GenerationConfig) -> list[dict[str, Any]]:
        """One vLLM prompt dict per item (the test suite checks these on CPU)."""
        proc = self.processor
        reqs = []
        for it in items:
            text = proc.apply_chat_template(
                messages_for(it, cfg),
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=cfg.enable_thinking,
            )
            req: dict[str, Any] = {"prompt": text}
            if it.images:
                req["multi_modal_data"] = {"image": item_images(it)}
            reqs.append(req)
        return reqs

    def generate(
        self,
        items: Sequence[Item],
        cfg: GenerationConfig,
        desc: str = "generate",
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        llm = self.llm()
        params = self.sampling_params(cfg)
        out: list[list[Sample]] = []
        # vLLM batches internally; chunks only bound host memory (decoded images) and drive the bar
        chunk_size = max(cfg.batch_size, 256)
        with _progress(len(items), desc, cfg.show_progress) as bar:
            for chunk in _chunks(list(items), chunk_size):
                results = llm.generate(self.build_requests(chunk, cfg), params, use_tqdm=False)
                if len(results) != len(chunk):
                    raise RuntimeError(f"vLLM returned {len(results)} results for {len(chunk)} prompts")
                for res in results:
                    out.append(
                        [
                            Sample(o.text, len(o.token_ids), getattr(o, "finish_reason", None) == "length")
                            for o in res.outputs
                        ]
                    )
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        return out


def make_backend(model: Any, cfg: GenerationConfig):
    """A backend from a backend object, a (model, processor) pair, or a policy spec string.

    Strings: ``cfg.backend == "vllm"`` -> :class:`VLLMBackend` (a local folder or hub id);
    otherwise ``ptdpo.models.load_policy(spec)`` (``tiny:0.5m``, a folder, a hub id).
    """
    if hasattr(model, "generate") and getattr(model, "name", None) in BACKENDS:
        return model
    if isinstance(model, tuple | list) and len(model) == 2:
        return TransformersBackend(model[0], model[1])
    if isinstance(model, str):
        if cfg.backend == "vllm":
            return VLLMBackend(model, **cfg.vllm)
        from ptdpo.models.loading import load_policy

        m, p = load_policy(model)
        return TransformersBackend(m, p)
    raise TypeError(
        f"cannot evaluate a {type(model).__name__}: give a policy spec, (model, processor) or a backend"
    )
