"""The baselines' mechanisms on the tiny Qwen3-VL (docs/baselines.md): OPSD distils every rollout with a
context and has no policy-gradient contribution; HDPO distils only cliff prompts, from correct privileged
rollouts; PAPO's second forward sees masked pixels and the same tokens; the config refuses combinations
that would silently mean something else."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.config import ConfigError, HDPOConfig, PAPOConfig, PTDConfig, TrainConfig
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.metrics import BY_NAME
from ptdpo.trainer import Trainer

BASE = dict(policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=4, max_response_length=8,
            lr=1e-2, weight_decay=0.0, kl_coef=0.0, seed=3)


def _items(n=2):
    return generate_synthetic(n, seed=0, families=["count_attr"], image_size=64)


def _odd_chars(texts, items):
    return [(float(sum(map(ord, t)) % 2), 1.0) for t in texts]


def _opsd(**kw) -> TrainConfig:
    return TrainConfig(**BASE, policy_gradient=False,
                       ptd=PTDConfig(lambda_ptd=1.0, select="all", support="full", teacher_context="answer"), **kw
                       ).resolved()


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_opsd_distils_every_rollout_and_the_reward_changes_nothing(tiny_policy):
    """OPSD: every rollout (correct or not) is distilled toward the answer-conditioned frozen reference; no
    rollout is in the policy gradient, so the same step under another reward moves the weights identically."""
    model, processor = tiny_policy
    items = _items()
    after, accuracies = [], []
    for reward in (_odd_chars, lambda texts, its: [(0.0, 0.0)] * len(texts)):
        trainer = Trainer(_opsd(), copy.deepcopy(model), processor, items, reward_fn=reward)
        result = trainer.train_step()
        assert all(r.ptd and not r.in_pg for r in result.rollouts)
        accuracies.append({r.accuracy for r in result.rollouts})
        m = result.metrics
        assert m["ptd_rollout_frac"] == 1.0 and m["pg_rollout_frac"] == 0.0 and m["pg_loss"] == 0.0
        assert m["ptd_loss"] > 0 and set(m) <= set(BY_NAME)
        after.append(_params(trainer.policy))
    assert accuracies == [{0.0, 1.0}, {0.0}]  # correct rollouts are distilled too, unlike PTD's rule
    assert torch.equal(after[0], after[1])
    assert not torch.equal(after[0], _params(model))


def test_opsd_teacher_is_the_frozen_reference_on_the_answer_prompt(tiny_policy):
    model, processor = tiny_policy
    items = _items()
    trainer = Trainer(_opsd(), copy.deepcopy(model), processor, items, reward_fn=_odd_chars)
    rs = trainer.collect()
    prompts = trainer._teacher_prompts(rs[:1])
    text = processor.tokenizer.decode(prompts[0].input_ids)
    assert "Reference answer:" in text and items[rs[0].item_index].answer in text
    assert trainer.reference is not None and trainer.distill.teacher == "ref"


def _hdpo_trainer(tiny_policy, max_kept=None):
    """Item 0's group always fails (a cliff), item 1's is mixed; privileged rollouts are correct when their
    text has an odd character sum."""
    model, processor = tiny_policy
    items = _items()
    calls = []

    def reward(texts, its):
        calls.append(len(texts))
        if len(calls) % 2 == 1:  # the student rollouts of the step
            return [(0.0 if it.id == items[0].id else float(i % 2), 1.0) for i, it in enumerate(its)]
        return _odd_chars(texts, its)  # the privileged round

    cfg = TrainConfig(**BASE, ptd=PTDConfig(enabled=False),
                      hdpo=HDPOConfig(enabled=True, num_samples=6, max_kept_per_prompt=max_kept)).resolved()
    return Trainer(cfg, copy.deepcopy(model), processor, items, reward_fn=reward), items, calls


def test_hdpo_distils_only_cliff_prompts_from_correct_privileged_rollouts(tiny_policy):
    trainer, items, calls = _hdpo_trainer(tiny_policy)
    rollouts = trainer.collect()
    assert calls == [8, 6]  # the step's 2 x 4 rollouts, then 6 privileged ones for the one cliff group
    students = [r for r in rollouts if not r.privileged]
    kept = [r for r in rollouts if r.privileged]
    cliff_group = {r.group for r in students if trainer.items[r.item_index].id == items[0].id}
    assert len(students) == 8 and not any(r.ptd for r in students)
    odd = trainer._collect_counts["hdpo_privileged_correct"]
    assert trainer._collect_counts["hdpo_privileged_rollouts"] == 6 and len(kept) == odd > 0
    for r in kept:
        assert r.group in cliff_group and r.accuracy == 1.0 and r.ptd and not r.in_pg
        # the student is scored on the privileged tokens WITH THE ANSWER-FREE PROMPT
        twin = next(s for s in students if s.group == r.group)
        assert torch.equal(r.prompt.input_ids, twin.prompt.input_ids)
    teacher = trainer.processor.tokenizer.decode(trainer._teacher_prompts(kept[:1])[0].input_ids)
    assert "Reference answer:" in teacher and items[0].answer in teacher


def test_hdpo_step_trains_on_the_kept_rollouts_only(tiny_policy):
    trainer, _, _ = _hdpo_trainer(tiny_policy, max_kept=1)
    m = trainer.train_step().metrics
    assert m["hdpo_cliff_groups"] == 1 and m["hdpo_privileged_rollouts"] == 6 and m["hdpo_kept_rollouts"] == 1
    assert 0 < m["hdpo_privileged_accuracy"] <= 1 and m["ptd_loss"] > 0
    assert set(m) <= set(BY_NAME), set(m) - set(BY_NAME)  # every row registered (ptdpo.metrics)
    # the step's own statistics describe the student's 8 rollouts only
    assert m["response_tokens"] <= 8 * 8 and m["ptd_rollout_frac"] == 0.0 and m["all_fail_groups"] == 0.5


def test_papo_masked_forward_sees_masked_pixels_and_the_same_tokens(tiny_policy, monkeypatch):
    import ptdpo.trainer as trainer_mod

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    calls = []
    real = trainer_mod.completion_hidden_states

    def recording(m, batch, ids, mask):
        calls.append((m, {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}, ids.clone(), mask.clone(),
                      torch.is_grad_enabled()))
        return real(m, batch, ids, mask)

    monkeypatch.setattr(trainer_mod, "completion_hidden_states", recording)
    cfg = TrainConfig(**BASE, ptd=PTDConfig(enabled=False), papo=PAPOConfig(enabled=True)).resolved()
    trainer = Trainer(cfg, model, processor, _items(), reward_fn=_odd_chars)
    m = trainer.train_step().metrics
    policy_calls = [c for c in calls if c[0] is model and c[4]]  # the update's forwards, with gradient
    assert len(policy_calls) == 4  # 8 rollouts in micro-batches of 4: original, then masked, for each
    for (_, orig, ids_o, mask_o, _), (_, masked, ids_m, mask_m, _) in zip(policy_calls[::2], policy_calls[1::2]):
        for key in ("input_ids", "attention_mask", "image_grid_thw", "mm_token_type_ids"):
            if key in orig:
                assert torch.equal(orig[key], masked[key]), key
        assert torch.equal(ids_o, ids_m) and torch.equal(mask_o, mask_m)
        changed = (orig["pixel_values"] != masked["pixel_values"]).any(-1)
        assert 0 < changed.float().mean() < 1
        assert (masked["pixel_values"][changed] == -1.0).all()  # blacked out, every channel
        assert torch.equal(orig["pixel_values"][~changed], masked["pixel_values"][~changed])
    assert 0 < m["papo_masked_patch_frac"] < 1 and m["perception_kl"] >= 0
    assert m["papo_entropy"] > 0 and m["papo_masked_entropy"] > 0
    assert set(m) <= set(BY_NAME), set(m) - set(BY_NAME)


def test_papo_masked_gradient_option_reaches_the_update(tiny_policy):
    model, processor = tiny_policy

    def after(**papo):
        cfg = TrainConfig(**BASE, ptd=PTDConfig(enabled=False),
                          papo=PAPOConfig(enabled=True, gamma=0.0, entropy_coef=0.0, **papo)).resolved()
        trainer = Trainer(cfg, copy.deepcopy(model), processor, _items(), reward_fn=_odd_chars)
        trainer.train_step()
        return _params(trainer.policy)

    # with gamma = eta_1 = 0 only eta_2 acts, and it acts only through the masked branch's gradient
    assert torch.equal(after(masked_entropy_coef=0.5, masked_gradient=False), after(masked_entropy_coef=0.0))
    assert not torch.equal(after(masked_entropy_coef=0.5, masked_gradient=True), after(masked_entropy_coef=0.0))


@pytest.mark.parametrize("train, key", [
    ({"hdpo": {"enabled": True}}, "train.hdpo.enabled"),  # PTD is on by default: two distillation terms
    ({"policy_gradient": False, "ptd": {"enabled": False}, "kl_coef": 0.0}, "train.policy_gradient"),
    ({"policy_gradient": False, "papo": {"enabled": True}, "kl_coef": 0.0}, "train.papo.enabled"),
    ({"policy_gradient": False, "kl_coef": 0.01}, "train.kl_coef"),
    ({"ptd": {"select": "every"}}, "train.ptd.select"),
    ({"papo": {"mask_ratio": 1.0}}, "train.papo.mask_ratio"),
    ({"hdpo": {"context": "hint"}}, "train.hdpo.context"),
])
def test_baseline_options_that_cannot_work_are_named(train, key):
    from ptdpo.config import train_config_from_dict

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_config_from_dict(train)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["opsd", "papo"])
def test_baseline_on_two_fsdp_processes_equals_one_process(tmp_path, baseline):
    """The baselines' extra passes keep FSDP's ranks in lock-step (PAPO's masked forward, OPSD's
    full-vocabulary backward that re-reads the frozen teacher's LM head), and 2 gloo ranks train as 1
    process does."""
    import socket

    from steps.train import launch_torchrun, run_training, write_job

    items = generate_synthetic(4, seed=2, families=["count_attr"], image_size=64)
    base = dict(BASE, prompts_per_step=4, micro_batch_rollouts=3, seed=5, max_steps=2)
    train = {
        "opsd": dict(base, policy_gradient=False, group_size=1,
                     ptd={"lambda_ptd": 1.0, "select": "all", "support": "full", "teacher_context": "answer"}),
        "papo": dict(base, kl_coef=0.01, ptd={"enabled": False}, papo={"enabled": True, "gamma": 0.05}),
    }[baseline]
    single = run_training(train, items, {}, tmp_path / "one", progress=False)
    workdir = write_job(tmp_path / "two", {**train, "sharding": "fsdp"}, items, {}, resume_from=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    double = launch_torchrun(workdir, nproc=2, master_port=port)
    cols = ["reward", "pg_loss", "ptd_loss", "grad_norm"] + (["perception_kl"] if baseline == "papo" else [])
    a, b = torch.tensor(single.metrics[cols].values), torch.tensor(double.metrics[cols].values)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (cols, a, b)
    assert (a[:, cols.index("grad_norm")] > 0).all()


HDPO_RANKS = '''
import copy, json, os, sys
import torch
from ptdpo import distributed as dist_utils
from ptdpo.collectives import init_from_env
from ptdpo.config import HDPOConfig, PTDConfig, TrainConfig
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.models.tiny import build_tiny_qwen3vl
from ptdpo.trainer import Trainer

torch.set_num_threads(1)
info = init_from_env("gloo")
model, processor = build_tiny_qwen3vl("0.5m", seed=0)
items = generate_synthetic(4, seed=2, families=["count_attr"], image_size=64)
cfg = TrainConfig(policy="tiny:0.5m", group_size=4, prompts_per_step=4, micro_batch_rollouts=3, max_response_length=8,
                  lr=1e-2, weight_decay=0.0, kl_coef=0.0, seed=5, sharding="fsdp", ptd=PTDConfig(enabled=False),
                  hdpo=HDPOConfig(enabled=True, num_samples=5, teacher=sys.argv[1])).resolved()
calls = []


def reward(texts, its):
    calls.append(1)
    if len(calls) % 2 == 1 or info.rank == 1:  # rank 0's first group is a cliff; rank 1 has none
        return [(0.0 if info.rank == 0 and it.id == its[0].id else float(i % 2), 1.0) for i, it in enumerate(its)]
    return [(float(sum(map(ord, t)) % 2), 1.0) for t in texts]


policy = dist_utils.shard_model(copy.deepcopy(model), "fsdp", "fp32")
reference = None
if cfg.needs_reference:
    reference = dist_utils.shard_model(copy.deepcopy(model).requires_grad_(False), "fsdp", "fp32")
trainer = Trainer(cfg, policy, processor, items, reward_fn=reward, reference=reference)
rows = [trainer.train_step().metrics for _ in range(2)]
if info.rank == 0:
    print("METRICS " + json.dumps(rows))
dist_utils.barrier()
sys.stdout.flush()
os._exit(0)  # skip the interpreter's teardown, where gloo's threads now and then abort a finished rank
'''


@pytest.mark.slow
def test_hdpo_on_fsdp_ranks_with_and_without_cliff_groups(tmp_path):
    """One rank has a cliff group, the other none: the privileged generate round is padded on the idle rank,
    and the ranks' different numbers of micro-batches are padded with passes that give every parameter (the
    LM head included) a gradient, so FSDP's reduce-scatters match."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "hdpo_ranks.py"
    script.write_text(HDPO_RANKS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          str(script), "old_policy"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("METRICS "))[8:])
    for m in rows:
        assert m["hdpo_cliff_groups"] == 1 and m["hdpo_privileged_rollouts"] == 5 and m["grad_norm"] > 0
    assert sum(m["hdpo_kept_rollouts"] for m in rows) > 0 and any(m["ptd_loss"] > 0 for m in rows)
