"""Advantages, policy-gradient losses, loss aggregation, KL estimators and reward shaping.

verl ``core_algos`` style: each estimator / loss is a small pure function documented with its
equation and selected by name from a registry (``get_advantage_fn``, ``get_policy_loss_fn``,
``get_kl_fn``). Shapes: B sequences, T response positions; ``response_mask`` [B, T] is 1 on real
response tokens. Statistics are returned as dicts of detached 0-dim tensors (no host sync; call
``float()`` when logging).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ptdpo.config import ALGO_DEFAULTS

# Log-ratios are clamped before exp() so a stale or broken rollout cannot overflow to inf.
LOG_RATIO_CLAMP = 20.0

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# (clip_low, clip_high) of the paper's algorithms: a view of the algorithm defaults of the config.
CLIP_PRESETS: dict[str, tuple[float, float]] = {
    algo: (d["clip_low"], d["clip_high"]) for algo, d in ALGO_DEFAULTS.items()
}

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def _register(registry: dict, kind: str, name: str):
    def deco(fn):
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = fn
        return fn

    return deco


def _lookup(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}") from None


def register_advantage_fn(name: str):
    """Decorator adding an advantage estimator ``fn(rewards [B], group_ids [B], eps) -> [B]``."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss_fn(name: str):
    """Decorator adding a policy loss ``fn(log_prob, old_log_prob, advantages, response_mask,
    **options) -> (loss, stats)``."""
    return _register(POLICY_LOSSES, "policy loss", name)


def get_advantage_fn(name: str) -> Callable[..., torch.Tensor]:
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss_fn(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return _lookup(POLICY_LOSSES, "policy loss", name)


def get_kl_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return _lookup(KL_ESTIMATORS, "KL estimator", name)


# ----------------------------------------------------------------------------- advantages


def _float(x: torch.Tensor | Sequence[float]) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def group_index(group_ids: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer group ids [B] to dense 0..G-1 indices; returns (index [B], G)."""
    group_ids = torch.as_tensor(group_ids)
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())


def _group_moments(rewards: torch.Tensor, group_ids) -> tuple[torch.Tensor, ...]:
    """Per-rollout (group mean, group count, group-is-constant) via index_add / scatter_reduce."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    idx, n_groups = group_index(group_ids)
    idx = idx.to(rewards.device)
    if idx.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(idx.shape)} differ in shape")
    count = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, idx, torch.ones_like(rewards)
    )
    mean = torch.zeros_like(count).index_add_(0, idx, rewards) / count
    gmax = torch.full_like(count, float("-inf")).scatter_reduce_(0, idx, rewards, "amax")
    gmin = torch.full_like(count, float("inf")).scatter_reduce_(0, idx, rewards, "amin")
    return idx, mean, count, gmax == gmin


@register_advantage_fn("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (R_i - mean_g R) / (std_g R + eps), over the rollouts of i's group g.

    std is the unbiased sample standard deviation (divisor n - 1), as torch.std, verl and TRL use.
    A group of size 1 has no baseline and gets A = 0 (not NaN); a group whose rewards are all
    equal gets exactly 0. Groups may have different sizes; ids are arbitrary integers.
    """
    rewards = _float(rewards)
    idx, mean, count, constant = _group_moments(rewards, group_ids)
    dev = rewards - mean[idx]
    sq = torch.zeros_like(mean).index_add_(0, idx, dev * dev)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    adv = dev / (std[idx] + eps)
    no_signal = (count[idx] < 2) | constant[idx]
    return torch.where(no_signal, torch.zeros_like(adv), adv)


@register_advantage_fn("drgrpo")
def drgrpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: A_i = R_i - mean_g R (no division by the std, which biases towards easy/hard
    questions). ``eps`` is accepted for a uniform signature and unused. Constant groups -> 0."""
    del eps
    rewards = _float(rewards)
    idx, mean, _, constant = _group_moments(rewards, group_ids)
    adv = rewards - mean[idx]
    return torch.where(constant[idx], torch.zeros_like(adv), adv)


def broadcast_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B] sequence advantages -> [B, T] token advantages (zero on padding)."""
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)


# ---------------------------------------------------------------------------- aggregation


def aggregate_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    global_normalizer: float | torch.Tensor | None = None,
    max_response_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token-mean:              sum_{i,t} m_it l_it / N_tok
    seq-mean-token-mean:     (1 / N_seq) sum_i [ sum_t m_it l_it / sum_t m_it ]   (sequences with
                             no token are left out)
    seq-mean-token-sum-norm: sum_{i,t} m_it l_it / (N_seq * L_max)                (Dr. GRPO; L_max
                             is the configured maximum response length, a constant)

    N_tok / N_seq are the local counts, or ``global_normalizer`` when given: pass the number of
    tokens (token-mean) or sequences (seq-* modes) of the whole optimizer step, over all
    micro-batches and data-parallel ranks. Each micro-batch then returns its exact share and
    the summed gradients equal those of one big batch, whatever the split. (DDP/FSDP average
    gradients over ranks: multiply the loss by the world size to undo that average.)
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    if loss_mat.shape != loss_mask.shape:
        raise ValueError(f"loss {tuple(loss_mat.shape)} and mask {tuple(loss_mask.shape)} differ in shape")
    mask = loss_mask.to(loss_mat.dtype)
    # where, not a product: garbage (inf/NaN) at padded positions must not leak into the sum.
    masked = torch.where(loss_mask.bool(), loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    if loss_agg_mode == "token-mean":
        denom = mask.sum() if global_normalizer is None else global_normalizer
        return masked.sum() / _at_least_one(denom, masked)
    if loss_agg_mode == "seq-mean-token-mean":
        lengths = mask.sum(-1)
        seq_mean = masked.sum(-1) / lengths.clamp(min=1)
        denom = (lengths > 0).sum() if global_normalizer is None else global_normalizer
        return seq_mean.sum() / _at_least_one(denom, masked)
    if max_response_len is None or max_response_len <= 0:
        raise ValueError("seq-mean-token-sum-norm needs max_response_len (the configured constant, not "
                         "the padded width of this batch)")
    n_seq = loss_mat.shape[0] if global_normalizer is None else global_normalizer
    return masked.sum() / (_at_least_one(n_seq, masked) * max_response_len)


def _at_least_one(denom: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # An empty batch contributes 0 instead of 0/0.
    return torch.as_tensor(denom, dtype=like.dtype, device=like.device).clamp(min=1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _masked_extrema(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of x over the mask without a host sync; (1, 1) (a neutral ratio) if empty."""
    mask = mask.bool()
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    any_ = mask.any()
    lo = torch.where(mask, x, inf).min()
    hi = torch.where(mask, x, -inf).max()
    return torch.where(any_, lo, one), torch.where(any_, hi, one)


def _token_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(response_mask)
    if advantages.shape != response_mask.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] or [B, T]={tuple(response_mask.shape)}")
    return advantages


# ---------------------------------------------------------------------------- policy losses


def _check_dual_clip(dual_clip_c: float | None) -> None:
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")


def _dual_clip(per_token: torch.Tensor, advantages: torch.Tensor, dual_clip_c: float | None) -> torch.Tensor:
    """Dual-clip PPO: where A < 0 the loss is at most -A * c (a huge ratio cannot blow a bad token's
    push-down up without bound); None leaves the loss as it is."""
    if dual_clip_c is None:
        return per_token
    return torch.where(advantages < 0, torch.minimum(per_token, -advantages * dual_clip_c), per_token)



@register_policy_loss_fn("ppo")
def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: float | None = None,
    loss_agg_mode: str = "token-mean",
    global_normalizer: float | torch.Tensor | None = None,
    max_response_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token (GRPO: clip 0.2/0.2; DAPO clip-higher: 0.2/0.28).

        r_t = exp(log pi(o_t) - log pi_old(o_t))            (log-ratio clamped to [-20, 20])
        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
        dual clip (c > 1, only where A_t < 0):  l_t = min(l_t, -A_t c)
    then reduced with ``aggregate_loss``. ``advantages`` is [B, T] or [B].

    Stats: pg_clipfrac_low (A < 0, r < 1 - clip_low), pg_clipfrac_high (A > 0,
    r > 1 + clip_high), pg_clipfrac (their sum), pg_clipfrac_dual (A < 0, r > c), ppo_kl
    (mean of log pi_old - log pi), ratio_mean / ratio_min / ratio_max; token means over the mask.
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got {clip_low}, {clip_high}")
    _check_dual_clip(dual_clip_c)
    advantages = _token_advantages(advantages, response_mask)
    log_ratio = (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = _dual_clip(torch.maximum(loss_unclipped, loss_clipped), advantages, dual_clip_c)
    loss = aggregate_loss(per_token, response_mask, loss_agg_mode, global_normalizer, max_response_len)

    with torch.no_grad():
        mask = response_mask.bool()
        low = (advantages < 0) & (ratio < 1.0 - clip_low)
        high = (advantages > 0) & (ratio > 1.0 + clip_high)
        rmin, rmax = _masked_extrema(ratio, mask)
        stats = {
            "pg_clipfrac_low": _masked_mean(low.to(ratio.dtype), mask),
            "pg_clipfrac_high": _masked_mean(high.to(ratio.dtype), mask),
            "pg_clipfrac": _masked_mean((low | high).to(ratio.dtype), mask),
            "ppo_kl": _masked_mean(-log_ratio, mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_min": rmin,
            "ratio_max": rmax,
        }
        if dual_clip_c is not None:
            stats["pg_clipfrac_dual"] = _masked_mean(((advantages < 0) & (ratio > dual_clip_c)).to(ratio.dtype), mask)
    return loss, stats


@register_policy_loss_fn("gspo")
def gspo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip_c: float | None = None,
    loss_agg_mode: str = "seq-mean-token-mean",
    global_normalizer: float | torch.Tensor | None = None,
    max_response_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: sequence-level importance ratio, tiny clip range, sequence-level averaging.

        s_i   = exp( (1/|o_i|) sum_t (log pi(o_it) - log pi_old(o_it)) )
        s_i,t = sg[s_i] * pi(o_it) / sg[pi(o_it)]     (value s_i for every token)
        l_i,t = max(-A_i,t s_i,t, -A_i,t clip(s_i,t, 1 - clip_low, 1 + clip_high))
        dual clip (c > 1, only where A_i,t < 0):  l_i,t = min(l_i,t, -A_i,t c)   (as EasyR1 applies it)
    aggregated with seq-mean-token-mean. Since grad s_i,t = s_i grad log pi(o_it), the token
    mean of the gradients is s_i grad mean_t log pi(o_it) = grad s_i: the gradient equals the
    sequence-level objective's, and the token form also allows token-level advantages (GSPO-token).

    Stats: seq_clipfrac_low / seq_clipfrac_high / seq_clipfrac (fractions of sequences whose
    clip is active: A < 0 and s < 1 - clip_low, or A > 0 and s > 1 + clip_high), ppo_kl
    (token mean of log pi_old - log pi), ratio_mean / ratio_min / ratio_max of s_i.
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got {clip_low}, {clip_high}")
    _check_dual_clip(dual_clip_c)
    advantages = _token_advantages(advantages, response_mask)
    mask = response_mask.to(log_prob.dtype)
    lengths = mask.sum(-1)
    log_ratio = log_prob - old_log_prob
    seq_log_ratio = (log_ratio * mask).sum(-1) / lengths.clamp(min=1)
    log_s = (
        seq_log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).unsqueeze(-1)
        + log_prob
        - log_prob.detach()
    )
    s = log_s.exp()
    per_token = _dual_clip(
        torch.maximum(-advantages * s, -advantages * s.clamp(1.0 - clip_low, 1.0 + clip_high)), advantages, dual_clip_c
    )
    loss = aggregate_loss(per_token, response_mask, loss_agg_mode, global_normalizer, max_response_len)

    with torch.no_grad():
        has_tokens = lengths > 0
        seq_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
        seq_adv = (advantages * mask).sum(-1) / lengths.clamp(min=1)
        low = (seq_adv < 0) & (seq_ratio < 1.0 - clip_low)
        high = (seq_adv > 0) & (seq_ratio > 1.0 + clip_high)
        rmin, rmax = _masked_extrema(seq_ratio, has_tokens)
        stats = {
            "seq_clipfrac_low": _masked_mean(low.to(s.dtype), has_tokens),
            "seq_clipfrac_high": _masked_mean(high.to(s.dtype), has_tokens),
            "seq_clipfrac": _masked_mean((low | high).to(s.dtype), has_tokens),
            "ppo_kl": _masked_mean(-log_ratio, response_mask.bool()),
            "ratio_mean": _masked_mean(seq_ratio, has_tokens),
            "ratio_min": rmin,
            "ratio_max": rmax,
        }
    return loss, stats


# ------------------------------------------------------------------------- KL to reference


def _kl_log_ratio(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    return (log_prob - ref_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def kl_k1(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref (unbiased for KL(pi || pi_ref), high variance, can be < 0)."""
    return _kl_log_ratio(log_prob, ref_log_prob)


def kl_k2(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 (biased, low variance, >= 0)."""
    return 0.5 * _kl_log_ratio(log_prob, ref_log_prob).square()


def kl_k3(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k3 = exp(r) - r - 1 with r = log pi_ref - log pi clamped to [-20, 20] (Schulman's
    unbiased, low-variance, non-negative estimator of KL(pi || pi_ref); GRPO's KL term)."""
    r = -_kl_log_ratio(log_prob, ref_log_prob)
    return r.exp() - r - 1.0


KL_ESTIMATORS.update({"k1": kl_k1, "k2": kl_k2, "k3": kl_k3})

# Which way round the estimator reads the two log-probs (the released code's kl_direction).
KL_DIRECTIONS = ("forward", "reverse")


def kl_penalty(
    log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kind: str = "k3", direction: str = "reverse"
) -> torch.Tensor:
    """Per-token KL estimate to the reference policy (no reduction).

    ``reverse``: the estimators above as written (k3 on r = log pi_ref - log pi: Schulman's unbiased
    estimator of KL(pi || pi_ref) under samples of pi). ``forward``: the two log-probs swapped, as the
    released PTD-PO scripts set it (``kl_direction=forward_kl``): k3 = exp(r) - r - 1 on
    r = log pi - log pi_ref, i.e. on the ratio pi / pi_ref."""
    if direction == "forward":
        log_prob, ref_log_prob = ref_log_prob, log_prob
    elif direction != "reverse":
        raise ValueError(f"KL direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    return get_kl_fn(kind)(log_prob, ref_log_prob)


# ------------------------------------------------------------------------- reward shaping


def overlong_reward_penalty(
    response_lengths: torch.Tensor | Sequence[int],
    max_response_len: int,
    overlong_buffer_len: int,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """DAPO soft overlong punishment, added to the reward. With L_max = ``max_response_len``,
    L_cache = ``overlong_buffer_len`` and |y| the response length:

        R_length(y) = 0                                    if |y| <= L_max - L_cache
                    = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                    = -1                                   if |y| > L_max
    (linear from 0 to -1 over the cache window, continuous), times ``penalty_factor``.
    """
    if not (0 < overlong_buffer_len <= max_response_len):
        raise ValueError(f"need 0 < overlong_buffer_len <= max_response_len, got {overlong_buffer_len}, "
                         f"{max_response_len}")
    lengths = _float(response_lengths)
    expected = max_response_len - overlong_buffer_len
    return ((expected - lengths) / overlong_buffer_len).clamp(-1.0, 0.0) * penalty_factor


# ----------------------------------------------------------------------------- PTD term


def reduce_ptd_loss(
    token_divergence: torch.Tensor,
    global_ptd_token_count: float | torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_PTD share of this micro-batch: sum of the per-token divergences of its PTD tokens
    divided by the number of PTD tokens of the whole optimizer step (all micro-batches and
    ranks; METHOD.md 2.7). Summed over micro-batches it is the mean over all PTD tokens, so
    gradient accumulation and data parallelism do not change it. A step with no PTD token
    gives 0. ``mask`` (same shape as ``token_divergence``) selects the PTD tokens if given.
    """
    values = token_divergence if mask is None else token_divergence * mask.to(token_divergence.dtype)
    return values.sum() / _at_least_one(global_ptd_token_count, values)
