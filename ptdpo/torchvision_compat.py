"""Let the package index's torchvision import beside a CPU-only torch (the vLLM test environment).

The index serves torchvision 0.28 only as a CUDA build. Beside ``torch 2.13.0+cpu`` its C extension
cannot load, and its import then fails at ``register_fake("torchvision::nms")`` because the two operators
it registers fake kernels for were never declared. vLLM and transformers import torchvision for image
and video processing, where nothing calls those operators. Declaring their schemas before torchvision
is first imported lets it import; its transforms work; calling ``nms`` raises torchvision's own error.

:func:`install` puts a one-shot import hook in front of ``sys.meta_path``: on the first
``import torchvision`` it tries torchvision's own extension library first and declares the two schemas
only when that library did not provide them, so on a machine where the extension loads (the GPU image)
nothing changes. ``scripts/setup.sh`` installs the hook for every process of ``.venv-vllm`` with a
``.pth`` file (vLLM starts helper processes of its own, which must import torchvision too).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# The operators torchvision's _meta_registrations.py registers fake kernels for without checking that
# its extension defined them.
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def declare_missing_ops() -> list[str]:
    """Load torchvision's extension if it can load; declare what it left undeclared. Returns the names
    declared here (empty when the extension provided them)."""
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return []
    for lib in glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "_C*.so")):
        try:
            torch.ops.load_library(lib)
        except (OSError, RuntimeError):
            pass  # a CUDA build beside a CPU torch: declare the schemas below instead
    declared = []
    for schema in SCHEMAS:
        name, args = schema.split("(", 1)
        if not hasattr(torch.ops.torchvision, name):
            torch.library.define(f"torchvision::{name}", "(" + args)
            declared.append(name)
    return declared


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`declare_missing_ops` once, just before torchvision is first imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall()
            declare_missing_ops()
        return None  # the normal finders import the module


def install() -> None:
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path) and "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _BeforeTorchvision())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeTorchvision)]
