"""The RL details of the paper's released code (METHOD.md 2.7) as the defaults: EasyR1's clip 0.2 / 0.3
with dual clip C = 3, the reference KL as the released scripts set it (k3 on pi / pi_ref, the PTD-masked
KL divided by all response tokens), PTD with DAPO without online filtering. Each against EasyR1's
formula written out by hand in float64."""

from __future__ import annotations

import inspect
import math
import typing

import pytest
import torch

from ptdpo import metrics as M
from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.objectives import (
    CLIP_PRESETS,
    KL_DIRECTIONS,
    KL_NORMALIZERS,
    LossCounts,
    gspo_loss,
    kl_penalty,
    ppo_clip_loss,
    ptdpo_loss,
)
from ptdpo.prompts import PROMPT_TEMPLATES

F64 = torch.float64


def test_defaults_are_the_released_ones():
    c = TrainConfig().resolved()
    assert (c.clip_low, c.clip_high, c.dual_clip_c) == (0.2, 0.3, 3.0)
    assert (c.kl_coef, c.kl_estimator, c.kl_direction, c.kl_normalizer) == (0.01, "k3", "forward", "all_tokens")
    assert c.prompt_template == "boxed"
    assert CLIP_PRESETS["grpo"] == (0.2, 0.3) and CLIP_PRESETS["dapo"] == (0.2, 0.28)
    # the config's names are the objectives' and the prompts' (no import between them: compared here)
    hints = typing.get_type_hints(TrainConfig)
    assert set(typing.get_args(hints["kl_direction"])) == set(KL_DIRECTIONS)
    assert set(typing.get_args(hints["kl_normalizer"])) == set(KL_NORMALIZERS)
    assert set(typing.get_args(hints["prompt_template"])) == set(PROMPT_TEMPLATES)
    # every loss option the config gives is a keyword of the loss, and the loss's defaults are the same
    opts = c.loss_options()
    params = inspect.signature(ptdpo_loss).parameters
    assert set(opts) <= set(params)
    for key in ("kl_estimator", "kl_direction", "kl_normalizer", "clip_low", "clip_high", "dual_clip_c"):
        assert params[key].default == opts[key], key
    off = TrainConfig(dual_clip_c=None, kl_direction="reverse", kl_normalizer="kl_tokens").resolved()
    assert (off.dual_clip_c, off.loss_options()["kl_normalizer"]) == (None, "kl_tokens")


def test_bad_values_are_named():
    from ptdpo.config import ConfigError, train_config_from_dict

    with pytest.raises(ConfigError) as e:
        train_config_from_dict({"dual_clip_c": 1.0, "kl_direction": "forward_kl", "kl_normalizer": "tokens",
                                "prompt_template": "xml"})
    msg = str(e.value)
    for key in ("train.dual_clip_c", "train.kl_direction", "train.kl_normalizer", "train.prompt_template"):
        assert key in msg, key
    with pytest.raises(ConfigError, match="unresolved"):
        TrainConfig().loss_options()


def test_ptd_with_dapo_runs_as_released():
    dapo = TrainConfig(algorithm="dapo", ptd=PTDConfig(enabled=False)).resolved()
    assert dapo.dynamic_sampling is True and dapo.overlong_buffer > 0 and dapo.clip_high == 0.28
    ptd_dapo = TrainConfig(algorithm="dapo").resolved()  # PTD on (the default)
    assert (ptd_dapo.dynamic_sampling, ptd_dapo.overlong_buffer, ptd_dapo.kl_coef) == (False, 0, 0.0)
    assert ptd_dapo.clip_high == 0.28
    kept = TrainConfig(algorithm="dapo", dynamic_sampling=True).resolved()  # the option: keep it
    assert kept.dynamic_sampling is True and kept.ptd.ptd_on_filtered_groups
    assert kept.overlong_buffer == 0  # each is its own option: overlong shaping stays off unless set
    shaped = TrainConfig(algorithm="dapo", overlong_buffer=16).resolved()
    assert (shaped.dynamic_sampling, shaped.overlong_buffer) == (False, 16)
    masked_only = TrainConfig(algorithm="dapo", ptd=PTDConfig(mask_only=True)).resolved()
    assert masked_only.dynamic_sampling is True  # no distillation: plain DAPO
    assert TrainConfig(algorithm="grpo").resolved().dynamic_sampling is False


# ------------------------------------------------------------------------------- clip and dual clip


def _easyr1_policy_loss(log_prob, old, adv, mask, clip_low, clip_high, clip_dual):
    """EasyR1's compute_policy_loss (loss_type default, loss_avg_mode token), written out here."""
    log_ratio = log_prob - old
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    clipped_ratio = torch.exp(torch.clamp(log_ratio, math.log(1.0 - clip_low), math.log(1.0 + clip_high)))
    pg1, pg2, pg3 = -adv * ratio, -adv * clipped_ratio, -adv * clip_dual
    higher = torch.max(pg1, pg2)
    lower = torch.min(higher, pg3)
    final = torch.where(adv < 0, lower, higher)
    m = mask.to(final.dtype)
    return (final * m).sum() / m.sum()


def _clip_case():
    # every branch: A > 0 above the high clip / inside; A < 0 below the low clip / inside / above C
    ratios = torch.tensor([[1.5, 0.5, 1.2, 9.0], [0.5, 2.0, 5.0, 1.1]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-2.0, -2.0, -2.0, -2.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    return ratios.log().requires_grad_(True), torch.zeros(2, 4, dtype=F64), adv, mask


def test_clip_and_dual_clip_equal_easyr1():
    log_prob, old, adv, mask = _clip_case()
    c = TrainConfig().resolved()
    ours, stats = ppo_clip_loss(log_prob, old, adv, mask, clip_low=c.clip_low, clip_high=c.clip_high,
                                dual_clip_c=c.dual_clip_c)
    theirs = _easyr1_policy_loss(log_prob, old, adv, mask, 0.2, 0.3, 3.0)
    # by hand: row 0 (A=1): -1.3, -0.5, -1.2; row 1 (A=-2): 2*0.8, 2*2.0, min(2*5, 2*3) = 6, 2*1.1
    by_hand = (-1.3 - 0.5 - 1.2 + 1.6 + 4.0 + 6.0 + 2.2) / 7
    assert ours.item() == pytest.approx(by_hand, rel=1e-12) and theirs.item() == pytest.approx(by_hand, rel=1e-12)
    (g_ours,) = torch.autograd.grad(ours, log_prob)
    (g_theirs,) = torch.autograd.grad(theirs, log_prob)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)
    assert g_ours[1, 2] == 0 and g_ours[0, 0] == 0 and g_ours[1, 1] != 0  # clipped tokens carry no gradient
    assert stats["pg_clipfrac_dual"].item() == pytest.approx(1 / 7)
    # the total loss with the config's options is the same number (KL and PTD absent)
    counts = LossCounts(pg_tokens=7, pg_seqs=2, kl_tokens=0, ptd_tokens=0)
    total, _ = ptdpo_loss(counts, log_prob=log_prob, old_log_prob=old, advantages=adv, pg_mask=mask,
                          **c.loss_options())
    assert total.item() == pytest.approx(by_hand, rel=1e-12)
    # without the dual clip the A < 0, ratio 5 token costs 10 instead of 6: the option is live
    no_dual, _ = ppo_clip_loss(log_prob, old, adv, mask, clip_low=0.2, clip_high=0.3)
    assert no_dual.item() == pytest.approx(by_hand + 4.0 / 7, rel=1e-12)


def test_gspo_takes_the_dual_clip_too():
    log_prob, old, adv, mask = _clip_case()
    with_dual, _ = gspo_loss(log_prob, old, adv, mask, dual_clip_c=3.0)
    without, _ = gspo_loss(log_prob, old, adv, mask)
    # row 1's sequence ratio exp(mean log r) = (0.5*2*5*1.1)^(1/4) ~ 1.35 < 3: the dual clip does not bind
    torch.testing.assert_close(with_dual, without)
    big = torch.full((1, 2), math.log(4.0), dtype=F64)
    capped, _ = gspo_loss(big, torch.zeros(1, 2, dtype=F64), torch.tensor([-1.0], dtype=F64),
                          torch.ones(1, 2), dual_clip_c=3.0)
    assert capped.item() == pytest.approx(3.0)  # -A * min(s, C) with s = 4


# ------------------------------------------------------------------------------------- reference KL


def test_forward_k3_is_on_the_ratio_pi_over_pi_ref():
    lp = torch.tensor([math.log(0.5), math.log(0.2)], dtype=F64)
    ref = torch.tensor([math.log(0.25), math.log(0.4)], dtype=F64)
    fwd = kl_penalty(lp, ref, "k3", "forward")
    for i, (p, q) in enumerate([(0.5, 0.25), (0.2, 0.4)]):
        assert fwd[i].item() == pytest.approx(p / q - math.log(p / q) - 1, rel=1e-12)
        rev = kl_penalty(lp, ref, "k3", "reverse")[i].item()
        assert rev == pytest.approx(q / p - math.log(q / p) - 1, rel=1e-12)
    with pytest.raises(ValueError, match="KL direction"):
        kl_penalty(lp, ref, "k3", "forward_kl")


def _kl_batch():
    """Two groups, one micro-batch each. Group 0 gets PTD, so its KL is masked; group 1 keeps it."""
    lengths = [[3, 2], [2, 4]]
    g = torch.Generator().manual_seed(5)
    batches = []
    for group, lens in enumerate(lengths):
        mask = torch.arange(4)[None, :] < torch.tensor(lens)[:, None]
        batches.append({
            "log_prob": (-torch.rand(2, 4, generator=g, dtype=F64) * 2).requires_grad_(True),
            "ref_log_prob": -torch.rand(2, 4, generator=g, dtype=F64) * 2,
            "mask": mask,
            "kl_on": mask & (group == 1),
        })
    return batches


def _released_kl_loss(batches):
    """dp_actor.update_policy of the PTD-PO release: kld = compute_kl(low_var_kl, forward_kl) zeroed on PID
    groups, kl_loss = masked mean over the micro-batch's response tokens, then the micro-batch loss is
    scaled by its response tokens / the mini-batch's (so the sum is the mini-batch mean)."""
    total_tokens = sum(int(b["mask"].sum()) for b in batches)
    loss = 0.0
    for b in batches:
        log_probs, ref_log_probs = b["ref_log_prob"], b["log_prob"]  # forward_kl swaps the two
        kl = (ref_log_probs - log_probs).clamp(-20.0, 20.0)  # low_var_kl
        kld = (kl.exp() - kl - 1).clamp(-10.0, 10.0)
        kld = kld * b["kl_on"].any(-1, keepdim=True).to(F64)  # ~pid_group_mask
        m = b["mask"].to(F64)
        kl_loss = (kld * m).sum() / m.sum()
        loss = loss + kl_loss * m.sum() / total_tokens
    return loss


def test_kl_normalisation_equals_the_released_form():
    batches = _kl_batch()
    all_tokens = sum(int(b["mask"].sum()) for b in batches)  # 11
    kl_tokens = sum(int(b["kl_on"].sum()) for b in batches)  # 6
    counts = LossCounts(pg_tokens=all_tokens, pg_seqs=4, kl_tokens=kl_tokens, ptd_tokens=0)
    opts = TrainConfig(kl_coef=1.0).resolved().loss_options()

    def ours(**over):
        total, kl_sum = 0.0, 0.0
        for b in batches:
            # advantages 0: the policy term is exactly 0, only the KL term remains
            loss, parts = ptdpo_loss(counts, log_prob=b["log_prob"], old_log_prob=b["log_prob"].detach(),
                                     advantages=torch.zeros(2, dtype=F64), pg_mask=b["mask"],
                                     ref_log_prob=b["ref_log_prob"], kl_mask=b["kl_on"], **{**opts, **over})
            total, kl_sum = total + loss, kl_sum + float(parts["kl_ref_sum"])
        return total, kl_sum

    released = _released_kl_loss(batches)
    total, kl_sum = ours()
    assert total.item() == pytest.approx(released.item(), rel=1e-12)
    g1 = torch.autograd.grad(total, [b["log_prob"] for b in batches])
    g2 = torch.autograd.grad(released, [b["log_prob"] for b in batches])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # by hand: the group-1 KL summed, over all 11 tokens; the earlier normaliser divides by its 6 only
    assert total.item() == pytest.approx(kl_sum / all_tokens, rel=1e-12)
    old, _ = ours(kl_normalizer="kl_tokens")
    assert old.item() == pytest.approx(kl_sum / kl_tokens, rel=1e-12)
    assert old.item() > 1.8 * total.item()  # KL on the unmasked groups weighed 11/6 more


def test_kl_ref_metrics_over_masked_and_all_rollouts():
    assert M.kl_ref_means(3.0, 6, 12) == {"kl_ref": 0.5, "kl_ref_all": 0.25}
    assert M.kl_ref_means(0.0, 0, 12) == {"kl_ref": 0.0, "kl_ref_all": 0.0}  # PTD masked every group
    t = M.UpdateTotals()
    t.add({"pg_loss": torch.tensor(0.1), "kl_ref_sum": torch.tensor(2.0), "kl_ref": torch.tensor(0.2)}, pg_tokens=5)
    t.add({"pg_loss": torch.tensor(0.1), "kl_ref_sum": torch.tensor(1.0), "kl_ref": torch.tensor(0.1)}, pg_tokens=5)
    out = t.metrics(LossCounts(pg_tokens=10, pg_seqs=2, kl_tokens=4, ptd_tokens=0), lambda_ptd=0.0)
    assert out["kl_ref"] == pytest.approx(3.0 / 4) and out["kl_ref_all"] == pytest.approx(3.0 / 10)
    assert "kl_ref_all" in M.BY_NAME
