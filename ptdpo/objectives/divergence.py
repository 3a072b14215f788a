"""Top-K divergence with tail compensation, and its full-vocabulary reference (METHOD.md 2.6).

Notation: p = softmax(z_student / T), q = softmax(z_teacher / T) over the full vocabulary V.
For every token a support S (a set of vocabulary ids) is chosen; every id outside S is merged
into one "tail" bin. P and Q are the resulting coarse-grained distributions over |S| + 1 bins and
the loss is a divergence between P and Q:

    jsd:        JSD_beta(P, Q) = beta * KL(P || M) + (1 - beta) * KL(Q || M),  M = beta P + (1 - beta) Q
    forward_kl: KL(Q || P)   (teacher to student, mode covering)
    reverse_kl: KL(P || Q)   (student to teacher, mode seeking)

Merging bins can only lose information, so the value is at most the full-vocabulary divergence
(data-processing inequality), and equals it when S covers V.

Everything is computed in log space, in float32 at least (float64 inputs stay float64).
"""

from __future__ import annotations

import math
import numbers

import torch

SUPPORTS = ("union", "student", "teacher")
DIVERGENCES = ("jsd", "forward_kl", "reverse_kl")

# Log-probabilities below this are treated as this value. Only reached with -inf logits (masked
# vocabulary entries): it keeps 0 * log(0) terms finite (0 instead of NaN) in value and gradient.
LOG_FLOOR = -1e30


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 if any input is float64."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def validate_divergence_args(
    k: int | None, support: str | None, beta: float, divergence: str, temperature: float
) -> None:
    """Raise ValueError with a clear message for any invalid option (shared by all entry points)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
        raise ValueError(f"k must be a positive int, got {k!r}")
    if support is not None and support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not (0.0 < float(beta) < 1.0):
        # At beta = 0 or 1 the mixture M equals one of the two distributions and JSD_beta is
        # identically 0 (no gradient): almost certainly a configuration mistake.
        raise ValueError(
            f"beta must be in the open interval (0, 1) for divergence='jsd', got {beta!r}; "
            "for a one-sided KL use divergence='forward_kl' or 'reverse_kl'"
        )
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")


def bin_divergence(
    logp: torch.Tensor,
    logq: torch.Tensor,
    mask: torch.Tensor | None,
    beta: float,
    divergence: str,
) -> torch.Tensor:
    """Divergence between two distributions given by log-probabilities over the last dim.

    Bins where ``mask`` is False are excluded. Returns the sum over bins (last dim removed).
    Inputs must be finite where ``mask`` is True (callers floor -inf at LOG_FLOOR).
    """
    if mask is not None:
        # A finite placeholder (log 1 = 0) keeps every intermediate finite in masked bins, so the
        # final torch.where cannot let a NaN from an unused branch into the gradient.
        logp = logp.masked_fill(~mask, 0.0)
        logq = logq.masked_fill(~mask, 0.0)
    if divergence == "jsd":
        log_m = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
        terms = beta * logp.exp() * (logp - log_m) + (1.0 - beta) * logq.exp() * (logq - log_m)
    elif divergence == "forward_kl":
        terms = logq.exp() * (logq - logp)
    elif divergence == "reverse_kl":
        terms = logp.exp() * (logp - logq)
    else:  # pragma: no cover - validated by callers
        raise ValueError(f"unknown divergence {divergence!r}")
    if mask is not None:
        terms = torch.where(mask, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    return terms.sum(-1)


def _log_tail(logp_support: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_{v in S} p(v)) computed as log(-expm1(logsumexp_{v in S} log p(v))).

    The inner value is clamped to -eps (machine epsilon of the compute dtype): a tail smaller
    than eps cannot be resolved from a sum of probabilities that is ~1 anyway, and the floor
    bounds d log(tail) / d logits by 1/eps, so forward_kl gradients stay finite when the student
    puts all its mass on S.
    """
    eps = torch.finfo(logp_support.dtype).eps
    lse = torch.logsumexp(logp_support.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.log(-torch.expm1(lse.clamp(max=-eps)))


def coarse_divergence(
    logp_support: torch.Tensor,
    logq_support: torch.Tensor,
    mask: torch.Tensor,
    vocab_size: int,
    beta: float,
    divergence: str,
) -> torch.Tensor:
    """Divergence of the coarse-grained distributions (support bins + one tail bin).

    ``logp_support`` / ``logq_support`` [n, S] are exact full-vocabulary log-probabilities of the
    ids in the support; ``mask`` [n, S] marks the valid (non-duplicate) slots. When the valid
    slots cover the whole vocabulary the tail is the empty set and its bin is dropped, so that
    K >= V reproduces the full-vocabulary value and gradient exactly (no rounding-noise tail).
    """
    logp_support = logp_support.clamp(min=LOG_FLOOR)
    logq_support = logq_support.clamp(min=LOG_FLOOR)
    tail_valid = mask.sum(-1) < vocab_size
    logp = torch.cat([logp_support, _log_tail(logp_support, mask).unsqueeze(-1)], dim=-1)
    logq = torch.cat([logq_support, _log_tail(logq_support, mask).unsqueeze(-1)], dim=-1)
    full_mask = torch.cat([mask, tail_valid.unsqueeze(-1)], dim=-1)
    return bin_divergence(logp, logq, full_mask, beta, divergence)


@torch.no_grad()
def select_support(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, k: int, support: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary ids of the support per token as a fixed-width index tensor plus a validity mask.

    union: [topK(p), topK(q)] of width 2K; a teacher id that is already among the student's
    top-K is a duplicate and is masked out (found by a batched binary search, O(N K log K) time,
    O(N K) memory, no Python loop over tokens). student / teacher: width K, all valid.
    Top-K of the logits equals top-K of the probabilities (softmax is monotone).
    """
    vocab = student_logits.shape[-1]
    k = min(int(k), vocab)
    if support == "student":
        idx = student_logits.topk(k, dim=-1, sorted=False).indices
        return idx, torch.ones_like(idx, dtype=torch.bool)
    if teacher_logits is None:
        raise ValueError(f"support={support!r} needs teacher logits")
    teacher_idx = teacher_logits.topk(k, dim=-1, sorted=False).indices
    if support == "teacher":
        return teacher_idx, torch.ones_like(teacher_idx, dtype=torch.bool)
    student_idx = student_logits.topk(k, dim=-1, sorted=False).indices
    student_sorted = student_idx.sort(dim=-1).values
    pos = torch.searchsorted(student_sorted, teacher_idx).clamp(max=k - 1)
    duplicate = student_sorted.gather(-1, pos) == teacher_idx
    idx = torch.cat([student_idx, teacher_idx], dim=-1)
    mask = torch.cat([torch.ones_like(duplicate), ~duplicate], dim=-1)
    return idx, mask


def _scaled(logits: torch.Tensor, dtype: torch.dtype, temperature: float) -> torch.Tensor:
    logits = logits.to(dtype)
    # Skipping the division at T = 1 avoids one more [N, V] copy on the materialised path.
    return logits if temperature == 1.0 else logits / temperature


def _flatten(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError("logits need a non-empty last (vocabulary) dimension")
    vocab = student_logits.shape[-1]
    return student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)


def topk_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    k: int,
    support: str = "union",
    beta: float = 0.5,
    divergence: str = "jsd",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token Top-K divergence with tail compensation (METHOD.md 2.6). No reduction.

    Args:
        student_logits: [N, V] (or [..., V]) raw logits; gradients flow into them.
        teacher_logits: same shape; treated as a constant (detached).
        k: top-K size; clamped to V.
        support: "union" = topK(p) U topK(q) (at most 2K ids), "student" = topK(p),
            "teacher" = topK(q). Teacher log-probs are always exact (from the teacher logits).
        beta: mixture weight of the generalized JSD, in (0, 1); ignored by the KL variants.
        divergence: "jsd" (JSD_beta), "forward_kl" = KL(Q || P), "reverse_kl" = KL(P || Q).
        temperature: both logits are divided by it before the softmax.

    Returns:
        [N] (or [...]) divergence per token, float32 (float64 for float64 inputs).

    Log-probs are gathered logits minus the full-vocabulary logsumexp, never a softmax over K.
    Materialises a few [N, V] tensors in the autograd graph; for training use
    ``chunked_topk_jsd_loss`` which keeps O(N K) across chunks.
    """
    validate_divergence_args(k, support, beta, divergence, temperature)
    lead_shape = student_logits.shape[:-1]
    s_logits, t_logits = _flatten(student_logits, teacher_logits)
    dtype = compute_dtype(s_logits, t_logits)
    zs = _scaled(s_logits, dtype, temperature)
    zt = _scaled(t_logits.detach(), dtype, temperature)
    idx, mask = select_support(zs.detach(), zt, k, support)
    logp = zs.gather(-1, idx) - torch.logsumexp(zs, dim=-1, keepdim=True)
    logq = zt.gather(-1, idx) - torch.logsumexp(zt, dim=-1, keepdim=True)
    loss = coarse_divergence(logp, logq, mask, zs.shape[-1], beta, divergence)
    return loss.reshape(lead_shape)


def full_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    divergence: str = "jsd",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Full-vocabulary divergence per token (reference for tests and benchmarks). No reduction.

    Same definitions as ``topk_jsd_loss`` with S = V (no tail). Plain autograd on [N, V]
    tensors: simple and independent of the Top-K code, but memory hungry (several [N, V] float32
    tensors live in the graph). Assumes finite logits.
    """
    validate_divergence_args(None, None, beta, divergence, temperature)
    lead_shape = student_logits.shape[:-1]
    s_logits, t_logits = _flatten(student_logits, teacher_logits)
    dtype = compute_dtype(s_logits, t_logits)
    logp = torch.log_softmax(_scaled(s_logits, dtype, temperature), dim=-1)
    logq = torch.log_softmax(_scaled(t_logits.detach(), dtype, temperature), dim=-1)
    return bin_divergence(logp, logq, None, beta, divergence).reshape(lead_shape)
