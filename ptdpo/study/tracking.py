"""Per-item group accuracy over training: which groups that started all-fail became solvable.

Every training step samples G rollouts for each of its prompts; the group accuracy of an item is the
fraction of its G rollouts that are correct. ``GroupTracker.update(step, rollouts)`` records one row per
(step, item); ``solvable_stats`` compares each item's FIRST appearance with its LAST one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd


class GroupTracker:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def update(self, step: int, rollouts: Sequence[Any]) -> None:
        by_item: dict[int, list[float]] = defaultdict(list)
        ptd: dict[int, int] = defaultdict(int)
        for r in rollouts:
            by_item[int(r.item_index)].append(float(r.accuracy))
            ptd[int(r.item_index)] += int(bool(getattr(r, "ptd", False)))
        for idx, accs in by_item.items():
            self.rows.append({"step": int(step), "item_index": idx, "group_acc": sum(accs) / len(accs),
                              "n": len(accs), "ptd_rollouts": ptd[idx]})

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "item_index", "group_acc", "n", "ptd_rollouts"])


def solvable_stats(groups: pd.DataFrame) -> dict[str, float]:
    """Items seen at least twice: how many started all-fail, and what fraction of those had at least
    one correct rollout at their last appearance (``frac_all_fail_became_solvable``)."""
    if groups is None or len(groups) == 0:
        return {"items_seen_twice": 0, "initial_all_fail": 0, "became_solvable": 0,
                "frac_all_fail_became_solvable": float("nan"), "initial_all_fail_frac": float("nan")}
    g = groups.sort_values(["item_index", "step"])
    first = g.groupby("item_index").first()
    last = g.groupby("item_index").last()
    count = g.groupby("item_index").size()
    keep = count[count >= 2].index
    first, last = first.loc[keep], last.loc[keep]
    fail0 = first["group_acc"] == 0
    became = (last.loc[fail0[fail0].index, "group_acc"] > 0).sum() if fail0.any() else 0
    n_fail0 = int(fail0.sum())
    solved0 = first["group_acc"] > 0
    lost = (last.loc[solved0[solved0].index, "group_acc"] == 0).sum() if solved0.any() else 0
    return {
        "items_seen_twice": int(len(keep)),
        "initial_all_fail": n_fail0,
        "initial_all_fail_frac": n_fail0 / max(len(keep), 1),
        "became_solvable": int(became),
        "frac_all_fail_became_solvable": became / n_fail0 if n_fail0 else float("nan"),
        # the reverse: groups that had a correct rollout at first and none at the end
        "frac_solvable_became_all_fail": int(lost) / int(solved0.sum()) if solved0.any() else float("nan"),
    }
