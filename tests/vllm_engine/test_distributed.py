"""Colocated vLLM engines on several ranks (torchrun, gloo, CPU): vLLM's ``external_launcher``, a
tensor-parallel group of 2 ranks driving one engine replica, and 2 ranks each with its own engine
training exactly like 1 process. (On GPUs, where each rank's engine must land on its own device, this
is unverified.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensor_parallel_2_over_2_ranks(policy_dir, engine_options, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
           str(Path(__file__).with_name("tp_worker.py")), policy_dir,
           json.dumps({**engine_options, "tensor_parallel_size": 2}), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["kwargs"]["distributed_executor_backend"] == "external_launcher"
        assert r["kwargs"]["tensor_parallel_size"] == 2 and r["tp_group"] == [0, 1]
        # each rank gets the completions of its own prompts, equal to the transformers engine's
        assert r["before"][0] == r["before"][1] and r["after"][0] == r["after"][1]
        assert r["after"][1] != r["before"][1]  # the sync took the updated weights
        assert r["group_alive"]
    assert len(ranks[0]["before"][0]) == 2 and len(ranks[1]["before"][0]) == 3


def _hints(items):
    from ptdpo.hints.schema import Hint, Region

    return {it.id: Hint(item_id=it.id, regions=[Region(bbox=[100, 100, 500, 500], label="shapes", why="count these")],
                        steps=["Look at every shape.", "Keep the ones the question asks about."], traps=[],
                        generator={"name": "test", "model": "none", "prompt_version": "0"}) for it in items}


def test_two_ranks_with_their_own_engines_train_like_one(engine_options, tmp_path):
    """Every rank samples its groups from its own colocated engine: per-request seeds make the rollouts
    those of one process, so the training is too."""
    from ptdpo.data.synthetic import generate_synthetic
    from ptdpo.models import load_policy
    from steps.train import launch_torchrun, run_training, write_job

    items = generate_synthetic(4, seed=2, families=["count_attr"], image_size=64)
    hints = _hints(items)
    train = dict(policy="tiny:1m", group_size=4, prompts_per_step=4, micro_batch_rollouts=8,
                 max_response_length=8, lr=1e-2, weight_decay=0.0, kl_coef=0.01, seed=5, max_steps=2,
                 ptd={"k": 8, "lambda_ptd": 1.0}, rollout_backend="vllm", vllm=engine_options)
    single = run_training(train, items, hints, tmp_path / "one", progress=False)
    double = launch_torchrun(write_job(tmp_path / "two", train, items, hints, resume_from=None), nproc=2,
                             master_port=_port())
    cols = ["reward", "ptd_loss", "ptd_rollout_frac", "response_length", "grad_norm", "kl_ref"]
    a, b = torch.tensor(single.metrics[cols].values), torch.tensor(double.metrics[cols].values)
    assert double.world_size == 2 and (a[:, cols.index("grad_norm")] > 0).all()
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    m0, m1, m2 = (load_policy(p)[0] for p in ("tiny:1m", str(single.model_dir), str(double.model_dir)))
    for (n, p0), (_, p1), (_, p2) in zip(m0.named_parameters(), m1.named_parameters(), m2.named_parameters()):
        d1, d2 = (p1 - p0).detach(), (p2 - p0).detach()
        assert float((d1 - d2).norm() / d1.norm().clamp(min=1e-12)) < 1e-3, n
