"""Group-level bookkeeping on the rollouts of one step (METHOD.md 2.3, 2.4, 2.7): DAPO's dynamic sampling
(uniform groups leave the policy-gradient term, surplus groups are trimmed), advantages, the PTD mask and
the reference-KL mask, mini-batches by group, and the per-rollout statistics of the step.

Functions over lists of :class:`~ptdpo.rollout.records.Rollout`; the math is in ``ptdpo.objectives``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ptdpo.config import PTDConfig
from ptdpo.objectives import group_stats, ptd_mask, ref_kl_group_mask
from ptdpo.rollout.records import Rollout


def mark_uniform_groups(rollouts: list[Rollout]) -> int:
    """DAPO dynamic sampling: groups whose accuracies are all equal leave the PG term (``in_pg``).
    Returns the number of informative groups."""
    by_group: dict[int, list[Rollout]] = {}
    for r in rollouts:
        by_group.setdefault(r.group, []).append(r)
    kept = 0
    for rs in by_group.values():
        uniform = len({r.accuracy for r in rs}) == 1
        for r in rs:
            r.in_pg = not uniform
        kept += not uniform
    return kept


def trim_groups(rollouts: list[Rollout], keep: int) -> None:
    """Keep the first ``keep`` informative groups in the PG term; surplus informative groups leave it
    too. Uniform groups stay in the list: they can still feed PTD."""
    seen: list[int] = []
    for r in rollouts:
        if r.in_pg and r.group not in seen:
            seen.append(r.group)
    surplus = set(seen[keep:])
    for r in rollouts:
        if r.group in surplus:
            r.in_pg = False


def assign_advantages_and_masks(
    rollouts: list[Rollout],
    advantage_fn: Callable[..., torch.Tensor],
    has_teacher_context: Sequence[bool],
    ptd: PTDConfig,
    policy_gradient: bool = True,
) -> None:
    """Set each rollout's ``advantage`` (over its group), ``ptd`` (it gets the distillation term) and
    ``ref_kl`` (its reference KL stays on). ``has_teacher_context[i]``: rollout i's item has a usable
    teacher context (an audited hint, or a solution), the condition for PTD. ``policy_gradient`` false
    (OPSD): no rollout is in the policy-gradient term."""
    groups = torch.tensor([r.group for r in rollouts])
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
    adv = advantage_fn(rewards, groups)
    if ptd.selects_rollouts:
        pm = ptd_mask(
            torch.tensor([r.accuracy for r in rollouts]),
            groups,
            torch.tensor(list(has_teacher_context)),
            tau_ptd=ptd.tau_ptd,
            all_trajectories=ptd.ptd_all_trajectories,
            skip_truncated=ptd.ptd_skip_truncated,
            truncated=torch.tensor([r.truncated for r in rollouts]),
            select=ptd.select,
        )
    else:
        pm = torch.zeros(len(rollouts), dtype=torch.bool)
    kl_off = ref_kl_group_mask(pm, groups) if ptd.mask_ref_kl_on_ptd_groups else torch.zeros_like(pm)
    for i, r in enumerate(rollouts):
        r.advantage = float(adv[i])
        r.ptd = ptd.distills and bool(pm[i]) and (r.in_pg or ptd.ptd_on_filtered_groups)
        r.ref_kl = not bool(kl_off[i])
        r.in_pg = r.in_pg and policy_gradient


def minibatches(rollouts: list[Rollout], groups_per_minibatch: int) -> list[list[Rollout]]:
    """The rollouts cut into mini-batches of whole groups, in group-id order (at least one, maybe empty)."""
    groups = sorted({r.group for r in rollouts})
    out = []
    for i in range(0, max(len(groups), 1), groups_per_minibatch):
        chosen = set(groups[i : i + groups_per_minibatch])
        out.append([r for r in rollouts if r.group in chosen])
    return out


def rollout_stats(rollouts: list[Rollout]) -> dict[str, float]:
    """This rank's rollout statistics of the step (means over its rollouts; ``response_tokens`` a sum). The
    privileged rollouts of HDPO are not the policy's own samples: they are left out here (the collector
    reports them)."""
    rollouts = [r for r in rollouts if not r.privileged]
    acc = torch.tensor([r.accuracy for r in rollouts])
    gs = group_stats(acc, torch.tensor([r.group for r in rollouts]))
    lengths = torch.tensor([r.completion.numel() for r in rollouts], dtype=torch.float)
    ptd = torch.tensor([r.ptd for r in rollouts])
    n_ptd_tok = float(lengths[ptd].sum()) if ptd.any() else 0.0
    return {
        "reward": float(torch.tensor([r.reward for r in rollouts]).mean()),
        "accuracy": float(acc.mean()),
        "format": float(torch.tensor([r.format for r in rollouts]).mean()),
        "informative_groups": gs["frac_informative"],
        "all_fail_groups": gs["frac_all_fail"],
        "all_correct_groups": gs["frac_all_correct"],
        "ptd_rollout_frac": float(ptd.float().mean()),
        "ptd_token_frac": n_ptd_tok / max(float(lengths.sum()), 1.0),
        "response_length": float(lengths.mean()),
        "truncated_frac": float(torch.tensor([r.truncated for r in rollouts]).float().mean()),
        "pg_rollout_frac": float(torch.tensor([r.in_pg for r in rollouts]).float().mean()),
        "kl_masked_rollout_frac": float(torch.tensor([not r.ref_kl for r in rollouts]).float().mean()),
        "response_tokens": float(lengths.sum()),
    }
