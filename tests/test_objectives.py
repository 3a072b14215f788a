"""Top-K divergence with tail (METHOD.md 2.6, 2.8) and the memory-bounded chunked paths."""

from __future__ import annotations

import math

import pytest
import torch

from ptdpo.objectives import (
    chunked_token_logprobs,
    chunked_topk_jsd_loss,
    full_jsd_loss,
    topk_jsd_loss,
)
from ptdpo.objectives.divergence import select_support

torch.set_num_threads(2)

SUPPORTS = ["union", "student", "teacher"]
DIVERGENCES = ["jsd", "forward_kl", "reverse_kl"]
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logit_pair(seed: int, n: int, v: int, dtype=F64, scale: float = 2.0, corr: float = 0.6):
    """Student logits (leaf, with grad) and correlated teacher logits, so that the two top-K
    sets overlap partially (the union then has between K and 2K distinct ids)."""
    g = _gen(seed)
    zs = torch.randn(n, v, generator=g, dtype=F64) * scale
    zt = corr * zs + (1 - corr) * torch.randn(n, v, generator=g, dtype=F64) * scale
    return zs.to(dtype).requires_grad_(True), zt.to(dtype)


# ------------------------------------------------------------------ slow explicit reference


def _slow_reference(zs, zt, k, support, beta, divergence, temperature):
    """Per token, with Python sets and probabilities (not log-probs): the support, the coarse
    distributions P, Q over |S| + 1 bins (tail = 1 - sum), then the divergence by definition."""
    vocab = zs.shape[-1]
    out = []
    for n in range(zs.shape[0]):
        p = torch.softmax(zs[n] / temperature, -1)
        q = torch.softmax(zt[n] / temperature, -1)
        top_p = set(torch.topk(p.detach(), min(k, vocab)).indices.tolist())
        top_q = set(torch.topk(q, min(k, vocab)).indices.tolist())
        s = sorted({"union": top_p | top_q, "student": top_p, "teacher": top_q}[support])
        big_p, big_q = [p[v] for v in s], [q[v] for v in s]
        if len(s) < vocab:
            big_p.append(1 - sum(big_p))
            big_q.append(1 - sum(big_q))
        big_p, big_q = torch.stack(big_p), torch.stack(big_q)
        if divergence == "jsd":
            m = beta * big_p + (1 - beta) * big_q
            val = beta * (big_p * (big_p / m).log()).sum() + (1 - beta) * (big_q * (big_q / m).log()).sum()
        elif divergence == "forward_kl":
            val = (big_q * (big_q / big_p).log()).sum()
        else:
            val = (big_p * (big_p / big_q).log()).sum()
        out.append(val)
    return torch.stack(out)


@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_matches_slow_reference(support, divergence):
    seed = 100 + 10 * SUPPORTS.index(support) + DIVERGENCES.index(divergence)
    zs, zt = _logit_pair(seed, n=6, v=30)
    k, beta, temp = 4, 0.3, 0.8
    ours = topk_jsd_loss(zs, zt, k, support=support, beta=beta, divergence=divergence, temperature=temp)
    ref = _slow_reference(zs, zt, k, support, beta, divergence, temp)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    w = torch.rand(6, generator=_gen(seed + 1), dtype=F64)  # non-uniform upstream gradient
    (g_ours,) = torch.autograd.grad((ours * w).sum(), zs)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), zs)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)
    assert g_ours.abs().sum() > 0


def test_union_support_has_duplicates_masked():
    zs, zt = _logit_pair(7, n=50, v=40)
    k = 5
    idx, mask = select_support(zs.detach(), zt, k, "union")
    assert idx.shape == (50, 2 * k) and mask.shape == (50, 2 * k)
    sizes = []
    for n in range(50):
        expected = set(zs[n].topk(k).indices.tolist()) | set(zt[n].topk(k).indices.tolist())
        valid = idx[n][mask[n]].tolist()
        assert len(valid) == len(set(valid)) == len(expected)
        assert set(valid) == expected
        sizes.append(len(valid))
    # the data exercises both partial overlap and the mask
    assert min(sizes) < 2 * k and max(sizes) > k


@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("extra_k", [0, 7])
def test_k_covering_vocab_equals_full_value_and_gradient(support, divergence, extra_k):
    """METHOD.md 2.8: with K >= V the loss and its gradient equal the full-vocabulary ones,
    checked against float64 autograd through log_softmax."""
    seed = 200 + 10 * SUPPORTS.index(support) + DIVERGENCES.index(divergence) + extra_k
    v = 25
    zs, zt = _logit_pair(seed, n=5, v=v)
    ours = topk_jsd_loss(zs, zt, v + extra_k, support=support, divergence=divergence, temperature=1.3)
    full = full_jsd_loss(zs, zt, divergence=divergence, temperature=1.3)
    torch.testing.assert_close(ours, full, rtol=1e-10, atol=1e-13)
    (g_ours,) = torch.autograd.grad(ours.sum(), zs)
    (g_full,) = torch.autograd.grad(full.sum(), zs)
    torch.testing.assert_close(g_ours, g_full, rtol=1e-9, atol=1e-13)
    assert g_ours.norm() > 1e-3


def test_full_jsd_is_the_textbook_definition():
    zs, zt = _logit_pair(11, n=4, v=12)
    p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
    m = 0.5 * (p + q)
    expected = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(full_jsd_loss(zs, zt), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        full_jsd_loss(zs, zt, divergence="forward_kl"), (q * (q / p).log()).sum(-1), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        full_jsd_loss(zs, zt, divergence="reverse_kl"), (p * (p / q).log()).sum(-1), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("support", SUPPORTS)
def test_gradient_nonzero_iff_distributions_differ(support):
    zs, zt = _logit_pair(12, n=8, v=200, dtype=torch.float32)
    loss = topk_jsd_loss(zs, zt, 10, support=support)
    (grad,) = torch.autograd.grad(loss.sum(), zs)
    assert (grad.norm(dim=-1) > 1e-4).all()
    same = zt.clone().requires_grad_(True)
    loss_same = topk_jsd_loss(same, zt, 10, support=support)
    (grad_same,) = torch.autograd.grad(loss_same.sum(), same)
    assert loss_same.abs().max() < 1e-6 and grad_same.abs().max() < 1e-6


def test_released_detached_weight_variant_has_zero_gradient():
    """The released code's jsd_kl detaches P where it weights KL(P || M); per bin the remaining
    derivative is beta P - beta P (beta P + (1 - beta) Q) / M = 0. Ours keeps the true gradient."""
    zs, zt = _logit_pair(13, n=6, v=50)
    beta, k = 0.5, 5
    idx, mask = select_support(zs.detach(), zt, k, "union")
    logp = zs.gather(-1, idx) - zs.logsumexp(-1, keepdim=True)
    logq = zt.gather(-1, idx) - zt.logsumexp(-1, keepdim=True)
    fill = torch.tensor(float("-inf"), dtype=F64)
    logp = torch.cat([logp.masked_fill(~mask, fill), (-torch.expm1(logp.masked_fill(~mask, fill).logsumexp(-1))).log()[:, None]], -1)
    logq = torch.cat([logq.masked_fill(~mask, fill), (-torch.expm1(logq.masked_fill(~mask, fill).logsumexp(-1))).log()[:, None]], -1)
    valid = torch.cat([mask, torch.ones(6, 1, dtype=torch.bool)], -1)
    logp, logq = logp.masked_fill(~valid, 0), logq.masked_fill(~valid, 0)
    log_m = torch.logaddexp(logp + math.log(beta), logq + math.log(1 - beta))
    terms = beta * logp.exp().detach() * (logp - log_m) + (1 - beta) * logq.exp() * (logq - log_m)
    released = (terms * valid).sum(-1)
    ours = topk_jsd_loss(zs, zt, k, support="union", beta=beta)
    torch.testing.assert_close(released, ours, rtol=1e-10, atol=1e-12)  # same value ...
    (g_released,) = torch.autograd.grad(released.sum(), zs)
    (g_ours,) = torch.autograd.grad(ours.sum(), zs)
    assert g_released.abs().max() < 1e-12  # ... but no gradient at all
    assert g_ours.abs().max() > 1e-3


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bounds_and_data_processing_inequality(divergence):
    seed = 300 + DIVERGENCES.index(divergence)
    zs, zt = _logit_pair(seed, n=64, v=300, dtype=torch.float32, corr=0.3)
    full = full_jsd_loss(zs, zt, divergence=divergence)
    for support in SUPPORTS:
        for k in (1, 5, 50):
            ours = topk_jsd_loss(zs, zt, k, support=support, divergence=divergence)
            assert (ours >= -1e-6).all()
            assert (ours <= full + 1e-5).all(), (support, k)
            if divergence == "jsd":
                assert (ours <= math.log(2) + 1e-6).all()
    if divergence == "jsd":
        assert (full <= math.log(2) + 1e-6).all()


def test_union_refines_student_support():
    """Union bins are a refinement of the student-only bins, so the divergence can only grow."""
    zs, zt = _logit_pair(14, n=32, v=100, corr=0.2)
    for divergence in DIVERGENCES:
        union = topk_jsd_loss(zs, zt, 8, support="union", divergence=divergence)
        student = topk_jsd_loss(zs, zt, 8, support="student", divergence=divergence)
        teacher = topk_jsd_loss(zs, zt, 8, support="teacher", divergence=divergence)
        assert (union >= student - 1e-12).all() and (union >= teacher - 1e-12).all()


def _extreme_cases(v: int):
    g = _gen(15)
    n = 4
    cases = {}
    # one token with probability 1 - 1e-12 in the student (teacher near-uniform), and vice versa
    a = math.log((v - 1) * 1e12)
    peaked = torch.zeros(n, v)
    peaked[:, 3] = a
    flat = torch.randn(n, v, generator=g) * 0.1
    cases["peaked_student"] = (peaked.clone(), flat.clone())
    cases["peaked_teacher"] = (flat.clone(), peaked.clone())
    cases["both_peaked_same"] = (peaked.clone(), peaked.clone())
    other = torch.zeros(n, v)
    other[:, 7] = a
    cases["both_peaked_different"] = (peaked.clone(), other)
    sign = torch.randint(0, 2, (n, v), generator=g) * 2.0 - 1.0
    sign2 = torch.randint(0, 2, (n, v), generator=g) * 2.0 - 1.0
    cases["pm_1e4"] = (sign * 1e4, sign2 * 1e4)
    huge = torch.randn(n, v, generator=g) * 1e4
    cases["randn_1e4"] = (huge, torch.randn(n, v, generator=g) * 1e4)
    masked = torch.randn(n, v, generator=g)
    masked[:, v // 2 :] = float("-inf")
    cases["neg_inf_vocab"] = (masked, torch.randn(n, v, generator=g))
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_extreme_inputs_are_finite(dtype, support, divergence):
    v = 64
    for name, (zs, zt) in _extreme_cases(v).items():
        # neg_inf_vocab with forward_kl: KL(Q || P) is truly infinite where the teacher puts
        # mass on p = 0 ids; we ask for a finite (huge) value there, not a correct one.
        for k in (5, 40, 100):
            s = zs.to(dtype).requires_grad_(True)
            loss = topk_jsd_loss(s, zt.to(dtype), k, support=support, divergence=divergence, temperature=0.7)
            assert loss.dtype == torch.float32
            assert torch.isfinite(loss).all(), (name, k)
            assert (loss >= -1e-4).all(), (name, k, loss)
            if divergence == "jsd":
                assert (loss <= math.log(2) + 1e-4).all()
            (grad,) = torch.autograd.grad(loss.sum(), s)
            assert grad.dtype == dtype
            assert torch.isfinite(grad.float()).all(), (name, k)


def test_extreme_peaked_values_are_right():
    """p = 1 - 1e-12 on one token vs a flat teacher: the JSD is close to its value for a
    one-hot student (a tail of 1e-12 cannot be resolved in float32, the result is still right)."""
    v = 64
    cases = _extreme_cases(v)
    zs, zt = cases["peaked_student"]
    full64 = full_jsd_loss(zs.double(), zt.double())
    for support in SUPPORTS:
        ours = topk_jsd_loss(zs.double(), zt.double(), v, support=support)
        torch.testing.assert_close(ours, full64, rtol=1e-9, atol=1e-12)
        ours32 = topk_jsd_loss(zs, zt, v, support=support)
        torch.testing.assert_close(ours32.double(), full64, rtol=1e-5, atol=1e-6)
    same = topk_jsd_loss(*cases["both_peaked_same"], 5)
    assert same.abs().max() < 1e-6
    different = topk_jsd_loss(*cases["both_peaked_different"], 5)
    torch.testing.assert_close(different, torch.full_like(different, math.log(2)), rtol=0, atol=1e-5)


def test_leading_dims_and_empty():
    zs, zt = _logit_pair(16, n=6, v=20)
    flat = topk_jsd_loss(zs, zt, 3)
    shaped = topk_jsd_loss(zs.reshape(2, 3, 20), zt.reshape(2, 3, 20), 3)
    torch.testing.assert_close(shaped.reshape(-1), flat)
    assert topk_jsd_loss(torch.zeros(0, 20), torch.zeros(0, 20), 3).shape == (0,)


def test_teacher_is_detached():
    zs, zt = _logit_pair(17, n=4, v=20)
    zt = zt.clone().requires_grad_(True)
    loss = topk_jsd_loss(zs, zt, 3)
    loss.sum().backward()
    assert zt.grad is None and zs.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"support": "both"}, "support"),
        ({"divergence": "kl"}, "divergence"),
        ({"beta": 0.0}, "beta"),
        ({"beta": 1.0}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"k": 0}, "k must"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_arguments(kwargs, match):
    zs, zt = _logit_pair(18, n=2, v=10)
    args = {"k": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        topk_jsd_loss(zs, zt, **args)


def test_beta_is_ignored_by_kl_and_shape_checked():
    zs, zt = _logit_pair(19, n=2, v=10)
    a = topk_jsd_loss(zs, zt, 3, divergence="reverse_kl", beta=0.0)
    b = topk_jsd_loss(zs, zt, 3, divergence="reverse_kl", beta=0.9)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="same shape"):
        topk_jsd_loss(zs, zt[:, :5], 3)
    with pytest.raises(ValueError, match="beta"):
        full_jsd_loss(zs, zt, beta=1.0)


# -------------------------------------------------------------------------- chunked paths


def _linear_inputs(seed: int, n: int, v: int, h: int, dtype=F64, bias: bool = False):
    g = _gen(seed)
    hs = torch.randn(n, h, generator=g, dtype=F64)
    w = torch.randn(v, h, generator=g, dtype=F64) / math.sqrt(h) * 3
    ht = 0.5 * hs + torch.randn(n, h, generator=g, dtype=F64)
    wt = 0.5 * w + torch.randn(v, h, generator=g, dtype=F64) / math.sqrt(h) * 2
    bs = torch.randn(v, generator=g, dtype=F64) if bias else None
    bt = torch.randn(v, generator=g, dtype=F64) if bias else None
    hs, w = hs.to(dtype).requires_grad_(True), w.to(dtype).requires_grad_(True)
    if bs is not None:
        bs = bs.to(dtype).requires_grad_(True)
    return hs, w, bs, ht.to(dtype), wt.to(dtype), bt


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64])
@pytest.mark.parametrize("support, divergence", [("union", "jsd"), ("student", "forward_kl"), ("teacher", "reverse_kl")])
def test_chunked_equals_direct(chunk_size, support, divergence):
    n, v, h, k = 11, 37, 6, 4
    seed = 400 + chunk_size + 7 * SUPPORTS.index(support)
    hs, w, bs, ht, wt, bt = _linear_inputs(seed, n, v, h, bias=True)
    kwargs = dict(k=k, support=support, beta=0.4, divergence=divergence, temperature=0.9)
    upstream = torch.rand(n, generator=_gen(seed + 1), dtype=F64)

    direct = topk_jsd_loss(hs @ w.T + bs, ht @ wt.T + bt, **kwargs)
    g_direct = torch.autograd.grad((direct * upstream).sum(), (hs, w, bs))
    chunked = chunked_topk_jsd_loss(
        hs, w, ht, wt, chunk_size=chunk_size, student_bias=bs, teacher_bias=bt, **kwargs
    )
    g_chunked = torch.autograd.grad((chunked * upstream).sum(), (hs, w, bs))
    torch.testing.assert_close(chunked, direct, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_chunked, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    # teacher given as logits instead of hidden states
    via_logits = chunked_topk_jsd_loss(
        hs, w, teacher_logits=ht @ wt.T + bt, chunk_size=chunk_size, student_bias=bs, **kwargs
    )
    torch.testing.assert_close(via_logits, direct, rtol=1e-10, atol=1e-12)


def test_chunked_without_bias_and_frozen_head():
    n, v, h = 9, 30, 5
    hs, w, _, ht, wt, _ = _linear_inputs(21, n, v, h)
    direct = topk_jsd_loss(hs @ w.T, ht @ wt.T, 6)
    g_direct = torch.autograd.grad(direct.sum(), (hs, w))
    out = chunked_topk_jsd_loss(hs, w, ht, wt, k=6, chunk_size=4)
    g_out = torch.autograd.grad(out.sum(), (hs, w))
    for a, b in zip(g_out, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # only the hidden states trainable (frozen LM head)
    w_frozen = w.detach()
    out = chunked_topk_jsd_loss(hs, w_frozen, ht, wt, k=6, chunk_size=4)
    (g_h,) = torch.autograd.grad(out.sum(), hs)
    torch.testing.assert_close(g_h, g_direct[0], rtol=1e-9, atol=1e-12)


def test_chunked_low_precision_inputs():
    n, v, h = 10, 50, 8
    hs, w, _, ht, wt, _ = _linear_inputs(22, n, v, h, dtype=torch.bfloat16)
    out = chunked_topk_jsd_loss(hs, w, ht, wt, k=5, chunk_size=3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert hs.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert torch.isfinite(hs.grad.float()).all() and torch.isfinite(w.grad.float()).all()
    ref = topk_jsd_loss(hs.float() @ w.float().T, ht.float() @ wt.float().T, 5)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)


def test_chunked_extreme_logits_finite():
    n, v, h = 6, 40, 4
    hs, w, _, ht, wt, _ = _linear_inputs(23, n, v, h, dtype=torch.float32)
    with torch.no_grad():
        w.mul_(3e3)  # logits of order +-1e4
    for divergence in DIVERGENCES:
        out = chunked_topk_jsd_loss(hs, w, ht, wt * 3e3, k=5, divergence=divergence, chunk_size=4)
        g = torch.autograd.grad(out.sum(), (hs, w))
        assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in g)


def test_chunked_keeps_no_n_by_v_tensor_for_backward():
    """The autograd graph of the chunked paths saves O(N K) tensors plus the inputs, never an
    [N, V] one (the naive path saves several)."""
    n, v, h, k = 64, 500, 8, 5
    hs, w, _, ht, wt, _ = _linear_inputs(24, n, v, h, dtype=torch.float32)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = chunked_topk_jsd_loss(hs, w, ht, wt, k=k, chunk_size=16)
        logprobs, _ = chunked_token_logprobs(hs, w, torch.zeros(n, dtype=torch.long), chunk_size=16)
    assert saved and max(saved) <= max(v * h, n * 2 * k)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        topk_jsd_loss(hs @ w.T, ht @ wt.T, k)
    assert max(saved) >= n * v  # the check above can fail
    (loss.sum() + logprobs.sum()).backward()


def test_chunked_argument_checks():
    hs, w, _, ht, wt, _ = _linear_inputs(25, 4, 10, 3)
    with pytest.raises(ValueError, match="either teacher_logits"):
        chunked_topk_jsd_loss(hs, w, k=3)
    with pytest.raises(ValueError, match="either teacher_logits"):
        chunked_topk_jsd_loss(hs, w, ht, wt, teacher_logits=ht @ wt.T, k=3)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_topk_jsd_loss(hs, w, ht, wt, k=3, chunk_size=0)
    with pytest.raises(ValueError, match="hidden size"):
        chunked_topk_jsd_loss(hs, w[:, :2], ht, wt, k=3)
    with pytest.raises(ValueError, match="support"):
        chunked_topk_jsd_loss(hs, w, ht, wt, k=3, support="all")


@pytest.mark.parametrize("chunk_size", [1, 5, 13, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_token_logprobs_matches_log_softmax(chunk_size, temperature):
    n, v, h = 13, 29, 7
    seed = 500 + chunk_size + int(10 * temperature)
    g = _gen(seed)
    hidden = torch.randn(n, h, generator=g, dtype=F64, requires_grad=True)
    weight = (torch.randn(v, h, generator=g, dtype=F64) * 2).requires_grad_(True)
    bias = torch.randn(v, generator=g, dtype=F64, requires_grad=True)
    tokens = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=F64)

    logits = (hidden @ weight.T + bias) / temperature
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    p = torch.softmax(logits, -1)
    ref_entropy = -(p * torch.log_softmax(logits, -1)).sum(-1)
    g_ref = torch.autograd.grad((ref * upstream).sum(), (hidden, weight, bias))

    lp, entropy = chunked_token_logprobs(hidden, weight, tokens, temperature, chunk_size=chunk_size, bias=bias)
    g_ours = torch.autograd.grad((lp * upstream).sum(), (hidden, weight, bias))
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=1e-10, atol=1e-12)
    assert not entropy.requires_grad
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    lp2, none = chunked_token_logprobs(hidden, weight, tokens, temperature, chunk_size, bias, return_entropy=False)
    assert none is None
    torch.testing.assert_close(lp2, lp)


def test_chunked_token_logprobs_extremes():
    g = _gen(26)
    hidden = torch.randn(5, 4, generator=g)
    weight = (torch.randn(30, 4, generator=g) * 5e3).requires_grad_(True)
    bias = torch.zeros(30)
    bias[20:] = float("-inf")  # masked vocabulary entries
    tokens = torch.tensor([0, 1, 2, 3, 4])
    lp, ent = chunked_token_logprobs(hidden.requires_grad_(True), weight, tokens, chunk_size=2, bias=bias)
    lp.sum().backward()
    assert torch.isfinite(ent).all() and (ent >= 0).all()
    assert torch.isfinite(weight.grad).all() and torch.isfinite(hidden.grad).all()
    bf = chunked_token_logprobs(hidden.detach().bfloat16(), weight.detach().bfloat16(), tokens, chunk_size=2)[0]
    assert bf.dtype == torch.float32


def test_tail_bin_dropped_when_support_covers_vocab():
    """With every id in S the tail is the empty set: no bin, even if rounding leaves
    1 - sum p(S) slightly positive (here a deliberately unnormalised 1e-3)."""
    from ptdpo.objectives.divergence import bin_divergence, coarse_divergence

    logp = torch.log_softmax(torch.randn(3, 6, generator=_gen(27), dtype=F64), -1) - 1e-3
    logq = torch.log_softmax(torch.randn(3, 6, generator=_gen(28), dtype=F64), -1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    covered = coarse_divergence(logp, logq, mask, 6, 0.5, "jsd")
    torch.testing.assert_close(covered, bin_divergence(logp, logq, None, 0.5, "jsd"))
    with_tail = coarse_divergence(logp, logq, mask, 7, 0.5, "jsd")
    assert (with_tail - covered).abs().min() > 1e-5


def test_chunked_paths_under_autocast_match_full_precision():
    """An enclosing autocast region must not change the result: forward and backward must
    recompute the same float32 logits (with a plain `@` matmul and no autocast guard, the forward
    would run in bfloat16 and this fails)."""
    n, v, h = 8, 40, 6
    hs, w, _, ht, wt, _ = _linear_inputs(29, n, v, h, dtype=torch.float32)
    tokens = torch.randint(0, v, (n,), generator=_gen(30))
    ref = chunked_topk_jsd_loss(hs, w, ht, wt, k=4, chunk_size=3)
    g_ref = torch.autograd.grad(ref.sum(), (hs, w))
    lp_ref, _ = chunked_token_logprobs(hs, w, tokens, chunk_size=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_topk_jsd_loss(hs, w, ht, wt, k=4, chunk_size=3)
        lp, _ = chunked_token_logprobs(hs, w, tokens, chunk_size=3)
    g_out = torch.autograd.grad(out.sum(), (hs, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lp, lp_ref)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)
