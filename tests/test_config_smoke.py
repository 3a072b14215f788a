"""Every committed baseline, ablation and algorithm-variant config trains on the tiny model through ONE
overlay, ``configs/overlays/tiny-smoke.json`` (docs/reproduce.md): ``{"extends": [<config>,
"overlays/tiny-smoke.json"]}`` keeps the config's objective and swaps in the tiny model, synthetic data,
oracle hints and two steps. Each runs in-process (data, hints, ``run_training``) as the flow's steps do."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from ptdpo.run_config import load_config_dict, load_config_file, run_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SMOKE = "overlays/tiny-smoke.json"
SMOKED = sorted(
    p.relative_to(CONFIGS).as_posix()
    for pattern in ("baselines/*.json", "ablations/*.json", "qwen3vl-4b-*.json")
    for p in CONFIGS.glob(pattern)
)
# what a config under test is about: the overlay must leave these alone
OBJECTIVE = ("algorithm", "advantage", "clip_low", "clip_high", "dual_clip_c", "loss_agg", "kl_coef", "kl_estimator",
             "kl_direction", "kl_normalizer", "dynamic_sampling", "prompt_template", "ptd", "policy_gradient", "hdpo",
             "papo")


def smoke_config(name: str):
    return run_config_from_dict(load_config_dict(json.dumps({"extends": [name, SMOKE]})))


def test_the_overlay_keeps_each_objective_and_makes_it_tiny():
    assert len(SMOKED) >= 29 and "ablations/tau-0.2.json" in SMOKED and "baselines/qwen3vl-4b-dapo.json" in SMOKED
    assert {f"baselines/qwen3vl-{s}-{b}.json" for s in ("2b", "4b", "8b") for b in ("opsd", "hdpo", "papo")} <= set(SMOKED)
    for name in SMOKED:
        full, smoke = run_config_from_dict(load_config_file(CONFIGS / name)), smoke_config(name)
        for key in OBJECTIVE:
            assert getattr(smoke.train, key) == getattr(full.train, key), (name, key)
        assert (full.hints is None) == (smoke.hints is None) and (not full.hints or
                                                                   smoke.hints.structured == full.hints.structured)
        t = smoke.train
        assert (t.policy, t.max_steps, t.epochs, t.rollout_backend, t.sharding) == ("tiny:0.5m", 2, None, "hf", "none")
        assert smoke.data.train.format == "synthetic" and (smoke.hints is None or smoke.hints.generator["name"] == "oracle")
        assert not any(r.gpu for r in smoke.resources.values())


@pytest.mark.parametrize("name", SMOKED)
def test_config_trains_two_steps_on_the_tiny_model(name, tiny_policy, tmp_path):
    from ptdpo.data.loaders import load_items
    from steps.hints import generate_hints_shard
    from steps.train import hints_by_item, run_training

    rc = smoke_config(name)
    items = load_items(rc.data.train)
    hints = {}
    if rc.train.ptd.uses_hints:
        rows, _ = generate_hints_shard(items, rc.hints, tmp_path / "hint-cache", 0)
        hints = hints_by_item(rows)
        assert hints and all(h.kind == ("structured" if rc.hints.structured else "unstructured") for h in hints.values())
    model, processor = tiny_policy
    out = run_training(rc.train, items, hints, tmp_path / "out", progress=False,
                       policy=(copy.deepcopy(model), processor))
    m = out.metrics
    assert out.final_step == 2 and list(m["step"]) == [1, 2]
    for col in ("reward", "pg_loss", "ptd_loss", "kl_ref", "kl_ref_all", "grad_norm"):
        assert m[col].map(math.isfinite).all(), (name, col)
    # the random tiny policy fails its groups, so what the config does with failed groups shows
    distill = rc.train.distillation
    if distill is not None and distill.kind == "hdpo":
        # every group is a cliff: privileged rollouts are drawn; the random policy rarely gets one right, and
        # only the correct ones are distilled
        assert (m["hdpo_privileged_rollouts"] > 0).all() and (m["ptd_rollout_frac"] == 0).all(), name
        assert ((m["ptd_loss"] > 0) == (m["hdpo_kept_rollouts"] > 0)).all(), name
    elif distill is not None:
        assert (m["ptd_loss"] > 0).any() and (m["ptd_rollout_frac"] > 0).any(), name
    else:
        assert (m["ptd_loss"] == 0).all() and (m["ptd_rollout_frac"] == 0).all(), name
    if not rc.train.policy_gradient:  # OPSD: every rollout distilled, none in the policy gradient
        assert (m["pg_rollout_frac"] == 0).all() and (m["ptd_rollout_frac"] == 1).all() and (m["pg_loss"] == 0).all()
    if rc.train.papo.enabled:
        assert (m["papo_masked_patch_frac"] > 0).all() and m["perception_kl"].map(math.isfinite).all(), name
    if rc.train.ptd.selects_rollouts and rc.train.ptd.mask_ref_kl_on_ptd_groups and rc.train.kl_coef:
        assert (m["kl_masked_rollout_frac"] > 0).any(), name


def test_reproduce_md_points_at_committed_configs():
    """docs/reproduce.md (and docs/baselines.md) name only configs that exist, and name every baseline."""
    import re

    docs = {name: (ROOT / "docs" / name).read_text() for name in ("reproduce.md", "baselines.md")}
    for name, text in docs.items():
        named = set(re.findall(r"configs/[\w./-]+\.json", text))
        assert named and all((ROOT / p).is_file() for p in named), (name, sorted(p for p in named if not (ROOT / p).is_file()))
    in_table = set(re.findall(r"configs/[\w./-]+\.json", docs["reproduce.md"]))
    assert {f"configs/{p}" for p in SMOKED if p.startswith("baselines/qwen3vl")} <= in_table
