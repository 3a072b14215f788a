"""A resumable, seeded epoch sampler over training items.

Its whole state is (epoch, position): each epoch's order is a permutation drawn from
``seed + epoch``, so a resumed run continues with exactly the prompts an uninterrupted run would
have seen (METHOD.md 6: resume must not restart the data order or skip an epoch).
"""

from __future__ import annotations

import torch


class EpochSampler:
    def __init__(self, n_items: int, seed: int = 0, shuffle: bool = True):
        if n_items < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.n_items = n_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_items))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_items, generator=g).tolist()

    def next(self, k: int) -> list[int]:
        """The next ``k`` item indices, crossing into the next epoch when this one runs out."""
        out: list[int] = []
        while len(out) < k:
            if self.position >= self.n_items:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(k - len(out), self.n_items - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n_items": self.n_items, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_items"] != self.n_items or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['n_items']} items / seed {state['seed']}, "
                f"this run has {self.n_items} items / seed {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
