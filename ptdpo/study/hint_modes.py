"""Which hints an arm's trainer gets (the arm's ``hints`` key):

- ``"structured"``: the audited oracle hints;
- ``"unstructured"``: the same hints as one paragraph (``to_unstructured``);
- ``"shuffled"``: the structured hints moved across items by a derangement (item i gets the hint of
  another item j, its ``item_id`` rewritten): the same teacher, the same prompt length and the same
  pull toward a hinted reference on the same rollouts, but no privileged information about item i.
  The control that separates "PTD distils what the hint knows" from "PTD pulls toward the reference";
- ``None``: no hints.
"""

from __future__ import annotations

import dataclasses
import random

from ptdpo.hints.schema import Hint, to_unstructured

HINT_KINDS = ("structured", "unstructured", "shuffled", None)


def derangement(keys: list[str], seed: int) -> dict[str, str]:
    """A random permutation of ``keys`` with no fixed point (one cycle, Sattolo's algorithm): key -> the
    key whose hint it receives. Fewer than two keys: the identity cannot be avoided, an error."""
    if len(keys) < 2:
        raise ValueError(f"shuffled hints need at least 2 hinted items, got {len(keys)}")
    order = sorted(keys)
    rng = random.Random(f"shuffle-hints|{seed}")
    perm = list(range(len(order)))
    for i in range(len(perm) - 1, 0, -1):
        j = rng.randrange(i)  # j < i: Sattolo, a single cycle
        perm[i], perm[j] = perm[j], perm[i]
    return {order[i]: order[perm[i]] for i in range(len(order))}


def shuffle_hints(hints: dict[str, Hint], seed: int) -> dict[str, Hint]:
    """Each item's hint replaced by another item's (``derangement``), re-addressed to the item."""
    moved = derangement(list(hints), seed)
    out = {}
    for item_id, source in moved.items():
        h = hints[source]
        out[item_id] = dataclasses.replace(h, item_id=item_id, generator={**h.generator, "shuffled_from": source})
    return out


def prepare_hints(kind: str | None, hint_dicts: dict[str, dict], seed: int = 0) -> dict[str, Hint]:
    """The trainer's hints for an arm's ``hints`` kind, from the audited hints as dicts."""
    if kind not in HINT_KINDS:
        raise ValueError(f"hints kind must be one of {HINT_KINDS}, got {kind!r}")
    if not kind:
        return {}
    hints = {k: Hint.from_dict(v) for k, v in hint_dicts.items()}
    if kind == "unstructured":
        return {k: to_unstructured(h) for k, h in hints.items()}
    if kind == "shuffled":
        return shuffle_hints(hints, seed)
    return hints
