"""PAPO's perception terms (arXiv 2507.06448): the implicit perception loss and the double entropy loss.

The same completion o is scored twice by the policy: with the rollout's image I (log pi(o_t | q, I, o_<t))
and with a copy whose image patches are partly blacked out (log pi(o_t | q, I_mask, o_<t)). Per token,
with r_t = pi(o_t | q, I_mask, .) / pi(o_t | q, I, .):

    KL_prcp,t = r_t - log r_t - 1       (Schulman's k3 estimator of KL(pi(.|q, I) || pi(.|q, I_mask)) under
                                         samples of pi(.|q, I); the released code's low_var_kl with the
                                         masked log-probs in the reference's place, clamped to [0, kl_clamp])
    H_t       = -log pi(o_t | q, I, .)      H_mask,t = -log pi(o_t | q, I_mask, .)
                                        (the paper's entropy estimates: the sampled tokens' surprisal)

and PAPO adds to the RL loss (each aggregated like the policy loss, over the policy-gradient tokens)

    - gamma * KL_prcp + eta_1 * H + eta_2 * H_mask

so minimising the loss RAISES the perception KL (the answer should depend on the image) while the two
entropy terms hold both policies' entropy down (the paper's remedy for "KL_prcp hacking", where the
masked-input policy is driven to high entropy to inflate the KL).
"""

from __future__ import annotations

import torch

from ptdpo.objectives.policy import LOG_RATIO_CLAMP

PERCEPTION_KL_CLAMP = 10.0  # the released low_var_kl clamps the per-token estimate to [-10, 10]


def perception_kl(log_prob: torch.Tensor, masked_log_prob: torch.Tensor, kl_clamp: float | None = PERCEPTION_KL_CLAMP
                  ) -> torch.Tensor:
    """Per-token KL_prcp,t = r - log r - 1, r = exp(masked_log_prob - log_prob) (module docstring), with the
    log-ratio clamped to [-20, 20] and the value to at most ``kl_clamp`` (None: no clamp). Gradients flow
    into both inputs (pass ``masked_log_prob`` detached for the released code's one-sided gradient)."""
    log_r = (masked_log_prob - log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    kl = log_r.exp() - log_r - 1.0
    return kl if kl_clamp is None else kl.clamp(max=kl_clamp)


def perception_terms(
    log_prob: torch.Tensor,
    masked_log_prob: torch.Tensor,
    gamma: float,
    entropy_coef: float,
    masked_entropy_coef: float,
    kl_clamp: float | None = PERCEPTION_KL_CLAMP,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PAPO's per-token loss l_t = -gamma KL_prcp,t + eta_1 H_t + eta_2 H_mask,t (module docstring), and its
    per-token parts (``perception_kl``, ``entropy``, ``masked_entropy``; unweighted). Shapes: any, equal;
    the caller aggregates l_t over its policy-gradient tokens."""
    if log_prob.shape != masked_log_prob.shape:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and masked_log_prob {tuple(masked_log_prob.shape)} "
                         "differ in shape")
    for name, value in (("gamma", gamma), ("entropy_coef", entropy_coef), ("masked_entropy_coef", masked_entropy_coef)):
        if value < 0:
            raise ValueError(f"perception_terms: {name} must be >= 0, got {value}")
    kl = perception_kl(log_prob, masked_log_prob, kl_clamp)
    entropy, masked_entropy = -log_prob, -masked_log_prob
    per_token = -gamma * kl + entropy_coef * entropy + masked_entropy_coef * masked_entropy
    return per_token, {"perception_kl": kl, "entropy": entropy, "masked_entropy": masked_entropy}
