"""Memory-bounded paths from hidden states: the [N, V] logits never exist for all N at once.

Both functions are custom autograd Functions that walk over the tokens in chunks of
``chunk_size``: logits = hidden @ weight.T (+ bias) are built per chunk, reduced to O(K) (or O(1))
values per token, and thrown away. Backward recomputes the student logits of each chunk (one
extra matmul) and turns them into the chunk's logit gradient in place. Across chunks only
[N, |S|] indices and gradients plus a few [N] vectors are kept, so peak memory is
O(N K + chunk_size V) instead of O(N V); gradients reach the hidden states, the LM-head weight
and its bias. The teacher is a constant: no gradient, and its logits are not recomputed in
backward (the loss gradient w.r.t. the support log-probs is computed in forward).

Why the gradient is cheap: the loss depends on the student logits z only through the support
log-probs l_b = z_b - logsumexp(z), b in S. With g_b = dLoss/dl_b (small autograd on [n, |S|]),
    dLoss/dz_j = sum_b g_b [j == b] - softmax(z)_j * sum_b g_b,
so backward needs only z (recomputed), logsumexp(z) (saved, [N]), the ids and g (saved, [N, |S|]).
"""

from __future__ import annotations

import numbers

import torch

from ptdpo.objectives.divergence import (
    coarse_divergence,
    compute_dtype,
    select_support,
    validate_divergence_args,
)

DEFAULT_CHUNK_SIZE = 1024


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _check_linear(name: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"{name}: hidden must be [N, H] and weight [V, H], got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{name}: hidden size mismatch, hidden {tuple(hidden.shape)} vs weight "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{name}: bias must be [V]={weight.shape[0]}, got {tuple(bias.shape)}")


def _logits_into(
    buf: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Write (hidden @ weight.T + bias) / T into a reused buffer (fresh [c, V] allocations cost
    page faults on CPU that are as slow as the elementwise work itself)."""
    out = buf[: hidden.shape[0]]
    if hidden.dtype == out.dtype and weight.dtype == out.dtype:
        torch.mm(hidden, weight.t(), out=out)
    else:  # low-precision matmul (as the model would run it), then upcast
        out.copy_(hidden @ weight.t())
    if bias is not None:
        out.add_(bias.to(out.dtype))
    if temperature != 1.0:
        out.div_(temperature)
    return out


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """Row logsumexp that overwrites z (no [c, V] temporary)."""
    m = z.amax(dim=-1, keepdim=True)
    z.sub_(m).exp_()
    return m.squeeze(-1) + z.sum(dim=-1).log()


def _accumulate_linear_grads(
    grad_z: torch.Tensor,
    rows: slice,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    gz = grad_z.to(weight.dtype)
    if grad_hidden is not None:
        grad_hidden[rows] = (gz @ weight).to(grad_hidden.dtype)
    if grad_weight is not None:
        grad_weight.addmm_(gz.t().to(grad_weight.dtype), hidden[rows].to(grad_weight.dtype))
    if grad_bias is not None:
        grad_bias.add_(grad_z.sum(0).to(grad_bias.dtype))


def _to_param_dtypes(grad_weight, grad_bias, weight, bias):
    """The accumulated (float32 or wider) weight and bias gradients, cast back to their parameters' dtypes."""
    return (None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype))


def _grad_buffers(ctx, hidden, weight, bias, idx_h: int, idx_w: int, idx_b: int):
    grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[idx_h] else None
    # Accumulate the weight gradient over chunks in float32 at least (bf16 accumulation of
    # hundreds of chunk contributions loses precision).
    acc = compute_dtype(weight)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[idx_w] else None
    grad_bias = None
    if bias is not None and ctx.needs_input_grad[idx_b]:
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device)
    return grad_hidden, grad_weight, grad_bias


def _no_autocast(device: torch.device):
    # Forward and backward must compute the same logits; an enclosing autocast region would
    # run the forward matmuls in low precision but not the backward recomputation.
    return torch.autocast(device_type=device.type, enabled=False)


class _ChunkedTopKDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits,
                k, support, beta, divergence, temperature, chunk_size):
        with _no_autocast(s_hidden.device):
            return _ChunkedTopKDivergence._forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias,
                                                   t_logits, k, support, beta, divergence, temperature, chunk_size)

    @staticmethod
    def _forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits,
                 k, support, beta, divergence, temperature, chunk_size):
        n, vocab = s_hidden.shape[0], s_weight.shape[0]
        dtype = compute_dtype(s_hidden, s_weight, t_hidden, t_weight, t_logits)
        device = s_hidden.device
        width = min(k, vocab) * (2 if support == "union" else 1)
        loss = torch.empty(n, dtype=dtype, device=device)
        all_idx = torch.empty(n, width, dtype=torch.long, device=device)
        all_g = torch.empty(n, width, dtype=dtype, device=device)
        lse_s = torch.empty(n, dtype=dtype, device=device)
        c = min(chunk_size, max(n, 1))
        zs_buf = torch.empty(c, vocab, dtype=dtype, device=device)
        zt_buf = torch.empty(c, vocab, dtype=dtype, device=device)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            zs = _logits_into(zs_buf, s_hidden[rows], s_weight, s_bias, temperature)
            if t_logits is not None:
                zt = zt_buf[: zs.shape[0]]
                zt.copy_(t_logits[rows])
                if temperature != 1.0:
                    zt.div_(temperature)
            else:
                zt = _logits_into(zt_buf, t_hidden[rows], t_weight, t_bias, temperature)
            idx, mask = select_support(zs, zt, k, support)
            zs_sup, zt_sup = zs.gather(-1, idx), zt.gather(-1, idx)
            lse_s[rows] = _logsumexp_(zs)
            lse_t = _logsumexp_(zt)
            logq = zt_sup - lse_t.unsqueeze(-1)
            with torch.enable_grad():
                logp = (zs_sup - lse_s[rows].unsqueeze(-1)).requires_grad_(True)
                chunk_loss = coarse_divergence(logp, logq, mask, vocab, beta, divergence)
                (g,) = torch.autograd.grad(chunk_loss.sum(), logp)
            loss[rows] = chunk_loss.detach()
            all_idx[rows] = idx
            all_g[rows] = g
        ctx.save_for_backward(s_hidden, s_weight, s_bias, all_idx, all_g, lse_s)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        with _no_autocast(grad_loss.device):
            return _ChunkedTopKDivergence._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):
        s_hidden, s_weight, s_bias, all_idx, all_g, lse_s = ctx.saved_tensors
        n, vocab = s_hidden.shape[0], s_weight.shape[0]
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        grad_hidden, grad_weight, grad_bias = _grad_buffers(ctx, s_hidden, s_weight, s_bias, 0, 1, 2)
        if n > 0 and any(x is not None for x in (grad_hidden, grad_weight, grad_bias)):
            grad_loss = grad_loss.to(all_g.dtype)
            g_sum = all_g.sum(-1)
            buf = torch.empty(min(chunk_size, n), vocab, dtype=all_g.dtype, device=s_hidden.device)
            for start in range(0, n, chunk_size):
                rows = slice(start, min(start + chunk_size, n))
                go = grad_loss[rows].unsqueeze(-1)
                gz = _logits_into(buf, s_hidden[rows], s_weight, s_bias, temperature)
                # dL/dz = scatter(g) - softmax(z) * sum(g), scaled by the upstream gradient.
                gz.sub_(lse_s[rows].unsqueeze(-1)).exp_().mul_(-(g_sum[rows].unsqueeze(-1) * go))
                gz.scatter_add_(-1, all_idx[rows], all_g[rows] * go)
                if temperature != 1.0:
                    gz.div_(temperature)
                _accumulate_linear_grads(gz, rows, s_hidden, s_weight, grad_hidden, grad_weight, grad_bias)
        grad_weight, grad_bias = _to_param_dtypes(grad_weight, grad_bias, s_weight, s_bias)
        return (grad_hidden, grad_weight, grad_bias) + (None,) * 10


def chunked_topk_jsd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    k: int = 100,
    support: str = "union",
    beta: float = 0.5,
    divergence: str = "jsd",
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``topk_jsd_loss`` computed from hidden states, chunk by chunk over tokens. No reduction.

    Args:
        student_hidden: [N, H] final hidden states of the student at the completion positions
            (after the final norm), with grad.
        student_weight: [V, H] student LM head (with grad if trained); ``student_bias`` [V] optional.
        teacher_hidden, teacher_weight (and ``teacher_bias``): the teacher's [N, H] / [V, H];
            or instead ``teacher_logits`` [N, V]. The teacher is always detached.
        k, support, beta, divergence, temperature: as in ``topk_jsd_loss``.
        chunk_size: tokens per chunk; transient memory is a few [chunk_size, V] buffers.

    Returns:
        [N] per-token divergence (float32, or float64 for float64 inputs). Value and gradients
        equal ``topk_jsd_loss(student_hidden @ student_weight.T, teacher_logits, ...)``.
    """
    validate_divergence_args(k, support, beta, divergence, temperature)
    _check_chunk_size(chunk_size)
    _check_linear("student", student_hidden, student_weight, student_bias)
    n, vocab = student_hidden.shape[0], student_weight.shape[0]
    if (teacher_logits is None) == (teacher_hidden is None and teacher_weight is None):
        raise ValueError("give either teacher_logits or (teacher_hidden, teacher_weight), not both/neither")
    if teacher_logits is not None:
        if teacher_logits.shape != (n, vocab):
            raise ValueError(f"teacher_logits must be [N, V]=({n}, {vocab}), got {tuple(teacher_logits.shape)}")
        teacher_logits = teacher_logits.detach()
    else:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("teacher_hidden and teacher_weight must be given together")
        _check_linear("teacher", teacher_hidden, teacher_weight, teacher_bias)
        if teacher_hidden.shape[0] != n or teacher_weight.shape[0] != vocab:
            raise ValueError(f"teacher shapes {tuple(teacher_hidden.shape)}, {tuple(teacher_weight.shape)} "
                             f"do not match the student's N={n}, V={vocab}")
        teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
        teacher_bias = None if teacher_bias is None else teacher_bias.detach()
    return _ChunkedTopKDivergence.apply(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
        teacher_logits, int(k), support, float(beta), divergence, float(temperature), int(chunk_size),
    )


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, temperature, chunk_size, return_entropy):
        with _no_autocast(hidden.device):
            return _ChunkedTokenLogprobs._forward(ctx, hidden, weight, bias, token_ids, temperature, chunk_size,
                                                  return_entropy)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, token_ids, temperature, chunk_size, return_entropy):
        n, vocab = hidden.shape[0], weight.shape[0]
        dtype = compute_dtype(hidden, weight)
        logprobs = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n, dtype=dtype, device=hidden.device) if return_entropy else None
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        c = min(chunk_size, max(n, 1))
        buf = torch.empty(c, vocab, dtype=dtype, device=hidden.device)
        buf2 = torch.empty(c, vocab, dtype=dtype, device=hidden.device) if return_entropy else None
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            z = _logits_into(buf, hidden[rows], weight, bias, temperature)
            picked = z.gather(-1, token_ids[rows].unsqueeze(-1)).squeeze(-1)
            if return_entropy:
                p = buf2[: z.shape[0]]
                p.copy_(z)
                lse[rows] = _logsumexp_(p)  # p now holds exp(z - max)
                p.div_(p.sum(-1, keepdim=True))
                # H = -sum p log p; log p is floored so that p = 0 entries (-inf logits) give 0.
                z.sub_(lse[rows].unsqueeze(-1)).clamp_(min=torch.finfo(dtype).min)
                entropy[rows] = -(p.mul_(z)).sum(-1)
            else:
                lse[rows] = _logsumexp_(z)
            logprobs[rows] = picked - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, token_ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprobs, _grad_entropy):
        with _no_autocast(ctx.saved_tensors[0].device):
            return _ChunkedTokenLogprobs._backward(ctx, grad_logprobs)

    @staticmethod
    def _backward(ctx, grad_logprobs):
        hidden, weight, bias, token_ids, lse = ctx.saved_tensors
        n, vocab = hidden.shape[0], weight.shape[0]
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        grad_hidden, grad_weight, grad_bias = _grad_buffers(ctx, hidden, weight, bias, 0, 1, 2)
        if n > 0 and grad_logprobs is not None and any(
            x is not None for x in (grad_hidden, grad_weight, grad_bias)
        ):
            grad_logprobs = grad_logprobs.to(lse.dtype)
            buf = torch.empty(min(chunk_size, n), vocab, dtype=lse.dtype, device=hidden.device)
            for start in range(0, n, chunk_size):
                rows = slice(start, min(start + chunk_size, n))
                go = grad_logprobs[rows].unsqueeze(-1)
                gz = _logits_into(buf, hidden[rows], weight, bias, temperature)
                # d log p(y) / dz = onehot(y) - softmax(z)
                gz.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-go)
                gz.scatter_add_(-1, token_ids[rows].unsqueeze(-1), go)
                if temperature != 1.0:
                    gz.div_(temperature)
                _accumulate_linear_grads(gz, rows, hidden, weight, grad_hidden, grad_weight, grad_bias)
        grad_weight, grad_bias = _to_param_dtypes(grad_weight, grad_bias, weight, bias)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    bias: torch.Tensor | None = None,
    return_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax((hidden @ weight.T + bias) / T)[token_ids] per token, chunk by chunk.

    Args:
        hidden: [N, H] hidden states (with grad); weight: [V, H] LM head (with grad if trained);
        token_ids: [N] int ids of the sampled tokens; bias: optional [V].

    Returns:
        (logprobs [N] with gradient to hidden / weight / bias, entropy [N] of the tempered
        distribution, detached; None when ``return_entropy`` is False). float32 at least.
    """
    _check_chunk_size(chunk_size)
    _check_linear("policy", hidden, weight, bias)
    if not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if token_ids.shape != (hidden.shape[0],):
        raise ValueError(f"token_ids must be [N]={hidden.shape[0]}, got {tuple(token_ids.shape)}")
    return _ChunkedTokenLogprobs.apply(
        hidden, weight, bias, token_ids.long(), float(temperature), int(chunk_size), bool(return_entropy)
    )
