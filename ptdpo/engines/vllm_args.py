"""What the vLLM engine asks of vLLM, as pure functions: engine arguments, sampling arguments, request
dicts, the tensor-parallel layout of colocated engines and the order of sleep and wake calls.

Nothing here imports vLLM, so the main test suite checks all of it; ``ptdpo.engines.vllm_engine`` makes
the calls.

Colocated engines (one per training rank, under torchrun): every rank builds an engine on its own
device with vLLM's ``external_launcher`` executor, which joins the torch.distributed world the trainer
already runs in (without it every rank's engine lands on GPU 0). With ``tensor_parallel_size = tp``,
ranks ``[k*tp, (k+1)*tp)`` form one tensor-parallel group that holds ONE engine replica: its ranks
must submit the same requests, so each rank gathers its group's prompts, the group generates them
once and each rank keeps its own share. Hence the rule: the world size must be a multiple of ``tp``,
and a colocated engine with ``tp > 1`` needs ``tp`` (or a multiple of ``tp``) training processes.

Sleep (GPU only; vLLM has no sleep mode on CPU): level 1 moves the weights to host memory and drops
the KV cache. A weight update must never load into a sleeping engine (the load would write into
released memory, or the wake would restore the stale copy), so the order around an update is::

    sleep(level=1)                      after the rollouts, before the trainer's update
    wake_up(tags=["weights"])           before loading the new weights
    reload weights, reset caches
    wake_up(tags=["kv_cache"])          before the next generation
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ptdpo.config import VLLMConfig
from ptdpo.config_fields import FieldProblems, build
from ptdpo.engines.base import SamplingConfig
from ptdpo.engines.prompts import EncodedPrompt

COLOCATED_MEMORY_SHARE = 0.35  # of the GPU, for an engine that shares it with training
ALONE_MEMORY_SHARE = 0.9
COLOCATED_IMAGE_LIMIT = 4  # images per prompt a colocated engine reserves encoder memory for
ALONE_IMAGE_LIMIT = 8
SLEEP_LEVEL = 1


class EngineConfigError(ValueError):
    """vLLM options that cannot work here; the message names the config key and value."""


def vllm_options(options: VLLMConfig | Mapping[str, Any] | None, where: str = "vllm") -> VLLMConfig:
    """A checked :class:`VLLMConfig` from a config object, a JSON dict or None (the defaults)."""
    if options is None:
        return VLLMConfig()
    if isinstance(options, VLLMConfig):
        return options
    try:
        return build(VLLMConfig, dict(options), where)
    except FieldProblems as e:
        raise EngineConfigError("; ".join(e.problems)) from None


def tensor_parallel_group(rank: int, world_size: int, tp: int, where: str = "vllm") -> list[int]:
    """The ranks that share ``rank``'s engine replica (module docstring), or EngineConfigError."""
    if world_size % tp:
        raise EngineConfigError(
            f"{where}.tensor_parallel_size = {tp} does not divide the {world_size} training processes: each "
            f"tensor-parallel group of a colocated engine is {tp} consecutive ranks; run a multiple of {tp} "
            "processes or change the tensor-parallel size"
        )
    first = rank - rank % tp
    return list(range(first, first + tp))


def engine_kwargs(
    model: str,
    options: VLLMConfig,
    *,
    colocated: bool,
    sleep_available: bool,
    world_size: int = 1,
    pixel_limits: tuple[int, int] | None = None,
    where: str = "vllm",
    cpu: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``model`` (a folder or hub id).

    ``colocated``: the engine shares its device with a trainer (less memory, sleep mode where the
    platform has it, ``external_launcher`` under torch.distributed). ``sleep_available``: the platform
    supports sleep mode. ``pixel_limits``: the trainer's (min_pixels, max_pixels), so vLLM resizes
    images exactly as the trainer's processor does. ``cpu``: the CPU platform, whose vLLM 0.32 sampler
    cannot rewind a seeded request's generator after a partial (chunked) prefill ("CPU Generator does not
    use offset", as soon as a batch's prompts exceed one step's token budget): prompts are prefilled whole
    there unless ``engine_kwargs`` says otherwise."""
    tp = options.tensor_parallel_size
    sleep = options.enable_sleep_mode
    if sleep and not sleep_available:
        raise EngineConfigError(
            f"{where}.enable_sleep_mode = true, but this platform has no vLLM sleep mode (CPU): set it to "
            "false or leave it out (it is then on where supported)"
        )
    if sleep is None:
        sleep = colocated and sleep_available
    if colocated:
        if world_size > 1:
            tensor_parallel_group(0, world_size, tp, where)
        elif tp > 1:
            raise EngineConfigError(
                f"{where}.tensor_parallel_size = {tp} with a colocated engine needs {tp} training processes "
                "(torchrun): the engine's tensor-parallel ranks are the training ranks"
            )
    share = options.gpu_memory_utilization
    kwargs: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": tp,
        "gpu_memory_utilization": share if share is not None else (
            COLOCATED_MEMORY_SHARE if colocated else ALONE_MEMORY_SHARE),
        "dtype": options.dtype,
        "enforce_eager": options.enforce_eager,
        "enable_sleep_mode": bool(sleep),
        "limit_mm_per_prompt": {"image": options.limit_images or (
            COLOCATED_IMAGE_LIMIT if colocated else ALONE_IMAGE_LIMIT)},
        "seed": options.seed,
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gib * 2**30)
    mm = dict(options.mm_processor_kwargs or {})
    if pixel_limits is not None and not {"size", "min_pixels", "max_pixels"} & set(mm):  # the user's win
        mm["size"] = {"shortest_edge": int(pixel_limits[0]), "longest_edge": int(pixel_limits[1])}
    if mm:
        kwargs["mm_processor_kwargs"] = mm
    if colocated and world_size > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
    clash = sorted(set(options.engine_kwargs) & (set(kwargs) | {f.name for f in dataclasses.fields(VLLMConfig)}))
    if clash:
        raise EngineConfigError(f"{where}.engine_kwargs sets {clash}: use the typed option(s) of {where} instead")
    kwargs.update(options.engine_kwargs)
    if cpu:
        kwargs.setdefault("enable_chunked_prefill", False)
    return kwargs


def sampling_kwargs(sampling: SamplingConfig, seed: int | None, suppress_ids: Sequence[int] = (),
                    logprobs: bool = False) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments of ONE completion: exactly softmax(logits / T) within top_p (no
    top-k, min-p or penalties, whatever the model's generation config says), ``suppress_ids`` never
    drawn, the request's own ``seed``. ``logprobs``: return the raw log pi of each drawn token."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature) if sampling.do_sample else 0.0,
        "top_p": float(sampling.top_p) if sampling.do_sample else 1.0,
        "top_k": 0 if sampling.do_sample else 1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "seed": int(seed) if sampling.do_sample and seed is not None else None,
        "skip_special_tokens": True,
    }
    if suppress_ids:
        # -100 is the bias vLLM allows at most: exp(-100) of the mass, never drawn in practice
        kwargs["logit_bias"] = {int(t): -100.0 for t in suppress_ids}
    if logprobs:
        kwargs["logprobs"] = 0  # the drawn token's own log-prob only
    return kwargs


def build_requests(prompts: Sequence[EncodedPrompt]) -> list[dict[str, Any]]:
    """vLLM prompt dicts: the chat-template text (one placeholder per image, unexpanded) and the images,
    which vLLM's processor expands with the same pixel limits as the trainer's."""
    requests = []
    for i, p in enumerate(prompts):
        if p.text is None:
            raise ValueError(f"prompt {i} has no chat-template text; encode it with its text kept for vLLM")
        n_images = len(p.images or [])
        if p.text.count("<|image_pad|>") != n_images:
            raise ValueError(f"prompt {i}: {p.text.count('<|image_pad|>')} image placeholders, {n_images} images")
        req: dict[str, Any] = {"prompt": p.text}
        if n_images:
            req["multi_modal_data"] = {"image": list(p.images)}
        requests.append(req)
    return requests


class SleepPlan:
    """The vLLM calls (method name, keyword arguments) that put an engine to sleep and wake it, in the
    order of the module docstring. Disabled (no sleep mode): every plan is empty."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.asleep: set[str] = set()

    def sleep(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.enabled or self.asleep:
            return []
        self.asleep = {"weights", "kv_cache"}
        return [("sleep", {"level": SLEEP_LEVEL})]

    def before_load(self) -> list[tuple[str, dict[str, Any]]]:
        """Before new weights are loaded: the weights must be resident; the KV cache may stay released."""
        if "weights" not in self.asleep:
            return []
        self.asleep.discard("weights")
        return [("wake_up", {"tags": ["weights"]})]

    def wake(self) -> list[tuple[str, dict[str, Any]]]:
        tags = [t for t in ("weights", "kv_cache") if t in self.asleep]
        self.asleep = set()
        return [("wake_up", {"tags": tags})] if tags else []
