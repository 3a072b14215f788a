"""The PTD-PO trainer on the tiny Qwen3-VL: parameters move, the teacher sees the student's images,
distillation pulls the student toward the hinted teacher, resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.hints.schema import Hint, Region
from ptdpo.models.multimodal import select_prompts
from ptdpo.trainer import Trainer


def _items(n=4, seed=0):
    return generate_synthetic(n, seed=seed, families=["count_attr"], image_size=64)


def _hints(items):
    return {
        it.id: Hint(
            item_id=it.id,
            regions=[Region(bbox=[100, 100, 500, 500], label="shapes", why="the objects to inspect")],
            steps=["Look at every shape in the image.", "Keep only the ones the question asks about."],
            traps=["Do not count shapes of other colours."],
            generator={"name": "test", "model": "none", "prompt_version": "0"},
        )
        for it in items
    }


def _cfg(**kw) -> TrainConfig:
    ptd = kw.pop("ptd", {})
    base = dict(
        policy="tiny:0.5m", group_size=4, prompts_per_step=2, micro_batch_rollouts=4, max_response_length=12,
        lr=1e-2, weight_decay=0.0, kl_coef=0.0, seed=3,
    )
    base.update(kw)
    return TrainConfig(**base, ptd=PTDConfig(**{"k": 8, "lambda_ptd": 1.0, **ptd})).resolved()


def _parity_reward(texts, items):
    # A reward with variance inside groups, so the policy-gradient term is non-zero on a random model.
    return [(float(len(t) % 2 == 0), 1.0) for t in texts]


def _zero_reward(texts, items):
    return [(0.0, 0.0) for _ in texts]


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo"])
@pytest.mark.parametrize("with_ptd", [False, True])
def test_one_step_changes_every_parameter(tiny_policy, algorithm, with_ptd):
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items()
    cfg = _cfg(algorithm=algorithm, ptd={"enabled": with_ptd}, dynamic_sampling=False, overlong_buffer=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(cfg, model, processor, items, hints=_hints(items), reward_fn=_parity_reward)
    result = trainer.train_step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    # every tensor, the vision tower and the token embeddings included, must move
    assert not unchanged, f"{algorithm} ptd={with_ptd}: parameters did not change: {unchanged[:5]}"
    assert any(".visual." in f".{n}" for n in before)
    if with_ptd:
        assert result.metrics["ptd_rollout_frac"] > 0
        assert result.metrics["ptd_loss"] > 0
    else:
        assert result.metrics["ptd_rollout_frac"] == 0


def test_teacher_sees_same_pixels_and_completion(tiny_policy, monkeypatch):
    import ptdpo.trainer as trainer_mod

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items()
    calls = []
    real = trainer_mod.completion_hidden_states
    real_shared = trainer_mod.shared_prompt_hidden_states

    def recording(m, batch, ids, mask):
        calls.append((m, {k: v for k, v in batch.items() if torch.is_tensor(v)}, ids.clone(), mask.clone()))
        return real(m, batch, ids, mask)

    def recording_shared(m, batch, rows, ids, mask):  # no-gradient forwards run each distinct prompt once
        per_row = select_prompts(batch, rows)  # the batch as its rows see it
        calls.append((m, {k: v for k, v in per_row.items() if torch.is_tensor(v)}, ids.clone(), mask.clone()))
        return real_shared(m, batch, rows, ids, mask)

    monkeypatch.setattr(trainer_mod, "completion_hidden_states", recording)
    monkeypatch.setattr(trainer_mod, "shared_prompt_hidden_states", recording_shared)
    trainer = Trainer(_cfg(), model, processor, items, hints=_hints(items), reward_fn=_zero_reward)
    trainer.train_step()
    teacher_calls = [c for c in calls if c[0] is trainer.reference]
    student_calls = [c for c in calls if c[0] is model]
    assert teacher_calls and student_calls
    t_batch, t_ids, t_mask = teacher_calls[0][1:]
    s_batch, s_ids, s_mask = student_calls[0][1:]
    # the teacher's prompt is longer (hint block) but its images and completion tokens are the student's
    assert t_batch["input_ids"].shape[1] > s_batch["input_ids"].shape[1]
    assert torch.equal(t_batch["pixel_values"], s_batch["pixel_values"])
    assert torch.equal(t_batch["image_grid_thw"], s_batch["image_grid_thw"])
    assert torch.equal(t_ids, s_ids) and torch.equal(t_mask, s_mask)
    # attention covers real completion tokens only
    assert t_mask.sum() == sum(int(r) for r in t_mask.sum(1))


def _fixed_divergence(trainer, rollouts):
    """Mean Top-K JSD between the student (answer-free prompt) and the teacher (hint prompt) on a
    fixed set of rollouts."""
    from ptdpo.objectives import chunked_topk_jsd_loss
    from ptdpo.trainer import lm_head_weight

    with torch.no_grad():
        teacher_h, teacher_w = trainer.teacher_hidden_states(rollouts)
        h, ids, m = trainer._hidden(trainer.policy, rollouts)
        jsd = chunked_topk_jsd_loss(
            h[m], lm_head_weight(trainer.policy), teacher_hidden=teacher_h, teacher_weight=teacher_w, k=8,
        )
    return float(jsd.mean())


def test_distillation_pulls_student_toward_hinted_teacher(tiny_policy):
    """A random tiny model barely reacts to a hint in its prompt, so the teacher here is made sharper
    explicitly (its LM head scaled up): with every rollout failing, only the PTD term acts, and it
    must pull the student toward the teacher on the same completions."""
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(4.0)
    items = _items(2)
    cfg = _cfg(lr=3e-3)
    trainer = Trainer(
        cfg, model, processor, items, hints=_hints(items), reward_fn=_zero_reward, reference=teacher
    )
    probe = trainer.collect()
    assert all(r.ptd for r in probe)
    d0 = _fixed_divergence(trainer, probe)
    for _ in range(4):
        trainer.train_step()
    d1 = _fixed_divergence(trainer, probe)
    assert d1 < 0.8 * d0, (d0, d1)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, tiny_policy):
    from steps.train import InjectedFailure, run_training

    items = _items(6, seed=1)
    cfg = _cfg(max_steps=4, checkpoint_every=1, ptd={"lambda_ptd": 0.5}, kl_coef=0.01)
    hints = _hints(items)

    def fresh():
        return copy.deepcopy(tiny_policy[0]), tiny_policy[1]

    full = run_training(cfg, items, hints, tmp_path / "a", policy=fresh(), progress=False)
    with pytest.raises(InjectedFailure):
        run_training(cfg, items, hints, tmp_path / "b", policy=fresh(), fail_after_step=2, progress=False)
    resumed = run_training(cfg, items, hints, tmp_path / "b", policy=fresh(), progress=False)
    assert resumed.resumed_from_step == 2
    assert full.final_step == resumed.final_step == 4
    cols = ["reward", "pg_loss", "ptd_loss", "kl_ref", "grad_norm", "response_length"]
    cols = [c for c in cols if c in full.metrics]
    assert torch.allclose(torch.tensor(full.metrics[cols].values), torch.tensor(resumed.metrics[cols].values))
    from ptdpo.models import load_policy

    a, _ = load_policy(str(full.model_dir))
    b, _ = load_policy(str(resumed.model_dir))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.slow
def test_mean_reward_rises_after_warm_start(tiny_policy):
    """What it trains: the 0.5M tiny Qwen3-VL on synthetic counting questions (count_attr, answers 1-5).
    A 40-step supervised warm start teaches the <think>/<answer> format with RANDOM answers (so it
    teaches no counting); then GRPO with the paper's reward (0.9 accuracy + 0.1 format) must raise
    the mean reward: format compliance and the answer prior are both learnable from the reward."""
    import random

    from ptdpo.sft import format_target, sft_warm_start

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = generate_synthetic(48, seed=0, families=["count_attr"], image_size=64, difficulty=(1, 2))
    rng = random.Random(0)
    targets = [format_target("count", str(rng.randint(1, 5))) for _ in items]
    losses = sft_warm_start(model, processor, items, targets, steps=40, lr=3e-3, batch_size=8)
    assert losses[-1] < 0.5 * losses[0]
    cfg = TrainConfig(
        policy="tiny:0.5m", group_size=8, prompts_per_step=8, micro_batch_rollouts=32, max_response_length=16,
        lr=3e-3, weight_decay=0.0, kl_coef=0.0, seed=0, ptd=PTDConfig(enabled=False),
        prompt_template="answer_tags",  # the format the warm start teaches (sft.format_target)
    ).resolved()
    trainer = Trainer(cfg, model, processor, items)
    rewards = [trainer.train_step().metrics["reward"] for _ in range(24)]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    print(f"mean reward first 6 steps {first:.3f}, last 6 steps {last:.3f}: {rewards}")
    assert last > first + 0.08, rewards


def test_nonfinite_loss_skips_update_then_stops(tiny_policy):
    from ptdpo.trainer import TrainingError

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items()
    cfg = _cfg(ptd={"enabled": False}, max_nonfinite_in_row=2)
    trainer = Trainer(cfg, model, processor, items, reward_fn=_parity_reward)
    real = trainer.policy_loss_fn
    trainer.policy_loss_fn = lambda *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(real(*a, **k))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = trainer.train_step().metrics
    assert m["skipped_nonfinite"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(TrainingError, match="non-finite"):
        trainer.train_step()


def test_items_without_usable_hint_get_no_ptd(tiny_policy):
    from steps.train import hints_by_item

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items()
    all_hints = _hints(items)
    import pandas as pd

    # the audit rejected the first item's hint: it must train without PTD
    verdicts = pd.DataFrame(
        [{"item_id": it.id, "passed": i != 0, "has_hint": True} for i, it in enumerate(items)]
    )
    rows = [{"item_id": k, "status": "ok", "hint": h.to_dict()} for k, h in all_hints.items()]
    usable = hints_by_item(rows, verdicts)
    assert items[0].id not in usable and len(usable) == len(items) - 1
    cfg = _cfg(prompts_per_step=4)
    trainer = Trainer(cfg, model, processor, items, hints=usable, reward_fn=_zero_reward)
    rollouts = trainer.collect()
    by_item = {}
    for r in rollouts:
        by_item.setdefault(trainer.items[r.item_index].id, set()).add(r.ptd)
    assert by_item[items[0].id] == {False}
    assert all(v == {True} for k, v in by_item.items() if k != items[0].id)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_process_gloo_equals_one_process(tmp_path, tiny_policy, sharding):
    """The same global batch on 2 CPU processes (gloo; replicas or FSDP2) and on 1 process gives the
    same training."""
    from ptdpo.models import load_policy
    from steps.train import launch_torchrun, run_training, write_job

    items = _items(4, seed=2)
    hints = _hints(items)
    train = dict(policy="tiny:0.5m", group_size=4, prompts_per_step=4, micro_batch_rollouts=4,
                 max_response_length=10, lr=1e-2, weight_decay=0.0, kl_coef=0.01, seed=5, max_steps=2,
                 ptd={"k": 8, "lambda_ptd": 1.0})
    single = run_training(train, items, hints, tmp_path / "one", progress=False)
    workdir = write_job(tmp_path / "two", {**train, "sharding": sharding}, items, hints, resume_from=None)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    double = launch_torchrun(workdir, nproc=2, master_port=port)
    cols = ["reward", "ptd_loss", "ptd_rollout_frac", "response_length", "grad_norm"]
    a = torch.tensor(single.metrics[cols].values)
    b = torch.tensor(double.metrics[cols].values)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    # Compare the weight UPDATES: Adam divides by sqrt(v), which turns float-rounding differences of
    # near-zero gradients (a different summation order across ranks) into visible per-element
    # differences, so elementwise closeness of the weights is the wrong yardstick.
    m0, _ = load_policy("tiny:0.5m")
    m1, _ = load_policy(str(single.model_dir))
    m2, _ = load_policy(str(double.model_dir))
    worst = 0.0
    for (n, p0), (_, p1), (_, p2) in zip(m0.named_parameters(), m1.named_parameters(), m2.named_parameters()):
        d1, d2 = p1 - p0, p2 - p0
        rel = float((d1 - d2).detach().norm() / d1.detach().norm().clamp(min=1e-12))
        worst = max(worst, rel)
        assert rel < 1e-3, (n, rel)
    print(f"largest relative difference of a parameter update, 2 ranks vs 1: {worst:.2e}")


@pytest.mark.parametrize("mask_only", [False, True])
def test_kl_masking_with_and_without_distillation(tiny_policy, mask_only):
    """mask_ref_kl_on_ptd_groups switches the reference KL off on PTD groups; the mask_only ablation
    does that too but distils nothing (METHOD.md 2.7)."""
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items()
    cfg = _cfg(kl_coef=0.01, ptd={"mask_only": mask_only})
    trainer = Trainer(cfg, model, processor, items, hints=_hints(items), reward_fn=_zero_reward)
    rollouts = trainer.collect()
    assert not any(r.ref_kl for r in rollouts)  # every group fails: all would get PTD
    assert all(r.ptd for r in rollouts) != mask_only
    assert cfg.ptd.distills != mask_only


def test_epochs_set_the_step_count_and_long_prompts_are_named(tiny_policy):
    from ptdpo.data.schema import ItemError

    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items(6)
    trainer = Trainer(_cfg(epochs=2.0, ptd={"enabled": False}), model, processor, items, reward_fn=_zero_reward)
    assert trainer.total_steps == 6  # 2 epochs x 6 items / 2 prompts per step
    short = Trainer(_cfg(max_prompt_length=8, ptd={"enabled": False}), model, processor, items, reward_fn=_zero_reward)
    with pytest.raises(ItemError, match="max_prompt_length"):
        short.train_step()
