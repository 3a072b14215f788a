"""The full-vocabulary divergence from hidden states, chunk by chunk (OPSD's distillation term).

For every token t the student's p_t = softmax(z_s / T) and the teacher's q_t = softmax(z_t / T) over the
WHOLE vocabulary V (no Top-K support, no tail bin), and

    jsd:        D_t = JSD_beta(p_t, q_t) = beta KL(p_t || m_t) + (1 - beta) KL(q_t || m_t),
                m_t = beta p_t + (1 - beta) q_t
    forward_kl: D_t = KL(q_t || p_t)
    reverse_kl: D_t = KL(p_t || q_t)

(``ptdpo.objectives.divergence.full_jsd_loss`` is the same quantity from materialised logits.) The
Top-K path (``chunked_topk_jsd_loss``) with K >= V gives the same value, but keeps an [N, |S|] index and
gradient table across chunks, which at |S| = V is O(N V): 16k response tokens of a Qwen vocabulary
would hold ~30 GB. Here nothing of size N x V survives a chunk: forward keeps only the per-token values,
and backward recomputes each chunk's student and teacher logits from the saved hidden states (two
matmuls per chunk), takes the chunk's logit gradient with a small autograd pass on [chunk, V], and
folds it into the hidden-state, weight and bias gradients. Peak memory is O(chunk_size V). The teacher
is a constant: no gradient reaches it.
"""

from __future__ import annotations

import torch

from ptdpo.objectives.chunked import (
    DEFAULT_CHUNK_SIZE,
    _accumulate_linear_grads,
    _check_chunk_size,
    _check_linear,
    _grad_buffers,
    _logits_into,
    _no_autocast,
    _to_param_dtypes,
)
from ptdpo.objectives.divergence import bin_divergence, compute_dtype, validate_divergence_args


def _chunk_divergence(zs: torch.Tensor, zt: torch.Tensor, beta: float, divergence: str) -> torch.Tensor:
    """D_t of one chunk from its (already tempered) logits [c, V]."""
    return bin_divergence(torch.log_softmax(zs, -1), torch.log_softmax(zt, -1), None, beta, divergence)


def _chunk_logits(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, temperature, chunk_size, dtype):
    """(rows, student logits, teacher logits) chunk by chunk over the tokens, the logits written into two
    reused [chunk, V] buffers (the forward and the backward both walk the tokens this way)."""
    n, vocab = s_hidden.shape[0], s_weight.shape[0]
    c = min(chunk_size, max(n, 1))
    zs_buf = torch.empty(c, vocab, dtype=dtype, device=s_hidden.device)
    zt_buf = torch.empty(c, vocab, dtype=dtype, device=s_hidden.device)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        yield (rows, _logits_into(zs_buf, s_hidden[rows], s_weight, s_bias, temperature),
               _logits_into(zt_buf, t_hidden[rows], t_weight, t_bias, temperature))


class _ChunkedFullDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, beta, divergence, temperature,
                chunk_size):
        with _no_autocast(s_hidden.device):
            dtype = compute_dtype(s_hidden, s_weight, t_hidden, t_weight)
            loss = torch.empty(s_hidden.shape[0], dtype=dtype, device=s_hidden.device)
            for rows, zs, zt in _chunk_logits(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, temperature,
                                              chunk_size, dtype):
                loss[rows] = _chunk_divergence(zs, zt, beta, divergence)
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias)
        ctx.options = (beta, divergence, temperature, chunk_size, dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias = ctx.saved_tensors
        beta, divergence, temperature, chunk_size, dtype = ctx.options
        with _no_autocast(s_hidden.device):
            grad_hidden, grad_weight, grad_bias = _grad_buffers(ctx, s_hidden, s_weight, s_bias, 0, 1, 2)
            if s_hidden.shape[0] > 0 and any(x is not None for x in (grad_hidden, grad_weight, grad_bias)):
                grad_loss = grad_loss.to(dtype)
                for rows, zs, zt in _chunk_logits(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias,
                                                  temperature, chunk_size, dtype):
                    with torch.enable_grad():
                        z = zs.detach().requires_grad_(True)
                        d = _chunk_divergence(z, zt, beta, divergence)
                        (gz,) = torch.autograd.grad(d, z, grad_outputs=grad_loss[rows])
                    if temperature != 1.0:  # z = logits / T: chain rule back to the raw logits
                        gz = gz / temperature
                    _accumulate_linear_grads(gz, rows, s_hidden, s_weight, grad_hidden, grad_weight, grad_bias)
            grad_weight, grad_bias = _to_param_dtypes(grad_weight, grad_bias, s_weight, s_bias)
        return (grad_hidden, grad_weight, grad_bias) + (None,) * 7


def chunked_full_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    beta: float = 0.5,
    divergence: str = "jsd",
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token full-vocabulary divergence D_t (module docstring) from hidden states. No reduction.

    Args:
        student_hidden: [N, H] student hidden states at the completion positions (with grad);
        student_weight: [V, H] student LM head (``student_bias`` [V] optional);
        teacher_hidden / teacher_weight (/ ``teacher_bias``): the teacher's, treated as constants;
        beta, divergence, temperature: as in ``full_jsd_loss``;
        chunk_size: tokens per chunk (transient memory: a few [chunk_size, V] buffers).

    Returns:
        [N] float32 (float64 for float64 inputs); value and gradients equal
        ``full_jsd_loss(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, ...)``.
    """
    validate_divergence_args(None, None, beta, divergence, temperature)
    _check_chunk_size(chunk_size)
    _check_linear("student", student_hidden, student_weight, student_bias)
    _check_linear("teacher", teacher_hidden, teacher_weight, teacher_bias)
    if teacher_hidden.shape[0] != student_hidden.shape[0] or teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(f"teacher shapes {tuple(teacher_hidden.shape)}, {tuple(teacher_weight.shape)} do not match "
                         f"the student's {tuple(student_hidden.shape)}, {tuple(student_weight.shape)}")
    return _ChunkedFullDivergence.apply(
        student_hidden, student_weight, student_bias, teacher_hidden.detach(), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), float(beta), divergence, float(temperature),
        int(chunk_size),
    )
