"""The total PTD-PO loss of one micro-batch (METHOD.md 2.7), as one pure function.

    L = L_RL + kl_coef * KL_ref + L_PAPO + lambda_ptd * L_PTD

    L_RL   = the policy loss (PPO clip for GRPO / DAPO, GSPO's sequence ratio) of the policy-gradient
             tokens, reduced by ``aggregate_loss`` with the step's global normaliser: N_pg_tok for
             ``token-mean``, N_pg_seq for the ``seq-*`` modes;
    KL_ref = the per-token KL k(o_it) (the k1/k2/k3 estimator, ``kl_direction``), set to 0 outside KL (the
             policy-gradient tokens of rollouts whose reference KL is on), then
             ``kl_normalizer="all_tokens"`` (the released form): aggregated like L_RL over ALL the
             policy-gradient tokens (token-mean: (1 / N_pg_tok) sum_{(i,t) in KL} k_it), so a group whose
             KL PTD switches off counts as zero KL rather than shrinking the denominator;
             ``"kl_tokens"``: (1 / N_kl) sum_{(i,t) in KL} k_it, the mean over the tokens with KL on;
    L_PAPO = PAPO's perception terms (``ptdpo.objectives.perception``), only when the masked-image
             log-probs are given: -gamma KL_prcp + eta_1 H + eta_2 H_mask per policy-gradient token,
             aggregated like L_RL;
    L_PTD  = (1 / N_ptd) sum_{(i,t) in PTD} D_t, D_t the divergence of distillation token t (computed
             from hidden states by ``chunked_topk_jsd_loss`` or ``chunked_full_divergence``): PTD's
             term, or OPSD's / HDPO's distillation term, which take its place (docs/baselines.md).

Every N is a count over the whole optimizer step (all micro-batches, all data-parallel ranks), given
in :class:`LossCounts`. A micro-batch's loss is then its exact share of the step's loss: summed over
micro-batches (and ranks) it equals the loss of the step computed as one batch, and so do the
gradients, whatever the split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ptdpo.config import ALGO_DEFAULTS, DUAL_CLIP_C
from ptdpo.objectives.perception import PERCEPTION_KL_CLAMP, perception_terms
from ptdpo.objectives.policy import (
    _at_least_one,
    aggregate_loss,
    get_policy_loss_fn,
    kl_penalty,
    reduce_ptd_loss,
)

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
KL_NORMALIZERS = ("all_tokens", "kl_tokens")
# the token sums of PAPO's per-token parts, as ``parts`` names them
PAPO_SUMS = {"perception_kl": "perception_kl_sum", "entropy": "papo_entropy_sum",
             "masked_entropy": "papo_masked_entropy_sum"}


@dataclass(frozen=True)
class LossCounts:
    """The normalisers of one optimizer step, summed over its micro-batches and data-parallel ranks."""

    pg_tokens: float  # N_pg_tok: response tokens of policy-gradient rollouts
    pg_seqs: float  # N_pg_seq: policy-gradient rollouts
    kl_tokens: float  # N_kl: the tokens the reference KL is averaged over
    ptd_tokens: float  # N_ptd: response tokens of PTD rollouts

    def __post_init__(self) -> None:
        for name in ("pg_tokens", "pg_seqs", "kl_tokens", "ptd_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LossCounts.{name} must be a count >= 0, got {value!r}")

    def pg_normalizer(self, loss_agg_mode: str) -> float:
        """N_pg of ``aggregate_loss``: sequences for the seq-* modes, tokens for token-mean."""
        return self.pg_seqs if loss_agg_mode.startswith("seq-") else self.pg_tokens


def ptdpo_loss(
    counts: LossCounts,
    *,
    log_prob: torch.Tensor | None = None,
    old_log_prob: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    pg_mask: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    ptd_divergence: torch.Tensor | None = None,
    masked_log_prob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    lambda_ptd: float = 0.0,
    kl_estimator: str = "k3",
    kl_direction: str = "forward",
    kl_normalizer: str = "all_tokens",
    policy_loss: str | PolicyLossFn = "ppo",
    clip_low: float = ALGO_DEFAULTS["grpo"]["clip_low"],
    clip_high: float = ALGO_DEFAULTS["grpo"]["clip_high"],
    dual_clip_c: float | None = DUAL_CLIP_C,
    loss_agg_mode: str = "token-mean",
    max_response_len: int | None = None,
    perception_coef: float = 0.0,
    entropy_coef: float = 0.0,
    masked_entropy_coef: float = 0.0,
    perception_kl_clamp: float | None = PERCEPTION_KL_CLAMP,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of L = L_RL + kl_coef * KL_ref + L_PAPO + lambda_ptd * L_PTD (module
    docstring).

    Shapes: B rollouts, T response positions. ``log_prob`` / ``old_log_prob`` [B, T] are the log-probs
    of the sampled tokens under pi_theta (with gradient) and pi_old; ``advantages`` [B] or [B, T];
    ``pg_mask`` [B, T] the policy-gradient tokens. ``ref_log_prob`` [B, T] and ``kl_mask`` [B, T] (a
    subset of ``pg_mask``) give the reference KL term. ``ptd_divergence`` holds D_t of the
    micro-batch's PTD tokens (any shape, every entry a PTD token). ``masked_log_prob`` [B, T]: the
    sampled tokens' log-probs with the masked images (PAPO; with gradient, or detached for the released
    one-sided form), weighted by ``perception_coef`` (gamma), ``entropy_coef`` (eta_1) and
    ``masked_entropy_coef`` (eta_2).

    A term whose inputs are not given is absent: no ``log_prob``, no L_RL and no KL; no
    ``ref_log_prob``, no KL (pass it only when the run has the KL term: kl_coef > 0); no
    ``ptd_divergence``, no L_PTD. With no term the loss is a constant 0.

    ``policy_loss`` is a registered name (``get_policy_loss_fn``) or the function itself. The defaults of
    the options are the paper's (EasyR1 clip 0.2 / 0.3, dual clip 3, forward k3 over all tokens); a run
    passes its own with ``**TrainConfig.loss_options()``.

    Returns (loss, parts); parts are detached 0-dim tensors: ``pg_loss``, ``kl_ref``, ``ptd_loss``
    (each term's share, unweighted), ``papo_loss`` (L_PAPO's share, weighted), ``kl_ref_sum``,
    ``kl_ref_true_sum`` (the k3 KL(pi || pi_ref) summed over every policy-gradient token, a diagnostic),
    ``ptd_loss_sum``, ``perception_kl_sum``, ``papo_entropy_sum`` and ``papo_masked_entropy_sum`` (token
    sums, for exact means after summing over micro-batches and ranks), and the policy loss's statistics.
    """
    if kl_normalizer not in KL_NORMALIZERS:
        raise ValueError(f"ptdpo_loss: kl_normalizer must be one of {KL_NORMALIZERS}, got {kl_normalizer!r}")
    pieces: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    if log_prob is not None:
        if old_log_prob is None or advantages is None or pg_mask is None:
            raise ValueError("ptdpo_loss: log_prob needs old_log_prob, advantages and pg_mask")
        fn = get_policy_loss_fn(policy_loss) if isinstance(policy_loss, str) else policy_loss
        pg, stats = fn(
            log_prob, old_log_prob, advantages, pg_mask,
            clip_low=clip_low, clip_high=clip_high, dual_clip_c=dual_clip_c, loss_agg_mode=loss_agg_mode,
            global_normalizer=counts.pg_normalizer(loss_agg_mode), max_response_len=max_response_len,
        )
        pieces.append(pg)
        parts["pg_loss"] = pg.detach()
        parts.update(stats)
        if ref_log_prob is not None:
            if kl_mask is None:
                raise ValueError("ptdpo_loss: ref_log_prob needs kl_mask (the tokens with the reference KL on)")
            kl_tok = kl_penalty(log_prob, ref_log_prob, kl_estimator, kl_direction)
            # where, not a product: positions outside the mask must not leak inf/NaN into the sum
            kl_on = torch.where(kl_mask.bool(), kl_tok, torch.zeros_like(kl_tok))
            kl_sum = kl_on.sum()
            if kl_normalizer == "all_tokens":
                kl_share = aggregate_loss(kl_on, pg_mask, loss_agg_mode, counts.pg_normalizer(loss_agg_mode),
                                          max_response_len)
            else:
                kl_share = kl_sum / _at_least_one(counts.kl_tokens, kl_sum)
            pieces.append(kl_coef * kl_share)
            parts["kl_ref_sum"] = kl_sum.detach()
            parts["kl_ref"] = kl_share.detach()
            # a diagnostic, not a loss term: KL(pi || pi_ref) on EVERY policy-gradient token, masked or not
            # (Schulman's k3, unbiased and >= 0 under samples of pi, whatever the loss's estimator)
            true_kl = kl_penalty(log_prob.detach(), ref_log_prob, "k3", "reverse")
            parts["kl_ref_true_sum"] = torch.where(pg_mask.bool(), true_kl, torch.zeros_like(true_kl)).sum()
        if masked_log_prob is not None:
            papo_tok, terms = perception_terms(log_prob, masked_log_prob, perception_coef, entropy_coef,
                                               masked_entropy_coef, perception_kl_clamp)
            papo_share = aggregate_loss(papo_tok, pg_mask, loss_agg_mode, counts.pg_normalizer(loss_agg_mode),
                                        max_response_len)
            pieces.append(papo_share)
            parts["papo_loss"] = papo_share.detach()
            on = pg_mask.bool()
            for name, values in terms.items():
                parts[PAPO_SUMS[name]] = values.detach()[on].sum()
    elif ref_log_prob is not None:
        raise ValueError("ptdpo_loss: the reference KL needs log_prob (the policy's log-probs)")
    elif masked_log_prob is not None:
        raise ValueError("ptdpo_loss: the perception terms need log_prob (the policy's log-probs)")
    if ptd_divergence is not None:
        share = reduce_ptd_loss(ptd_divergence, counts.ptd_tokens)
        pieces.append(lambda_ptd * share)
        parts["ptd_loss_sum"] = ptd_divergence.detach().sum()
        parts["ptd_loss"] = share.detach()
    # A float32 zero first, as the loss accumulates in float32 even when the model runs in bf16.
    device = pieces[0].device if pieces else None
    loss = torch.zeros((), dtype=torch.float32, device=device)
    for piece in pieces:
        loss = loss + piece
    return loss, parts
