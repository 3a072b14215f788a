"""The study config: one base model, one dataset, several arms x several seeds.

``configs/study.json`` (keys)::

    {"name": ..., "data": DataSpec fields, "n_train": 64, "n_eval": 128,
     "base": WarmStartSpec fields,
     "train": TrainConfig fields shared by every arm,
     "arms": {"grpo": {"hints": null, "train": {...overrides...}}, ...},
     "seeds": [0, 1, 2],
     "eval": {"max_new_tokens": 16, "k": 4, "temperature": 1.0},
     "kl_sweep": ptdpo.study.kl_sweep (optional)}

An arm's ``train`` is merged into the shared ``train`` (objects recursively, like a JSON merge patch);
its ``hints`` says which hints the trainer gets (``ptdpo.study.hint_modes``): ``"structured"`` (the audited
oracle hints), ``"unstructured"`` (the same hints as one paragraph), ``"shuffled"`` (the structured hints
moved across items: the control without privileged information) or ``null`` (none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptdpo.config import merge_patch, train_config_from_dict
from ptdpo.study.hint_modes import HINT_KINDS
from ptdpo.study.kl_sweep import SWEEP_ARM, check_kl_sweep

STUDY_KEYS = {"name", "description", "data", "n_train", "n_eval", "base", "train", "arms", "seeds", "eval", "notes",
              "kl_sweep"}


class StudyConfigError(ValueError):
    pass


merge = merge_patch


def load_study_config(path: str | Path) -> dict[str, Any]:
    cfg = json.loads(Path(path).read_text())
    check_study_config(cfg)
    return cfg


def arm_train_config(cfg: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """The full ``train`` dict of one branch (shared train + the arm's overrides + the seed)."""
    spec = cfg["arms"][arm] or {}
    train = merge(cfg.get("train", {}), spec.get("train", {}))
    train["seed"] = int(seed)
    return train


def branches(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase 1 of the study: one foreach branch per (arm, seed), arms in config order, except the arm whose
    KL coefficient the ``kl_sweep`` chooses; then one branch per swept coefficient (arm label
    ``kl_sweep``, the sweep's seed, ``kl_coef`` set)."""
    sweep = cfg.get("kl_sweep") or {}
    out = []
    for arm, spec in cfg["arms"].items():
        if arm == sweep.get("arm"):
            continue
        for seed in cfg["seeds"]:
            out.append({"arm": arm, "seed": int(seed), "hints": (spec or {}).get("hints"),
                        "train": arm_train_config(cfg, arm, seed)})
    if sweep:
        seed = int(sweep.get("seed", 0))
        spec = cfg["arms"][sweep["arm"]] or {}
        for coef in sweep["coefs"]:
            train = merge(arm_train_config(cfg, sweep["arm"], seed), {"kl_coef": float(coef)})
            out.append({"arm": SWEEP_ARM, "seed": seed, "hints": spec.get("hints"), "kl_coef": float(coef),
                        "train": train})
    return out


def matched_branches(cfg: dict[str, Any], kl_coef: float | None) -> list[dict[str, Any]]:
    """Phase 2: the ``kl_sweep`` arm over every seed with the chosen ``kl_coef`` (nothing without a sweep)."""
    sweep = cfg.get("kl_sweep") or {}
    if not sweep or kl_coef is None:
        return []
    spec = cfg["arms"][sweep["arm"]] or {}
    return [{"arm": sweep["arm"], "seed": int(seed), "hints": spec.get("hints"), "kl_coef": float(kl_coef),
             "train": merge(arm_train_config(cfg, sweep["arm"], seed), {"kl_coef": float(kl_coef)})}
            for seed in cfg["seeds"]]


def check_study_config(cfg: dict[str, Any]) -> None:
    """Every problem at once: unknown keys, empty arms/seeds, bad hint kinds, and each branch's
    training config through ``TrainConfig`` (so a typo such as ``lamda_ptd`` stops the run)."""
    problems = []
    unknown = sorted(set(cfg) - STUDY_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; known: {sorted(STUDY_KEYS)}")
    if not cfg.get("arms"):
        problems.append("arms: at least one arm is needed")
    if not cfg.get("seeds"):
        problems.append("seeds: at least one seed is needed")
    for arm, spec in (cfg.get("arms") or {}).items():
        spec = spec or {}
        extra = sorted(set(spec) - {"hints", "train", "description"})
        if extra:
            problems.append(f"arms.{arm}: unknown key(s) {extra}")
        if spec.get("hints") not in HINT_KINDS:
            problems.append(f"arms.{arm}.hints: {spec.get('hints')!r} is not one of {HINT_KINDS}")
        try:
            tc = train_config_from_dict(arm_train_config(cfg, arm, 0), where=f"arms.{arm}.train")
        except Exception as e:  # noqa: BLE001 - collect them all
            problems.append(str(e))
            continue
        if tc.ptd.uses_hints and not spec.get("hints"):
            problems.append(f"arms.{arm}: PTD with teacher_context 'hint' needs hints (set arms.{arm}.hints)")
    problems.extend(check_kl_sweep(cfg))
    if problems:
        raise StudyConfigError("study config:\n- " + "\n- ".join(problems))


def parse_study_config(text: str) -> dict[str, Any]:
    """The ``parser`` of the study flow's ``Config``: JSON, checked (every problem at once)."""
    cfg = json.loads(text)
    check_study_config(cfg)
    return cfg
