"""The baselines' new terms against float64 hand computations: OPSD's full-vocabulary divergence from hidden
states, PAPO's perception KL and double entropy (and their signs), the distillation rule "all", HDPO's cliff
groups, PAPO's patch masking."""

from __future__ import annotations

import math

import pytest
import torch

from ptdpo.objectives import (
    LossCounts,
    aggregate_loss,
    chunked_full_divergence,
    cliff_mask,
    full_jsd_loss,
    perception_kl,
    perception_terms,
    ptd_mask,
    ptdpo_loss,
)

F64 = torch.float64


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _hand_divergence(zs, zt, beta, divergence, temperature):
    p, q = _softmax([v / temperature for v in zs]), _softmax([v / temperature for v in zt])
    if divergence == "forward_kl":
        return sum(b * math.log(b / a) for a, b in zip(p, q))
    if divergence == "reverse_kl":
        return sum(a * math.log(a / b) for a, b in zip(p, q))
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    return beta * sum(a * math.log(a / c) for a, c in zip(p, m)) + (1 - beta) * sum(b * math.log(b / c) for b, c in zip(q, m))


@pytest.mark.parametrize("divergence", ["jsd", "forward_kl", "reverse_kl"])
def test_full_vocabulary_divergence_by_hand(divergence):
    """Two tokens, a 3-word vocabulary: every D_t written out with math (no torch)."""
    hs = torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=F64)
    ws = torch.tensor([[0.3, -0.2], [1.0, 0.4], [-0.7, 0.9]], dtype=F64)
    ht = torch.tensor([[0.2, 1.0], [-0.4, 0.3]], dtype=F64)
    wt = torch.tensor([[1.1, 0.0], [0.2, -0.5], [0.4, 0.8]], dtype=F64)
    got = chunked_full_divergence(hs, ws, ht, wt, beta=0.3, divergence=divergence, temperature=0.7, chunk_size=1)
    for i in range(2):
        zs = [float(hs[i] @ ws[v]) for v in range(3)]
        zt = [float(ht[i] @ wt[v]) for v in range(3)]
        assert float(got[i]) == pytest.approx(_hand_divergence(zs, zt, 0.3, divergence, 0.7), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("divergence", ["jsd", "forward_kl", "reverse_kl"])
@pytest.mark.parametrize("chunk_size", [3, 64])
def test_full_vocabulary_divergence_equals_the_materialised_reference(divergence, chunk_size):
    """Value and gradients (hidden states, LM-head weight, bias) equal full_jsd_loss on the materialised
    logits, in float64, whatever the chunking; the teacher gets no gradient."""
    g = torch.Generator().manual_seed(7)
    n, h, v = 11, 6, 40
    hs = torch.randn(n, h, dtype=F64, generator=g, requires_grad=True)
    ws = torch.randn(v, h, dtype=F64, generator=g, requires_grad=True)
    bs = torch.randn(v, dtype=F64, generator=g, requires_grad=True)
    ht = torch.randn(n, h, dtype=F64, generator=g, requires_grad=True)
    wt = torch.randn(v, h, dtype=F64, generator=g)
    scale = torch.rand(n, dtype=F64, generator=g)  # a non-uniform upstream gradient
    got = chunked_full_divergence(hs, ws, ht, wt, beta=0.4, divergence=divergence, temperature=1.3,
                                  chunk_size=chunk_size, student_bias=bs)
    (got * scale).sum().backward()
    grads = [x.grad.clone() for x in (hs, ws, bs)]
    assert ht.grad is None
    for x in (hs, ws, bs):
        x.grad = None
    ref = full_jsd_loss(hs @ ws.T + bs, ht.detach() @ wt.T, beta=0.4, divergence=divergence, temperature=1.3)
    (ref * scale).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    for mine, theirs in zip(grads, (hs.grad, ws.grad, bs.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_full_vocabulary_divergence_in_bf16_is_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    hs, ws = torch.randn(5, 4, generator=g), torch.randn(30, 4, generator=g)
    ht, wt = torch.randn(5, 4, generator=g), torch.randn(30, 4, generator=g)
    low = chunked_full_divergence(hs.bfloat16(), ws.bfloat16(), ht.bfloat16(), wt.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, chunked_full_divergence(hs.bfloat16().float(), ws.bfloat16().float(),
                                                            ht.bfloat16().float(), wt.bfloat16().float()),
                               rtol=2e-2, atol=2e-3)
    with pytest.raises(ValueError, match="do not match"):
        chunked_full_divergence(hs, ws, ht[:4], wt)


def test_perception_terms_by_hand():
    lp = torch.tensor([[-0.2, -1.0], [-3.0, -0.1]], dtype=F64)
    lm = torch.tensor([[-0.5, -0.7], [-0.1, -0.1]], dtype=F64)
    per_token, parts = perception_terms(lp, lm, gamma=0.02, entropy_coef=0.03, masked_entropy_coef=0.05, kl_clamp=None)
    for i in range(2):
        for t in range(2):
            a, b = float(lp[i, t]), float(lm[i, t])
            r = math.exp(b - a)  # pi(o|I_mask) / pi(o|I)
            kl = r - math.log(r) - 1.0
            assert float(parts["perception_kl"][i, t]) == pytest.approx(kl, rel=1e-13, abs=1e-15)
            assert float(per_token[i, t]) == pytest.approx(-0.02 * kl + 0.03 * (-a) + 0.05 * (-b), rel=1e-13)
    assert float(parts["perception_kl"][1, 1]) == 0.0  # the same log-prob with and without the image: no KL
    # the released clamp: r = e^2.9 gives r - log r - 1 = 14.3 > 10
    assert float(perception_kl(lp, lm)[1, 0]) == 10.0
    with pytest.raises(ValueError, match="gamma"):
        perception_terms(lp, lm, gamma=-1.0, entropy_coef=0.0, masked_entropy_coef=0.0)


def test_perception_terms_have_the_paper_signs():
    """Gradient descent on the PAPO terms RAISES the perception KL (gamma alone) and LOWERS both sampled-token
    entropies (eta_1, eta_2 alone); a clamped token gets no gradient."""
    lp0 = torch.tensor([-1.0, -2.0, -0.5], dtype=F64)
    lm0 = torch.tensor([-1.5, -1.0, -0.9], dtype=F64)

    def step(gamma, eta1, eta2):
        lp, lm = lp0.clone().requires_grad_(True), lm0.clone().requires_grad_(True)
        perception_terms(lp, lm, gamma, eta1, eta2)[0].sum().backward()
        return lp0 - 0.1 * lp.grad, lm0 - 0.1 * lm.grad

    lp, lm = step(1.0, 0.0, 0.0)
    assert (perception_kl(lp, lm) > perception_kl(lp0, lm0)).all()
    lp, lm = step(0.0, 1.0, 0.0)
    assert (-lp < -lp0).all() and torch.equal(lm, lm0)
    lp, lm = step(0.0, 0.0, 1.0)
    assert (-lm < -lm0).all() and torch.equal(lp, lp0)
    far = torch.tensor([-5.0], dtype=F64, requires_grad=True)
    perception_terms(far, torch.tensor([-0.1], dtype=F64), 1.0, 0.0, 0.0)[0].sum().backward()
    assert float(far.grad) == 0.0  # KL above the clamp: the estimate stops pushing


def test_ptdpo_loss_adds_the_papo_terms_like_the_policy_loss():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(2, 4, dtype=F64, generator=g)
    lm = -torch.rand(2, 4, dtype=F64, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([0.5, -1.0], dtype=F64)
    counts = LossCounts(pg_tokens=9, pg_seqs=3, kl_tokens=0, ptd_tokens=0)
    common = dict(log_prob=lp, old_log_prob=lp, advantages=adv, pg_mask=mask)
    without, _ = ptdpo_loss(counts, **common)
    with_papo, parts = ptdpo_loss(counts, **common, masked_log_prob=lm, perception_coef=0.02, entropy_coef=0.03,
                                  masked_entropy_coef=0.04, perception_kl_clamp=None)
    per_token, terms = perception_terms(lp, lm, 0.02, 0.03, 0.04, None)
    expected = aggregate_loss(per_token, mask, "token-mean", 9)
    assert float(with_papo - without) == pytest.approx(float(expected), rel=1e-12)
    assert float(parts["papo_loss"]) == pytest.approx(float(expected), rel=1e-12)
    assert float(parts["perception_kl_sum"]) == pytest.approx(float(terms["perception_kl"][mask].sum()), rel=1e-12)
    assert float(parts["papo_entropy_sum"]) == pytest.approx(float(-lp[mask].sum()), rel=1e-12)
    assert float(parts["papo_masked_entropy_sum"]) == pytest.approx(float(-lm[mask].sum()), rel=1e-12)
    with pytest.raises(ValueError, match="perception terms need log_prob"):
        ptdpo_loss(counts, masked_log_prob=lm)


def test_the_all_rule_selects_every_rollout_with_a_context():
    acc = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    hint = torch.tensor([True, True, True, False, True, True])
    trunc = torch.tensor([False, False, False, False, False, True])
    # PTD's rule: failed rollouts of groups below tau (group 0 is all-correct, group 1's correct one is out)
    assert ptd_mask(acc, groups, hint).tolist() == [False, False, True, False, True, True]
    # OPSD's: every rollout whose item has the context, correct or not, tau ignored
    assert ptd_mask(acc, groups, hint, tau_ptd=0.2, select="all").tolist() == [True, True, True, False, True, True]
    assert ptd_mask(acc, groups, hint, select="all", skip_truncated=True, truncated=trunc).tolist() == \
        [True, True, True, False, True, False]
    with pytest.raises(ValueError, match="select"):
        ptd_mask(acc, groups, hint, select="every")


def test_cliff_groups_are_the_all_fail_groups():
    acc = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([7, 7, 3, 3, 9, 9, 5, 5])  # arbitrary ids; 0.5 is not correct
    assert cliff_mask(acc, groups).tolist() == [True, True, False, False, False, False, False, False]
    assert cliff_mask(torch.tensor([0.5, 0.0]), torch.tensor([1, 1])).tolist() == [True, True]


def test_patch_masking_blackens_whole_rows_channel_by_channel(tiny_processor):
    from ptdpo.papo import black_fill, mask_patch_rows

    fill = black_fill(tiny_processor)
    assert fill.tolist() == [-1.0, -1.0, -1.0]  # Qwen-VL: rescale 1/255, mean 0.5, std 0.5
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(400, 3 * 8, generator=g)
    masked, mask = mask_patch_rows(pixels, torch.tensor([-1.0, 0.0, 2.0]), 0.6, torch.Generator().manual_seed(5))
    assert torch.equal(masked[~mask], pixels[~mask])
    rows = masked[mask].view(-1, 3, 8)
    assert (rows[:, 0] == -1.0).all() and (rows[:, 1] == 0.0).all() and (rows[:, 2] == 2.0).all()
    assert 0.5 < mask.float().mean() < 0.7
    again, mask2 = mask_patch_rows(pixels, torch.tensor([-1.0, 0.0, 2.0]), 0.6, torch.Generator().manual_seed(5))
    assert torch.equal(again, masked) and torch.equal(mask2, mask)  # the seed decides
    with pytest.raises(ValueError, match="channels"):
        mask_patch_rows(torch.zeros(2, 10), fill, 0.5, g)
