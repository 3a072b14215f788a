"""How the transformers path draws each token: every row of a batch from its own random stream.

``generate`` with ``do_sample=True`` draws every row of a batch from one shared RNG, so a row's sample
depends on how many rows come before it and on when its neighbours stop. :class:`RowSampler` is a
logits processor that does the drawing itself and runs under greedy decoding: at every step it turns
each row's raw logits into the sampling distribution (suppressed ids removed, ``/ temperature``,
nucleus ``top_p``), draws that row's token by inverse CDF from the row's own uniform stream (a CPU
``torch.Generator`` seeded with the row's seed, the same on every device), and returns a mask that
leaves only the drawn token, which greedy decoding then picks. A row's tokens are therefore a function
of its prompt, its seed and the model alone, whatever batch it shares; rows that have finished keep
drawing from their own stream, which nothing reads.

The processor also records ``log pi(token | prefix)`` of each drawn token under the RAW model
distribution (temperature 1, nothing suppressed), the quantity vLLM reports as its sample log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A seed in [0, 2**63) from integers, by a splitmix64 chain: ``mix_seed(group_seed, j)`` for sample
    ``j`` of a group. Nearby inputs give unrelated outputs (group seeds ``s`` and ``s + 1`` never share
    a sample stream, as ``s + j`` would)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [B, V] restricted to each row's smallest set of most likely tokens whose mass reaches
    ``top_p`` (ties broken by token id), not renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token index per row drawn from ``weights`` [B, V] (non-negative, not necessarily normalised) with
    the uniform numbers ``u`` [B] in [0, 1): the first index whose cumulative weight exceeds ``u * total``.
    A zero-weight index is never returned."""
    cdf = weights.double().cumsum(-1)
    target = (u.double() * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp(max=weights.shape[-1] - 1)


class RowSampler:
    """Logits processor (``generate(..., logits_processor=[...])`` under greedy decoding) that samples
    every row from its own stream (module docstring).

    ``row_seeds``: one seed per row, or None for greedy (argmax of the suppressed logits). Each row
    draws ``max_new_tokens`` uniforms up front, so the stream does not depend on the device.
    """

    def __init__(
        self,
        row_seeds: Sequence[int] | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        suppress_ids: Sequence[int] = (),
        record_logprobs: bool = False,
    ):
        if row_seeds is not None and temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, got {temperature}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.suppress_ids = sorted({int(i) for i in suppress_ids})
        self.record_logprobs = record_logprobs
        self.uniforms = None
        if row_seeds is not None:
            rows = []
            for s in row_seeds:
                g = torch.Generator(device="cpu").manual_seed(int(s))
                rows.append(torch.rand(max(1, int(max_new_tokens)), generator=g, dtype=torch.float64))
            self.uniforms = torch.stack(rows) if rows else torch.zeros(0, 1, dtype=torch.float64)
        self.step = 0
        self._logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        logits = raw.clone()
        if self.suppress_ids:
            logits[:, self.suppress_ids] = float("-inf")
        if self.uniforms is None:
            tokens = logits.argmax(-1)
        else:
            if self.uniforms.shape[0] != raw.shape[0]:
                raise ValueError(f"{self.uniforms.shape[0]} row seeds for a batch of {raw.shape[0]} rows")
            probs = nucleus((logits / self.temperature).softmax(-1), self.top_p)
            u = self.uniforms[:, min(self.step, self.uniforms.shape[1] - 1)].to(raw.device)
            tokens = inverse_cdf(probs, u)
        self.step += 1
        if self.record_logprobs:
            self._logprobs.append(raw.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, tokens[:, None], 0.0)

    def logprobs(self) -> torch.Tensor:
        """[B, steps] raw log-probabilities of the drawn tokens (recorded with ``record_logprobs``)."""
        if not self._logprobs:
            raise RuntimeError("no log-probs recorded: build the RowSampler with record_logprobs=True")
        return torch.stack(self._logprobs, dim=1)
