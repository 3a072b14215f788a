"""The total PTD-PO loss (METHOD.md 2.7): against a float64 hand computation on fresh random inputs, and
micro-batching with the step's global counts gives the one-batch loss and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from ptdpo.objectives import LossCounts, ppo_clip_loss, ptdpo_loss

torch.set_num_threads(2)
F64 = torch.float64


def _batch(seed: int, b: int = 6, t: int = 7):
    """Random per-token inputs of one optimizer step: rows of unequal length, some rows out of the
    policy-gradient term, some with the reference KL off, PTD on a subset of rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    in_pg = torch.rand(b, generator=g) > 0.25
    in_pg[0] = True
    ref_on = torch.rand(b, generator=g) > 0.4
    ref_on[0] = True
    ptd = torch.rand(b, generator=g) > 0.5
    ptd[1] = True
    return {
        "log_prob": (-torch.rand(b, t, generator=g, dtype=F64) * 3).requires_grad_(True),
        "old_log_prob": -torch.rand(b, t, generator=g, dtype=F64) * 3,
        "ref_log_prob": -torch.rand(b, t, generator=g, dtype=F64) * 3,
        "advantages": torch.randn(b, generator=g, dtype=F64),
        "pg_mask": mask & in_pg[:, None],
        "kl_mask": mask & in_pg[:, None] & ref_on[:, None],
        "ptd_rows": mask & ptd[:, None],
        "divergence": (torch.rand(b, t, generator=g, dtype=F64) * 0.7).requires_grad_(True),
    }


def _counts(x) -> LossCounts:
    return LossCounts(
        pg_tokens=int(x["pg_mask"].sum()), pg_seqs=int(x["pg_mask"].any(-1).sum()),
        kl_tokens=int(x["kl_mask"].sum()), ptd_tokens=int(x["ptd_rows"].sum()),
    )


def _call(x, rows, counts, **kw):
    return ptdpo_loss(
        counts,
        log_prob=x["log_prob"][rows], old_log_prob=x["old_log_prob"][rows], advantages=x["advantages"][rows],
        pg_mask=x["pg_mask"][rows], ref_log_prob=x["ref_log_prob"][rows], kl_mask=x["kl_mask"][rows],
        ptd_divergence=x["divergence"][rows][x["ptd_rows"][rows]], **kw,
    )


def _by_hand(x, kl_coef, lambda_ptd, clip_low, clip_high, loss_agg_mode, max_len, dual_clip_c=None,
             kl_direction="reverse", kl_normalizer="kl_tokens"):
    """Python loops over tokens, float64, straight from the equations."""
    b, t = x["pg_mask"].shape
    lp, old, ref, div = (x[k].detach().tolist() for k in ("log_prob", "old_log_prob", "ref_log_prob", "divergence"))
    adv = x["advantages"].tolist()
    pg_terms: list[list[float]] = []
    kl_terms: list[list[float]] = []  # per policy-gradient token, 0 where the KL is masked
    kl_sum, ptd_sum = 0.0, 0.0
    for i in range(b):
        row, kl_row = [], []
        for j in range(t):
            if x["pg_mask"][i, j]:
                ratio = math.exp(lp[i][j] - old[i][j])
                clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
                term = max(-adv[i] * ratio, -adv[i] * clipped)
                if dual_clip_c is not None and adv[i] < 0:
                    term = min(term, -adv[i] * dual_clip_c)
                row.append(term)
                kl_row.append(0.0)
            if x["kl_mask"][i, j]:
                r = ref[i][j] - lp[i][j] if kl_direction == "reverse" else lp[i][j] - ref[i][j]
                kl_sum += math.exp(r) - r - 1  # k3
                kl_row[-1] = math.exp(r) - r - 1
            if x["ptd_rows"][i, j]:
                ptd_sum += div[i][j]
        pg_terms.append(row)
        kl_terms.append(kl_row)
    n_tok = sum(len(r) for r in pg_terms)
    n_seq = sum(1 for r in pg_terms if r)

    def aggregate(terms):
        if loss_agg_mode == "token-mean":
            return sum(sum(r) for r in terms) / n_tok
        if loss_agg_mode == "seq-mean-token-mean":
            return sum(sum(r) / len(r) for r in terms if r) / n_seq
        return sum(sum(r) for r in terms) / (n_seq * max_len)

    l_rl = aggregate(pg_terms)
    # the released normaliser: the masked KL aggregated like L_RL over ALL policy-gradient tokens
    kl_ref = aggregate(kl_terms) if kl_normalizer == "all_tokens" else kl_sum / int(x["kl_mask"].sum())
    l_ptd = ptd_sum / int(x["ptd_rows"].sum())
    return l_rl + kl_coef * kl_ref + lambda_ptd * l_ptd, l_rl, kl_ref, l_ptd, kl_sum, ptd_sum


# the options of the KL and the clip: the released form (the defaults) and the project's earlier one
FORMS = {
    "released": {"dual_clip_c": 3.0, "kl_direction": "forward", "kl_normalizer": "all_tokens"},
    "earlier": {"dual_clip_c": None, "kl_direction": "reverse", "kl_normalizer": "kl_tokens"},
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_total_loss_matches_hand_computation(loss_agg_mode, seed, form):
    x = _batch(100 + seed)
    coefs = {"kl_coef": 0.05 + 0.1 * seed, "lambda_ptd": 0.3 + seed}
    clip = {"clip_low": 0.2, "clip_high": 0.28, **FORMS[form]}
    rows = torch.arange(x["pg_mask"].shape[0])
    loss, parts = _call(x, rows, _counts(x), **coefs, **clip, loss_agg_mode=loss_agg_mode, max_response_len=9)
    total, l_rl, kl_ref, l_ptd, kl_sum, ptd_sum = _by_hand(x, **coefs, **clip, loss_agg_mode=loss_agg_mode, max_len=9)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(total, rel=1e-12)
    assert parts["pg_loss"].item() == pytest.approx(l_rl, rel=1e-12)
    assert parts["kl_ref"].item() == pytest.approx(kl_ref, rel=1e-12)
    assert parts["ptd_loss"].item() == pytest.approx(l_ptd, rel=1e-12)
    assert parts["kl_ref_sum"].item() == pytest.approx(kl_sum, rel=1e-12)
    assert parts["ptd_loss_sum"].item() == pytest.approx(ptd_sum, rel=1e-12)
    assert not any(p.requires_grad for p in parts.values())
    assert {"pg_clipfrac", "ppo_kl", "ratio_mean"} <= set(parts)  # the policy loss's statistics


@pytest.mark.parametrize(
    ("policy_loss", "loss_agg_mode"),
    [("ppo", "token-mean"), ("ppo", "seq-mean-token-mean"), ("ppo", "seq-mean-token-sum-norm"),
     ("gspo", "seq-mean-token-mean")],
)
def test_micro_batches_with_global_counts_equal_one_batch(policy_loss, loss_agg_mode):
    x = _batch(7, b=8)
    counts = _counts(x)
    kw = {"kl_coef": 0.1, "lambda_ptd": 0.5, "policy_loss": policy_loss, "loss_agg_mode": loss_agg_mode,
          "max_response_len": 9, "clip_low": 0.2, "clip_high": 0.3}
    whole, _ = _call(x, torch.arange(8), counts, **kw)
    g_whole = torch.autograd.grad(whole, [x["log_prob"], x["divergence"]])
    parts = [_call(x, torch.tensor(r), counts, **kw)[0] for r in ([0, 1, 2], [3], [4, 5, 6, 7])]
    split = sum(parts)
    g_split = torch.autograd.grad(split, [x["log_prob"], x["divergence"]])
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_split, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert g_whole[0].abs().sum() > 0 and g_whole[1].abs().sum() > 0
    # with per-micro-batch (local) counts the shares do not add up: the test can fail
    local = sum(
        _call(x, torch.tensor(r), _counts({k: v[torch.tensor(r)] for k, v in x.items()}), **kw)[0]
        for r in ([0, 1, 2], [3], [4, 5, 6, 7])
    )
    assert not torch.allclose(local, whole)


def test_absent_terms_and_the_policy_loss_function():
    x = _batch(3)
    counts = _counts(x)
    full = {k: x[k] for k in ("log_prob", "old_log_prob", "advantages", "pg_mask")}
    # only the RL term: the policy loss itself, with the step's token count
    loss, parts = ptdpo_loss(counts, **full, clip_high=0.28)
    expected, _ = ppo_clip_loss(*full.values(), clip_high=0.28, dual_clip_c=3.0, global_normalizer=counts.pg_tokens)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert "kl_ref" not in parts and "ptd_loss" not in parts
    # a function in place of a registered name
    calls = []

    def recording(*a, **k):
        calls.append(k["global_normalizer"])
        return ppo_clip_loss(*a, **k)

    ptdpo_loss(counts, **full, policy_loss=recording, loss_agg_mode="seq-mean-token-mean")
    assert calls == [counts.pg_seqs]
    # only PTD (a micro-batch of failed rollouts of uniform groups): lambda * sum / N_ptd
    div = torch.tensor([0.2, 0.4, 0.6], dtype=F64)
    loss, parts = ptdpo_loss(LossCounts(0, 0, 0, 6), ptd_divergence=div, lambda_ptd=0.5)
    assert loss.item() == pytest.approx(0.5 * 1.2 / 6) and set(parts) == {"ptd_loss", "ptd_loss_sum"}
    # nothing: a constant zero
    loss, parts = ptdpo_loss(counts)
    assert loss.item() == 0.0 and not loss.requires_grad and parts == {}
    # KL tokens whose mask is empty add exactly nothing
    no_kl = {**full, "ref_log_prob": x["ref_log_prob"], "kl_mask": torch.zeros_like(x["kl_mask"])}
    with_empty_kl, parts = ptdpo_loss(counts, **no_kl, kl_coef=0.5)
    assert with_empty_kl.item() == ptdpo_loss(counts, **full)[0].item() and parts["kl_ref_sum"].item() == 0.0


def test_argument_errors_name_the_input():
    x = _batch(4)
    counts = _counts(x)
    with pytest.raises(ValueError, match="log_prob needs old_log_prob"):
        ptdpo_loss(counts, log_prob=x["log_prob"], pg_mask=x["pg_mask"])
    with pytest.raises(ValueError, match="ref_log_prob needs kl_mask"):
        ptdpo_loss(counts, log_prob=x["log_prob"], old_log_prob=x["old_log_prob"], advantages=x["advantages"],
                   pg_mask=x["pg_mask"], ref_log_prob=x["ref_log_prob"])
    with pytest.raises(ValueError, match="needs log_prob"):
        ptdpo_loss(counts, ref_log_prob=x["ref_log_prob"], kl_mask=x["kl_mask"])
    with pytest.raises(ValueError, match="LossCounts.kl_tokens"):
        LossCounts(1, 1, -1, 0)
    with pytest.raises(ValueError, match="unknown policy loss"):
        ptdpo_loss(counts, **{k: x[k] for k in ("log_prob", "old_log_prob", "advantages", "pg_mask")},
                   policy_loss="trpo")
