"""The hint generator registry: a generator's config name -> its class, imported only when asked for.

``GENERATORS`` maps each name to ``"module:Class"``. :func:`generator_class` imports and returns the
class without building it, so a config check can bind the constructor's arguments on a machine without
the generator's engine (a vLLM generator needs a GPU to build, not to check); :func:`make_generator`
builds one. A generator config dict mixes constructor arguments with the run options of
``ptdpo.hints.generation.run_generation`` (``RUN_KEYS``); :func:`split_config` separates them.

This module imports only the generator interface; the generators import only the interface too, and
the attempt/feedback loop none of them, so no import runs in a circle.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ptdpo.hints.generator_base import HintGenerator

GENERATORS: dict[str, str] = {
    "oracle": "ptdpo.hints.oracle:OracleGenerator",
    "openai": "ptdpo.hints.openai_gen:OpenAIGenerator",
    "vllm": "ptdpo.hints.vllm_gen:VLLMGenerator",
}

RUN_KEYS = ("structured", "max_attempts", "unstructured_mode", "progress", "audit", "retry_rejected")


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generator constructor kwargs incl. name, run options) from one generator config dict."""
    gen = {k: v for k, v in config.items() if k not in RUN_KEYS}
    run = {k: config[k] for k in RUN_KEYS if k in config}
    return gen, run


def generator_class(name: str) -> type[HintGenerator]:
    """The generator class registered as ``name``, imported now (nothing is built)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown hint generator {name!r} (known: {', '.join(GENERATORS)})")
    module, _, attr = GENERATORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _constructor_kwargs(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cfg, run = split_config(dict(config))
    name = cfg.pop("name", None)
    if run.get("unstructured_mode") == "generate" and run.get("structured") is False:
        cfg["kind"] = "unstructured"
    return name, cfg


def check_generator_config(config: dict[str, Any]) -> type[HintGenerator]:
    """The class a generator config would build, after binding its arguments to the constructor's
    signature (unknown or missing arguments raise ValueError naming the generator); builds nothing."""
    name, kwargs = _constructor_kwargs(config)
    cls = generator_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad config for the {name!r} hint generator: {e}") from e
    return cls


def make_generator(config: dict[str, Any]) -> HintGenerator:
    """``{"name": "oracle" | "openai" | "vllm", ...}`` -> a generator. Unknown keys are an error."""
    name, kwargs = _constructor_kwargs(config)
    cls = generator_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad config for the {name!r} hint generator: {e}") from e
