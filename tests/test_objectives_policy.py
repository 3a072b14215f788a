"""Advantages, policy losses, aggregation, KL estimators, overlong shaping and the PTD mask,
each against small hand-computed cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ptdpo.objectives import (
    ADVANTAGE_ESTIMATORS,
    CLIP_PRESETS,
    POLICY_LOSSES,
    aggregate_loss,
    broadcast_advantages,
    get_advantage_fn,
    get_kl_fn,
    get_policy_loss_fn,
    group_stats,
    gspo_loss,
    kl_penalty,
    overlong_reward_penalty,
    ppo_clip_loss,
    ptd_mask,
    reduce_ptd_loss,
    ref_kl_group_mask,
    register_advantage_fn,
)

torch.set_num_threads(2)
F64 = torch.float64


# ------------------------------------------------------------------------------ advantages


def test_grpo_advantage_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 2.0, 2.0, 0.3, 0.9], dtype=F64)
    groups = torch.tensor([7, 7, 7, 7, -1, 30, 30, 30, 5, 5])
    adv = get_advantage_fn("grpo")(rewards, groups, eps=1e-6)
    # group 7: mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    std7 = statistics.stdev([1.0, 0.0, 0.0, 1.0])
    assert std7 == pytest.approx(math.sqrt(1 / 3))
    expected = [0.5 / (std7 + 1e-6), -0.5 / (std7 + 1e-6), -0.5 / (std7 + 1e-6), 0.5 / (std7 + 1e-6)]
    expected += [0.0]  # group of size 1: no baseline, advantage 0 (not NaN)
    expected += [0.0, 0.0, 0.0]  # constant group: exactly 0
    std5 = statistics.stdev([0.3, 0.9])
    expected += [-0.3 / (std5 + 1e-6), 0.3 / (std5 + 1e-6)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert (adv[4:8] == 0).all()


def test_drgrpo_advantage_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.1, 0.1, 0.1])
    groups = torch.tensor([2, 2, 2, 9, 4, 4, 4])
    adv = get_advantage_fn("drgrpo")(rewards, groups)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, 0.0]))
    assert (adv[3:] == 0).all()


@pytest.mark.parametrize("name", ["grpo", "drgrpo"])
def test_constant_reward_groups_have_zero_advantage(name):
    g = torch.Generator().manual_seed(31)
    values = torch.rand(20, generator=g)
    rewards = values.repeat_interleave(5)  # 20 groups of 5 identical rewards (e.g. 0.1 * 3 sums)
    groups = torch.arange(20).repeat_interleave(5) * 13 - 40
    adv = get_advantage_fn(name)(rewards, groups)
    assert (adv == 0).all() and torch.isfinite(adv).all()
    # (0.1 + 0.1 + 0.1) / 3 != 0.1 in floating point: still exactly zero, not ~1e-11
    tenths = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], dtype=F64)
    adv = get_advantage_fn(name)(tenths, torch.tensor([0] * 3 + [1] * 7))
    assert (adv == 0).all()


def test_advantage_groups_are_order_independent():
    g = torch.Generator().manual_seed(32)
    rewards = torch.rand(24, generator=g)
    groups = torch.randint(0, 5, (24,), generator=g)
    perm = torch.randperm(24, generator=g)
    for name in ("grpo", "drgrpo"):
        fn = get_advantage_fn(name)
        torch.testing.assert_close(fn(rewards, groups)[perm], fn(rewards[perm], groups[perm]))


def test_registries():
    assert {"grpo", "drgrpo"} <= set(ADVANTAGE_ESTIMATORS)
    assert {"ppo", "gspo"} <= set(POLICY_LOSSES)
    assert get_policy_loss_fn("ppo") is ppo_clip_loss and get_policy_loss_fn("gspo") is gspo_loss
    with pytest.raises(ValueError, match="unknown advantage estimator 'rloo'.*grpo"):
        get_advantage_fn("rloo")
    with pytest.raises(ValueError, match="unknown policy loss"):
        get_policy_loss_fn("trpo")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        get_kl_fn("k4")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_fn("grpo")(lambda r, g, eps=0: r)
    assert CLIP_PRESETS["dapo"] == (0.2, 0.28) and CLIP_PRESETS["gspo"] == (3e-4, 4e-4)


def test_broadcast_advantages():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(
        broadcast_advantages(torch.tensor([2.0, -1.0]), mask), torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    )


# ---------------------------------------------------------------------------------- PPO clip


def _ppo_case():
    # row 0: A = +1, ratios 1.5, 0.9, 1.25; row 1: A = -2, ratios 0.5, 1.5, (3.0 on padding)
    ratios = torch.tensor([[1.5, 0.9, 1.25], [0.5, 1.5, 3.0]], dtype=F64)
    log_prob = ratios.log().requires_grad_(True)
    old = torch.zeros(2, 3, dtype=F64)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return log_prob, old, adv, mask


def test_ppo_clip_higher_hand_computed():
    log_prob, old, adv, mask = _ppo_case()
    # clip (0.8, 1.28): per token l = max(-A r, -A clip(r))
    #   row 0: max(-1.5, -1.28) = -1.28 (high clip), -0.9, max(-1.25, -1.25) = -1.25
    #   row 1: max(1.0, 1.6) = 1.6 (low clip), max(3.0, 2.56) = 3.0
    loss, stats = ppo_clip_loss(log_prob, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 0.9 - 1.25 + 1.6 + 3.0) / 5, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, log_prob)
    # d l / d log r = -A r where unclipped, 0 where clipped or padded
    expected = torch.tensor([[0.0, -0.9, -1.25], [0.0, 3.0, 0.0]], dtype=F64) / 5
    torch.testing.assert_close(grad, expected)
    assert stats["pg_clipfrac_high"].item() == pytest.approx(1 / 5)
    assert stats["pg_clipfrac_low"].item() == pytest.approx(1 / 5)
    assert stats["pg_clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["ratio_min"].item() == pytest.approx(0.5)
    assert stats["ratio_max"].item() == pytest.approx(1.5)  # the padded 3.0 is ignored
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.9 + 1.25 + 0.5 + 1.5) / 5)
    expected_kl = -(math.log(1.5) + math.log(0.9) + math.log(1.25) + math.log(0.5) + math.log(1.5)) / 5
    assert stats["ppo_kl"].item() == pytest.approx(expected_kl)
    assert "pg_clipfrac_dual" not in stats
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_ppo_symmetric_clip_and_dual_clip():
    log_prob, old, adv, mask = _ppo_case()
    # GRPO clip (0.8, 1.2): row 0 token 2 (r = 1.25) is now clipped too: -1.2
    loss, _ = ppo_clip_loss(log_prob, old, adv, mask)
    assert loss.item() == pytest.approx((-1.2 - 0.9 - 1.2 + 1.6 + 3.0) / 5)
    # dual clip c = 1.4 caps row 1 token 1 (A < 0, r = 1.5): min(3.0, 2 * 1.4) = 2.8
    loss, stats = ppo_clip_loss(log_prob, old, adv, mask, clip_high=0.28, dual_clip_c=1.4)
    assert loss.item() == pytest.approx((-1.28 - 0.9 - 1.25 + 1.6 + 2.8) / 5)
    assert stats["pg_clipfrac_dual"].item() == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(log_prob, old, adv, mask, dual_clip_c=0.9)


def test_ppo_accepts_sequence_advantages_and_agg_modes():
    log_prob, old, adv, mask = _ppo_case()
    per_seq = torch.tensor([1.0, -2.0], dtype=F64)
    a, _ = ppo_clip_loss(log_prob, old, per_seq, mask, clip_high=0.28)
    b, _ = ppo_clip_loss(log_prob, old, adv, mask, clip_high=0.28)
    torch.testing.assert_close(a, b)
    c, _ = ppo_clip_loss(log_prob, old, adv, mask, clip_high=0.28, loss_agg_mode="seq-mean-token-mean")
    assert c.item() == pytest.approx(((-1.28 - 0.9 - 1.25) / 3 + (1.6 + 3.0) / 2) / 2)
    d, _ = ppo_clip_loss(
        log_prob, old, adv, mask, clip_high=0.28, loss_agg_mode="seq-mean-token-sum-norm", max_response_len=4
    )
    assert d.item() == pytest.approx((-1.28 - 0.9 - 1.25 + 1.6 + 3.0) / (2 * 4))
    e, _ = ppo_clip_loss(log_prob, old, adv, mask, clip_high=0.28, global_normalizer=10)
    assert e.item() == pytest.approx((-1.28 - 0.9 - 1.25 + 1.6 + 3.0) / 10)


def test_ratio_is_clamped():
    log_prob = torch.tensor([[100.0, -100.0]])
    loss, stats = ppo_clip_loss(log_prob, torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    assert torch.isfinite(loss) and stats["ratio_max"].item() == pytest.approx(math.exp(20), rel=1e-5)


# ----------------------------------------------------------------------------- aggregation


def test_aggregation_modes_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, float("nan"), float("inf")], [7.0, 8.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(15 / 5)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.5) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", max_response_len=8).item() == pytest.approx(
        15 / (3 * 8)
    )
    assert aggregate_loss(loss, mask, "token-mean", global_normalizer=30).item() == pytest.approx(0.5)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean", global_normalizer=5).item() == pytest.approx(6.5 / 5)
    empty = torch.zeros_like(mask)
    assert aggregate_loss(loss, empty, "token-mean").item() == 0.0
    assert aggregate_loss(loss, empty, "seq-mean-token-mean").item() == 0.0
    with pytest.raises(ValueError, match="max_response_len"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate_loss(loss, mask, "sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_global_normalizer_makes_microbatching_exact(mode):
    g = torch.Generator().manual_seed(33)
    loss = torch.randn(6, 5, generator=g, dtype=F64)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    whole = aggregate_loss(loss, mask, mode, max_response_len=7)
    norm = {"token-mean": mask.sum(), "seq-mean-token-mean": 6, "seq-mean-token-sum-norm": 6}[mode]
    parts = sum(
        aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, global_normalizer=norm, max_response_len=7)
        for i in (0, 2, 4)
    )
    torch.testing.assert_close(parts, whole)
    # without the global normaliser the micro-batch means do not add up (the test can fail)
    if mode == "token-mean":
        naive = sum(aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode) for i in (0, 2, 4)) / 3
        assert not torch.allclose(naive, whole)


# -------------------------------------------------------------------------------------- GSPO


def test_gspo_hand_computed():
    # row 0: A = +1, token log-ratios 0.001, -0.0002, 0.0005 -> mean 0.000433.., s = 1.000433 > 1 + 4e-4
    #        -> clipped at 1.0004 for every token, no gradient
    # row 1: A = -1, log-ratios 1e-4, 1e-4 (third position padded) -> s = exp(1e-4), inside the range
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]], dtype=F64)
    log_prob = (old + torch.tensor([[0.001, -0.0002, 0.0005], [1e-4, 1e-4, 5.0]], dtype=F64)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    loss, stats = gspo_loss(log_prob, old, adv, mask)
    s1 = math.exp(1e-4)
    assert loss.item() == pytest.approx((-1.0004 + s1) / 2, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, log_prob)
    # d/d log pi_t of (1/2) * (1/2) sum_t s_1 = s_1 / 4 on the two real tokens of row 1
    torch.testing.assert_close(grad, torch.tensor([[0, 0, 0], [s1 / 4, s1 / 4, 0]], dtype=F64))
    assert stats["seq_clipfrac_high"].item() == pytest.approx(0.5)
    assert stats["seq_clipfrac_low"].item() == 0.0
    assert stats["seq_clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio_max"].item() == pytest.approx(math.exp(0.0013 / 3))
    assert stats["ratio_min"].item() == pytest.approx(s1)


def test_gspo_gradient_equals_sequence_level_objective():
    g = torch.Generator().manual_seed(34)
    b, t = 5, 7
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3
    log_prob = (old + torch.randn(b, t, generator=g, dtype=F64) * 4e-4).requires_grad_(True)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()
    mask[:, 0] = 1
    adv = torch.randn(b, generator=g, dtype=F64)
    loss, stats = gspo_loss(log_prob, old, adv, mask)
    (g_token,) = torch.autograd.grad(loss, log_prob)
    # explicit sequence-level form: s_i = exp(mean_t log-ratio), no stop-gradient tricks
    m = mask.to(F64)
    s = (((log_prob - old) * m).sum(-1) / m.sum(-1)).exp()
    seq = torch.maximum(-adv * s, -adv * s.clamp(1 - 3e-4, 1 + 4e-4)).mean()
    (g_seq,) = torch.autograd.grad(seq, log_prob)
    torch.testing.assert_close(loss, seq)
    torch.testing.assert_close(g_token, g_seq)
    assert 0 < stats["seq_clipfrac"].item() < 1  # both branches exercised


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    logp = torch.tensor([math.log(0.5), 0.0, -1000.0])
    ref = torch.tensor([math.log(0.25), -1000.0, 0.0])
    r = math.log(0.5)  # log pi_ref - log pi for the first token
    k3 = kl_penalty(logp, ref, "k3")
    assert k3[0].item() == pytest.approx(0.5 - r - 1)
    assert k3[1].item() == pytest.approx(math.exp(-20) + 20 - 1)  # log-ratio clamped at -20
    assert k3[2].item() == pytest.approx(math.exp(20) - 20 - 1, rel=1e-6)
    assert kl_penalty(logp, ref, "k1")[0].item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2")[0].item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert torch.isfinite(kl_penalty(logp, ref, "k2")).all()
    assert (kl_penalty(torch.zeros(3), torch.zeros(3)) == 0).all()


# --------------------------------------------------------------------------- overlong / PTD


def test_overlong_penalty_hand_values():
    lengths = torch.tensor([0, 10, 16, 17, 18, 19, 20, 21, 100])
    out = overlong_reward_penalty(lengths, max_response_len=20, overlong_buffer_len=4)
    torch.testing.assert_close(out, torch.tensor([0, 0, 0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]))
    out = overlong_reward_penalty([17], 20, 4, penalty_factor=0.5)
    torch.testing.assert_close(out, torch.tensor([-0.125]))
    with pytest.raises(ValueError):
        overlong_reward_penalty(lengths, 20, 0)
    with pytest.raises(ValueError):
        overlong_reward_penalty(lengths, 20, 21)


def test_reduce_ptd_loss():
    values = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    out = reduce_ptd_loss(values, 6)
    assert out.item() == pytest.approx(0.1)
    out.backward()
    torch.testing.assert_close(values.grad, torch.full((3,), 1 / 6))
    assert reduce_ptd_loss(torch.tensor([0.5, 1.0]), 4, mask=torch.tensor([True, False])).item() == 0.125
    assert reduce_ptd_loss(torch.zeros(0), 0).item() == 0.0
    # micro-batches with the global count add up to the mean over all PTD tokens
    parts = reduce_ptd_loss(torch.tensor([1.0, 2.0]), 5) + reduce_ptd_loss(torch.tensor([3.0, 4.0, 5.0]), 5)
    assert parts.item() == pytest.approx(3.0)


A, B = [1, 1, 1, 1], [0, 0, 0, 0]


@pytest.mark.parametrize(
    "accuracy, groups, hint, kwargs, expected",
    [
        # paper default tau = 1: failures of a mixed group; all-correct group gets nothing
        ([1, 0, 0, 1, 1, 1, 1, 1], [0] * 4 + [1] * 4, [1] * 8, {}, [0, 1, 1, 0, 0, 0, 0, 0]),
        # all-fail group: every rollout
        (B, [3] * 4, [1] * 4, {}, [1, 1, 1, 1]),
        # tau = 0.4: group acc 0.5 is not < 0.4 -> no PTD; group acc 0.25 < 0.4 -> failures
        ([1, 1, 0, 0, 1, 0, 0, 0], [0] * 4 + [1] * 4, [1] * 8, {"tau_ptd": 0.4}, [0, 0, 0, 0, 0, 1, 1, 1]),
        # tau = 0.25 with acc exactly 0.25: strict < -> none
        ([1, 0, 0, 0], [0] * 4, [1] * 4, {"tau_ptd": 0.25}, [0, 0, 0, 0]),
        # all_trajectories includes the correct ones of an eligible group, not of an all-correct one
        ([1, 0, 0, 1, 1, 1], [0] * 4 + [1] * 2, [1] * 6, {"all_trajectories": True}, [1, 1, 1, 1, 0, 0]),
        # no hint -> never
        ([0, 0, 1, 0], [5] * 4, [1, 0, 1, 0], {}, [1, 0, 0, 0]),
        # skip_truncated
        (B, [0] * 4, [1] * 4, {"skip_truncated": True, "truncated": [0, 1, 0, 1]}, [1, 0, 1, 0]),
        # truncation flags are ignored unless skip_truncated
        (B, [0] * 4, [1] * 4, {"truncated": [0, 1, 0, 1]}, [1, 1, 1, 1]),
        # groups of different sizes, arbitrary ids, interleaved
        ([0, 1, 0, 1, 1], [9, -2, -2, 9, 4], [1] * 5, {}, [1, 0, 1, 0, 0]),
        # partial credit (accuracy < 1) counts as a failure
        ([1, 0.5, 1, 1], [0] * 4, [1] * 4, {}, [0, 1, 0, 0]),
        # all correct
        (A, [0] * 4, [1] * 4, {"all_trajectories": True}, [0, 0, 0, 0]),
    ],
)
def test_ptd_mask_table(accuracy, groups, hint, kwargs, expected):
    kwargs = dict(kwargs)
    if kwargs.get("truncated") is not None:
        kwargs["truncated"] = torch.tensor(kwargs["truncated"], dtype=torch.bool)
    out = ptd_mask(
        torch.tensor(accuracy, dtype=torch.float32), torch.tensor(groups), torch.tensor(hint, dtype=torch.bool), **kwargs
    )
    assert out.dtype == torch.bool
    assert out.tolist() == [bool(x) for x in expected]


def test_ptd_mask_argument_checks():
    with pytest.raises(ValueError, match="truncated"):
        ptd_mask(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), skip_truncated=True)
    with pytest.raises(ValueError, match="has_hint"):
        ptd_mask(torch.zeros(2), torch.zeros(2), torch.ones(3, dtype=torch.bool))


def test_ref_kl_group_mask_and_group_stats():
    ptd = torch.tensor([False, True, False, False, False, False, True])
    groups = torch.tensor([4, 4, 4, 8, 8, 1, 1])
    assert ref_kl_group_mask(ptd, groups).tolist() == [True, True, True, False, False, True, True]
    accuracy = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3])
    stats = group_stats(accuracy, groups)
    assert stats == {"frac_informative": 0.25, "frac_all_fail": 0.5, "frac_all_correct": 0.25, "num_groups": 4.0}
    assert all(isinstance(v, float) for v in stats.values())
    assert group_stats(torch.zeros(0), torch.zeros(0, dtype=torch.long))["num_groups"] == 0.0


@pytest.mark.parametrize("name", ["ppo", "gspo"])
def test_policy_losses_with_no_response_tokens(name):
    log_prob = torch.randn(2, 3, requires_grad=True)
    loss, stats = get_policy_loss_fn(name)(log_prob, log_prob.detach() + 1.0, torch.ones(2), torch.zeros(2, 3))
    assert loss.item() == 0.0
    assert stats["ratio_min"].item() == 1.0 and stats["ratio_max"].item() == 1.0
    assert all(torch.isfinite(v) for v in stats.values())
    loss.backward()
    assert (log_prob.grad == 0).all()
