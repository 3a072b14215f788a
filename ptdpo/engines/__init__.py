"""Generation engines: one interface (``ptdpo.engines.base.GenerationEngine``) for RL rollouts,
benchmark evaluation, offline hint generation and the study, with two implementations:

- :class:`TransformersEngine` (``hf``): batched ``generate`` on the live policy module, CPU or GPU;
- :class:`VLLMEngine` (``vllm_engine``): vLLM offline, or colocated with the trainer (weight sync,
  sleep/wake, one engine per rank with ``external_launcher``; the rules are in ``vllm_args``).

Names are imported lazily: importing this package imports neither torch nor vLLM.

    from ptdpo.engines import TransformersEngine, VLLMEngine, SamplingConfig
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GenerationEngine": "base",
    "Sampled": "base",
    "SamplingConfig": "base",
    "row_seeds": "base",
    "EncodedPrompt": "prompts",
    "encode_chats": "prompts",
    "render_chats": "prompts",
    "TransformersEngine": "hf",
    "VLLMEngine": "vllm_engine",
    "EngineConfigError": "vllm_args",
    "SleepPlan": "vllm_args",
    "hf_weight_name": "weights",
    "iter_policy_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ptdpo.engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ptdpo.engines.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
