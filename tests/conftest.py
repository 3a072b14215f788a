"""Shared pytest fixtures, and what the main run collects.

``tests/vllm_engine/`` holds the tests of the real vLLM engine: they run in the vLLM environment
(``.venv-vllm``, built by ``scripts/setup.sh``) with ``.venv-vllm/bin/python -m pytest tests/vllm_engine``, which
``tests/test_vllm_env.py`` does on every run of the main suite. The main run (``pytest`` from ``.venv``)
skips that folder when it walks ``tests/``, unless ``PTDPO_VLLM_TESTS=1``; naming it on the command line
always collects it.

Models: ``tiny_policy`` is a (model, processor) pair of the 0.5M-parameter random Qwen3-VL, built once
per session (seed 0, eval mode). Treat it as read-only: a test that trains or edits weights takes
``copy.deepcopy(model)`` (or calls ``build_tiny_qwen3vl`` itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VLLM_TESTS = Path(__file__).resolve().parent / "vllm_engine"


def pytest_ignore_collect(collection_path, config):
    if Path(collection_path).resolve() == VLLM_TESTS and os.environ.get("PTDPO_VLLM_TESTS") != "1":
        return True
    return None

TINY_SIZE = "0.5m"
TINY_SEED = 0


def _limit_threads() -> None:
    # One intra-op thread: the tiny models gain nothing from more, and on a 2-core machine shared with
    # subprocesses (Metaflow tasks, torchrun ranks, math workers) OpenMP spinning makes 2 threads up
    # to 50x slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    _limit_threads()


@pytest.fixture(scope="session")
def tiny_policy():
    """(Qwen3VLForConditionalGeneration 0.5M random weights, Qwen3VLImageProcessor), read-only."""
    _limit_threads()
    from ptdpo.models.tiny import build_tiny_qwen3vl

    return build_tiny_qwen3vl(TINY_SIZE, seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_model(tiny_policy):
    return tiny_policy[0]


@pytest.fixture(scope="session")
def tiny_processor(tiny_policy):
    return tiny_policy[1]


@pytest.fixture(scope="session")
def make_image():
    """``make_image(width, height, seed=0)``: a deterministic RGB PIL image with a few coloured blocks."""

    def _make(width: int = 64, height: int = 64, seed: int = 0):
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (width, height), (255 - 40 * (seed % 5), 255, 255))
        draw = ImageDraw.Draw(img)
        for k in range(3):
            x0 = (7 * (seed + 1) * (k + 1)) % max(1, width - 8)
            y0 = (11 * (seed + 2) * (k + 1)) % max(1, height - 8)
            colour = ((80 * k + 30 * seed) % 256, (150 + 40 * k) % 256, (60 * seed) % 256)
            draw.rectangle([x0, y0, x0 + width // 4, y0 + height // 4], fill=colour)
        return img

    return _make
