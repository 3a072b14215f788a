"""Which rollouts get the PTD (distillation) term, and group-level statistics (METHOD.md 2.4, 2.7).

All functions take per-rollout tensors [B] and arbitrary integer group ids [B] (one group per
prompt, possibly of different sizes) and are vectorised with index_add.
"""

from __future__ import annotations

import torch

from ptdpo.objectives.policy import group_index

# Which rollouts the distillation term selects: PTD's rule (failed rollouts of groups below tau_ptd), or
# every rollout whose item has the teacher context (OPSD: the released code's enable_opsd).
SELECT_RULES = ("tau", "all")


def _as_bool(x, name: str, size: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.shape != (size,):
        raise ValueError(f"{name} must be [B]={size}, got shape {tuple(x.shape)}")
    return x.bool()


def _per_group(values: torch.Tensor, idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = torch.zeros(n_groups, dtype=torch.float64, device=values.device)
    return out.index_add_(0, idx, values.to(torch.float64))


def ptd_mask(
    accuracy: torch.Tensor,
    group_ids: torch.Tensor,
    has_hint: torch.Tensor,
    tau_ptd: float = 1.0,
    all_trajectories: bool = False,
    skip_truncated: bool = False,
    truncated: torch.Tensor | None = None,
    select: str = "tau",
) -> torch.Tensor:
    """Boolean [B]: rollouts that receive the PTD term.

    ``select="tau"`` (PTD): for each group g, group_acc = #{accuracy_i = 1} / G_g. If group_acc < tau_ptd,
    every rollout of g with accuracy_i < 1 is a PTD rollout (every rollout of g if
    ``all_trajectories``). With tau_ptd = 1.0 (paper): every failed rollout of every group that is not
    all-correct. ``select="all"`` (OPSD): every rollout, whatever its group's accuracy or its own
    (``tau_ptd`` and ``all_trajectories`` unused). Either way rollouts without a (passing) hint never get
    PTD, and truncated rollouts are excluded when ``skip_truncated``.
    """
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {select!r}")
    accuracy = torch.as_tensor(accuracy)
    if accuracy.dim() != 1:
        raise ValueError(f"accuracy must be 1-D [B], got shape {tuple(accuracy.shape)}")
    size = accuracy.shape[0]
    idx, n_groups = group_index(group_ids)
    if idx.shape != (size,):
        raise ValueError(f"group_ids must be [B]={size}, got shape {tuple(idx.shape)}")
    idx = idx.to(accuracy.device)
    has_hint = _as_bool(has_hint, "has_hint", size).to(accuracy.device)
    correct = accuracy >= 1.0
    group_acc = _per_group(correct, idx, n_groups) / _per_group(torch.ones_like(correct), idx, n_groups)
    if select == "all":
        mask = has_hint.clone()
    else:
        mask = (group_acc < tau_ptd)[idx] & has_hint
        if not all_trajectories:
            mask &= ~correct
    if skip_truncated:
        if truncated is None:
            raise ValueError("skip_truncated=True needs the truncated [B] flags")
        mask &= ~_as_bool(truncated, "truncated", size).to(accuracy.device)
    return mask


def ref_kl_group_mask(ptd: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B]: True for every rollout whose group contains at least one PTD rollout.

    With ``mask_ref_kl_on_ptd_groups`` the trainer switches the KL-to-reference term off for
    these rollouts (as the released code does).
    """
    ptd = torch.as_tensor(ptd).bool()
    idx, n_groups = group_index(group_ids)
    if idx.shape != ptd.shape:
        raise ValueError(f"ptd mask {tuple(ptd.shape)} and group_ids {tuple(idx.shape)} differ in shape")
    idx = idx.to(ptd.device)
    return (_per_group(ptd, idx, n_groups) > 0)[idx]


def cliff_mask(accuracy: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B]: the rollout's group is a "cliff" group (HDPO, arXiv 2603.23871): every rollout of the
    group failed (accuracy < 1), so the group-relative advantages, and with them the RL gradient, are zero."""
    accuracy = torch.as_tensor(accuracy)
    idx, n_groups = group_index(group_ids)
    if idx.shape != accuracy.shape:
        raise ValueError(f"accuracy {tuple(accuracy.shape)} and group_ids {tuple(idx.shape)} differ in shape")
    idx = idx.to(accuracy.device)
    return (_per_group(accuracy >= 1.0, idx, n_groups) == 0)[idx]


def group_stats(accuracy: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """Fractions of groups that are informative (mixed accuracy), all-fail and all-correct.

    Returns Python floats: ``frac_informative``, ``frac_all_fail``, ``frac_all_correct`` (they
    sum to 1) and ``num_groups``. Empty input gives zeros.
    """
    accuracy = torch.as_tensor(accuracy)
    idx, n_groups = group_index(group_ids)
    if idx.shape != accuracy.shape:
        raise ValueError(f"accuracy {tuple(accuracy.shape)} and group_ids {tuple(idx.shape)} differ in shape")
    if n_groups == 0:
        return {"frac_informative": 0.0, "frac_all_fail": 0.0, "frac_all_correct": 0.0, "num_groups": 0.0}
    idx = idx.to(accuracy.device)
    correct = accuracy >= 1.0
    n_correct = _per_group(correct, idx, n_groups)
    size = _per_group(torch.ones_like(correct), idx, n_groups)
    all_correct = float((n_correct == size).sum()) / n_groups
    all_fail = float((n_correct == 0).sum()) / n_groups
    return {
        "frac_informative": 1.0 - all_correct - all_fail,
        "frac_all_fail": all_fail,
        "frac_all_correct": all_correct,
        "num_groups": float(n_groups),
    }
