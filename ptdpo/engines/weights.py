"""The policy's weights as a vLLM engine loads them: checkpoint names, full tensors, one at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Wrapper prefixes that FSDP, activation checkpointing, DDP and torch.compile add to parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.", "_orig_mod.")


def hf_weight_name(name: str) -> str:
    """A parameter name as a Hugging Face checkpoint spells it (what vLLM's loaders expect)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def iter_policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) of every entry of the policy's state dict. FSDP2 DTensors are
    gathered one at a time (``full_tensor()``, a collective every rank runs in the same order), so the
    extra memory at any moment is one parameter, not the model."""
    for name, param in model.state_dict().items():
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
        yield hf_weight_name(name), tensor.detach()
