"""Generation engines: one interface (``ptdpo.engines.base.GenerationEngine``) for RL rollouts,
benchmark evaluation, offline hint generation and the study, with two implementations:

- :class:`TransformersEngine` (``hf``): batched ``generate`` on the live policy module, CPU or GPU;
- :class:`VLLMEngine` (``vllm_engine``): vLLM offline, or colocated with the trainer (weight sync,
  sleep/wake, one engine per rank with ``external_launcher``; the rules are in ``vllm_args``).

Names are imported lazily: importing this package imports neither torch nor vLLM.

    from ptdpo.engines import TransformersEngine, VLLMEngine, SamplingConfig
"""

from __future__ import annotations

from ptdpo.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
