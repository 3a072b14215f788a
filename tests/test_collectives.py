"""Collectives on the device their backend serves: an NCCL-only group refuses CPU tensors on the cluster
("No backend type associated with device type cpu"), which the CPU/gloo tests never see, so ptdpo's rule
is explicit (ptdpo.collectives) and tested here; and no other module issues a collective itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ptdpo import collectives
from ptdpo.collectives import CollectiveDeviceError, check_collective_devices, parse_backend_config

ROOT = Path(__file__).resolve().parents[1]


def test_backend_config_maps_device_types_to_backends():
    assert parse_backend_config("cpu:gloo,cuda:nccl") == {"cpu": "gloo", "cuda": "nccl"}
    assert parse_backend_config("nccl") == {"cuda": "nccl"}
    assert parse_backend_config("gloo") == {"cpu": "gloo", "cuda": "gloo"}
    assert parse_backend_config("cuda:nccl") == {"cuda": "nccl"}
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backend_config("carrier-pigeon")


def test_a_cpu_tensor_for_an_nccl_only_group_is_refused():
    nccl_only = parse_backend_config("cuda:nccl")
    with pytest.raises(CollectiveDeviceError, match="none for 'cpu'"):
        check_collective_devices("all_reduce", [torch.ones(1)], nccl_only)
    check_collective_devices("all_reduce", [torch.ones(1)], parse_backend_config("cpu:gloo,cuda:nccl"))
    meta = torch.empty(1, device="meta")  # any device type without a backend
    with pytest.raises(CollectiveDeviceError):
        check_collective_devices("broadcast", [meta], parse_backend_config("cpu:gloo,cuda:nccl"))


def test_the_wrappers_check_before_communicating(monkeypatch):
    """all_reduce / broadcast refuse a wrong-device tensor before torch.distributed is reached."""
    monkeypatch.setattr(collectives, "backend_devices", lambda group=None: {"cuda": "nccl"})

    def reached(*a, **k):
        raise AssertionError("torch.distributed was called with a tensor its backend cannot take")

    monkeypatch.setattr(collectives.dist, "all_reduce", reached)
    monkeypatch.setattr(collectives.dist, "broadcast", reached)
    with pytest.raises(CollectiveDeviceError):
        collectives.all_reduce(torch.ones(1))
    with pytest.raises(CollectiveDeviceError):
        collectives.broadcast(torch.ones(1), src=0)


def test_scalar_helpers_build_their_tensor_where_the_backend_needs_it(monkeypatch):
    """all_sum under cpu:gloo,cuda:nccl on a GPU machine uses a CUDA tensor; under NCCL alone on a machine
    without CUDA it cannot work and says so instead of handing NCCL a CPU tensor."""
    monkeypatch.setattr(collectives, "backend_devices", lambda group=None: {"cpu": "gloo", "cuda": "nccl"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collectives.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert collectives.collective_device() == torch.device("cpu")
    seen = []
    monkeypatch.setattr(collectives, "is_distributed", lambda: True)
    monkeypatch.setattr(collectives.dist, "all_reduce", lambda t, op=None, group=None: seen.append(t.device))
    assert collectives.all_sum(2.5) == 2.5 and seen == [torch.device("cpu")]
    monkeypatch.setattr(collectives, "backend_devices", lambda group=None: {"cuda": "nccl"})
    with pytest.raises(CollectiveDeviceError, match="no usable device"):
        collectives.all_sum(1.0)


# Tensor collectives. The object ones (all_gather_object, broadcast_object_list...) are left out: torch
# pickles into tensors it places itself on the device the group's backend needs.
_COLLECTIVES = {
    "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
    "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "barrier", "send", "recv", "isend", "irecv",
}


def test_no_module_but_ptdpo_collectives_issues_a_collective():
    """Every tensor collective of the code base goes through the checked wrappers."""
    offenders = []
    for path in [*ROOT.glob("ptdpo/**/*.py"), *ROOT.glob("steps/*.py"), *ROOT.glob("flows/*.py")]:
        if path == ROOT / "ptdpo" / "collectives.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = {"torch.distributed"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name == "torch.distributed"}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
                offenders += [f"{path.relative_to(ROOT)}: imports {a.name}" for a in node.names if a.name in _COLLECTIVES]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _COLLECTIVES:
                owner = ast.unparse(node.func.value)
                if owner in aliases:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.{node.func.attr}")
    assert not offenders, offenders
