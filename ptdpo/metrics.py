"""Every training metric, named once: its column in ``train_metrics``, its label for plots and a one-line
meaning (for the card's glossary); and the accumulators the trainer sums them with.

The reports pick which metrics they plot by name (``curves(...)``); the labels come from here only.
This module imports neither torch nor pandas: the accumulators take tensors by duck typing and the
cross-rank sum as a function, so the report steps can import the registry cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    meaning: str


METRICS: tuple[Metric, ...] = (
    # -- rollouts of the step (means over this step's rollouts, all ranks)
    Metric("reward", "reward", "mean reward: acc_weight * accuracy + format_weight * format, plus overlong shaping"),
    Metric("accuracy", "rollout accuracy", "fraction of rollouts whose final answer is correct"),
    Metric("format", "format", "fraction of rollouts in the required <think> / answer format"),
    Metric("informative_groups", "informative-group fraction",
           "fraction of groups with both correct and failed rollouts (the ones with a policy-gradient signal)"),
    Metric("all_fail_groups", "all-fail group fraction", "fraction of groups in which every rollout failed"),
    Metric("all_correct_groups", "all-correct group fraction", "fraction of groups in which every rollout is correct"),
    Metric("ptd_rollout_frac", "PTD rollout fraction",
           "fraction of rollouts that get the PTD (distillation) term (OPSD: every rollout with the teacher context)"),
    Metric("ptd_token_frac", "PTD token fraction", "fraction of response tokens that get the PTD term"),
    Metric("response_length", "response length (tokens)", "mean completion length in tokens"),
    Metric("truncated_frac", "truncated fraction", "fraction of rollouts cut by train.max_response_length"),
    Metric("pg_rollout_frac", "policy-gradient rollout fraction",
           "fraction of rollouts in the policy-gradient term (DAPO dynamic sampling drops uniform groups)"),
    Metric("kl_masked_rollout_frac", "rollouts with the reference KL masked",
           "fraction of rollouts whose reference KL is switched off (groups that get PTD)"),
    Metric("response_tokens", "response tokens", "completion tokens of the step, summed over ranks"),
    # -- HDPO's privileged round (counts summed over ranks; docs/baselines.md)
    Metric("hdpo_cliff_groups", "HDPO cliff groups",
           "groups whose rollouts all failed and whose item has the ground truth: each gets privileged rollouts"),
    Metric("hdpo_privileged_rollouts", "HDPO privileged rollouts",
           "rollouts sampled from the privileged prompt (the ground truth in context)"),
    Metric("hdpo_privileged_accuracy", "HDPO privileged accuracy",
           "fraction of the privileged rollouts that are correct (NaN without any)"),
    Metric("hdpo_kept_rollouts", "HDPO kept rollouts",
           "correct privileged rollouts kept for distillation (R = 1 filter); they are not counted in the rows above"),
    # -- teacher forward (PTD rollouts only)
    Metric("teacher_entropy", "teacher entropy (nats/token)",
           "entropy of the hinted teacher on the PTD tokens (near ln V: a broken teacher)"),
    Metric("teacher_entropy_correct", "teacher entropy, correct rollouts (nats/token)",
           "teacher entropy on the tokens of correct PTD rollouts"),
    Metric("teacher_entropy_failed", "teacher entropy, failed rollouts (nats/token)",
           "teacher entropy on the tokens of failed PTD rollouts"),
    Metric("teacher_nll", "teacher NLL (nats/token)", "negative log-likelihood of the student's tokens under the teacher"),
    # -- the update (means over the step's optimizer steps)
    Metric("pg_loss", "policy-gradient loss", "L_RL of the step, the policy loss with the step's global normaliser"),
    Metric("kl_ref", "KL to reference",
           "mean k-estimator KL to the frozen reference over the tokens whose KL is on (PTD masks it on its groups)"),
    Metric("kl_ref_all", "KL to reference, all rollouts",
           "the same KL as a mean over every policy-gradient token, the KL-masked ones counted as 0 (still "
           "measured when PTD masks every group; with kl_normalizer all_tokens the KL term of the loss)"),
    Metric("kl_ref_true", "KL(policy || reference), every rollout",
           "KL(pi || pi_ref) per token over every policy-gradient token of every rollout, masked or not (k3 on "
           "r = log pi_ref - log pi, Schulman's unbiased estimator, whatever train.kl_estimator says): the policy's "
           "real divergence from the reference, which kl_ref_all under-counts where PTD masks the KL"),
    Metric("ptd_loss", "PTD loss (Top-K JSD)",
           "L_PTD: mean Top-K divergence over the step's PTD tokens (unweighted); OPSD's or HDPO's distillation "
           "term when those run"),
    Metric("ptd_loss_weighted", "lambda_ptd * PTD loss",
           "lambda_ptd * L_PTD: the PTD term as it enters the loss (HDPO: lambda_distill * its term)"),
    # -- PAPO (policy-gradient tokens; docs/baselines.md)
    Metric("papo_loss", "PAPO terms", "-gamma KL_prcp + eta_1 H + eta_2 H_mask as they enter the loss"),
    Metric("perception_kl", "perception KL (nats/token)",
           "KL_prcp: k3 estimate of KL(pi(.|image) || pi(.|masked image)) on the policy-gradient tokens"),
    Metric("papo_entropy", "sampled-token entropy, image (nats/token)",
           "PAPO's entropy estimate -log pi(o_t | image) on the policy-gradient tokens"),
    Metric("papo_masked_entropy", "sampled-token entropy, masked image (nats/token)",
           "PAPO's entropy estimate -log pi(o_t | masked image) on the policy-gradient tokens"),
    Metric("papo_masked_patch_frac", "masked patch fraction", "fraction of image patch rows PAPO blacked out"),
    Metric("student_entropy", "student entropy (nats/token)", "policy entropy on the policy-gradient tokens"),
    Metric("student_entropy_correct", "student entropy, correct rollouts (nats/token)",
           "policy entropy on the tokens of correct rollouts"),
    Metric("student_entropy_failed", "student entropy, failed rollouts (nats/token)",
           "policy entropy on the tokens of failed rollouts"),
    Metric("grad_norm", "gradient norm", "gradient norm before clipping (train.grad_clip)"),
    Metric("skipped_nonfinite", "skipped updates", "1 when the update was skipped for a non-finite gradient"),
    # -- the policy loss's statistics (token-weighted means over this rank's micro-batches)
    Metric("pg_clipfrac", "clip fraction", "fraction of tokens whose PPO clip is active (low + high)"),
    Metric("pg_clipfrac_low", "clip fraction (low)", "fraction of tokens with A < 0 and ratio < 1 - clip_low"),
    Metric("pg_clipfrac_high", "clip fraction (high)", "fraction of tokens with A > 0 and ratio > 1 + clip_high"),
    Metric("pg_clipfrac_dual", "dual-clip fraction", "fraction of tokens with A < 0 and ratio above the dual clip"),
    Metric("seq_clipfrac", "sequence clip fraction", "GSPO: fraction of sequences whose clip is active"),
    Metric("seq_clipfrac_low", "sequence clip fraction (low)", "GSPO: A < 0 and s < 1 - clip_low"),
    Metric("seq_clipfrac_high", "sequence clip fraction (high)", "GSPO: A > 0 and s > 1 + clip_high"),
    Metric("ppo_kl", "KL to pi_old", "mean of log pi_old - log pi over the policy-gradient tokens"),
    Metric("ratio_mean", "ratio mean", "mean importance ratio pi / pi_old (GSPO: sequence ratio)"),
    Metric("ratio_min", "ratio min", "smallest importance ratio"),
    Metric("ratio_max", "ratio max", "largest importance ratio"),
    # -- the step
    Metric("step", "step", "optimizer-step counter after this step"),
    Metric("lr", "learning rate", "learning rate after this step's scheduler update"),
    Metric("time_rollout", "rollout time (s)", "seconds spent sampling rollouts"),
    Metric("time_reward", "reward time (s)", "seconds spent scoring rollouts"),
    Metric("time_ref", "reference time (s)", "seconds spent on reference and old-policy log-probs"),
    Metric("time_teacher", "teacher time (s)", "seconds spent on the teacher forward"),
    Metric("time_update", "update time (s)", "seconds spent on the policy update and the weight sync"),
    Metric("time_step", "step time (s)", "seconds for the whole step"),
    Metric("tokens_per_s", "tokens per second", "response tokens of the step divided by the step time"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
if len(BY_NAME) != len(METRICS):
    raise RuntimeError("ptdpo.metrics: a metric name is defined twice")


def label(name: str) -> str:
    """The plot label of a registered metric."""
    try:
        return BY_NAME[name].label
    except KeyError:
        raise KeyError(f"unknown training metric {name!r}; registered: {sorted(BY_NAME)}") from None


def curves(*names: str) -> tuple[tuple[str, str], ...]:
    """(column, label) pairs of registered metrics, in the given order (what a report plots)."""
    return tuple((name, label(name)) for name in names)


def glossary(names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(column, meaning) of the given metrics (all of them by default), for a card's glossary."""
    return [(n, BY_NAME[n].meaning) for n in (names if names is not None else BY_NAME) if n in BY_NAME]


# --------------------------------------------------------------------------------------- accumulators

AllSum = Callable[[float], float]


def _identity(x: float) -> float:
    return float(x)


@dataclass
class OutcomeEntropy:
    """Token entropy split by the outcome of the token's rollout (correct / failed): the one place the
    split is coded, for the student and the teacher alike."""

    sum_correct: float = 0.0
    sum_failed: float = 0.0
    n_correct: int = 0
    n_failed: int = 0

    def add(self, entropy: Any, correct: Any) -> None:
        """``entropy`` [N] per-token entropies, ``correct`` [N] bool: the token's rollout is correct."""
        self.sum_correct += float(entropy[correct].sum())
        self.sum_failed += float(entropy[~correct].sum())
        self.n_correct += int(correct.sum())
        self.n_failed += int((~correct).sum())

    def reduce(self, all_sum: AllSum = _identity) -> OutcomeEntropy:
        """The sums over data-parallel ranks (a collective: every rank calls it, in the same order)."""
        return OutcomeEntropy(*(all_sum(v) for v in (self.sum_correct, self.sum_failed, self.n_correct, self.n_failed)))

    @property
    def n(self) -> float:
        return self.n_correct + self.n_failed

    def metrics(self, prefix: str) -> dict[str, float]:
        """``prefix`` (all tokens), ``prefix_correct`` and ``prefix_failed`` (NaN without such tokens)."""
        return {
            prefix: (self.sum_correct + self.sum_failed) / max(self.n, 1),
            f"{prefix}_correct": self.sum_correct / self.n_correct if self.n_correct else float("nan"),
            f"{prefix}_failed": self.sum_failed / self.n_failed if self.n_failed else float("nan"),
        }


@dataclass
class UpdateTotals:
    """Sums over the micro-batches of one optimizer step, turned into the logged metrics by ``metrics``."""

    pg_loss: float = 0.0  # sum of the micro-batches' L_RL shares
    kl_ref_sum: float = 0.0  # sum of the masked per-token KL
    kl_true_sum: float = 0.0  # sum of the k3 KL(pi || pi_ref) over every policy-gradient token
    ptd_loss_sum: float = 0.0  # sum of the per-token PTD divergences
    policy_stats: dict[str, float] = field(default_factory=dict)  # token-weighted sums
    policy_tokens: int = 0
    student_entropy: OutcomeEntropy = field(default_factory=OutcomeEntropy)
    papo: bool = False  # the run has PAPO's terms: their rows are reported (a collective on every rank)
    true_kl: bool = False  # the run scores the reference: kl_ref_true is reported (a collective on every rank)
    papo_sums: dict[str, float] = field(default_factory=dict)  # papo_loss and the PAPO token sums

    def add(self, parts: Mapping[str, Any], pg_tokens: int) -> None:
        """One micro-batch's loss parts (``ptdpo_loss``); ``pg_tokens`` weighs its policy statistics."""
        for name, value in parts.items():
            if name == "pg_loss":
                self.pg_loss += float(value)
            elif name == "kl_ref_sum":
                self.kl_ref_sum += float(value)
            elif name == "kl_ref_true_sum":
                self.kl_true_sum += float(value)
            elif name == "ptd_loss_sum":
                self.ptd_loss_sum += float(value)
            elif name in PAPO_PARTS:
                self.papo_sums[name] = self.papo_sums.get(name, 0.0) + float(value)
            elif name not in ("kl_ref", "ptd_loss"):  # shares: the step's means are formed from the sums
                self.policy_stats[name] = self.policy_stats.get(name, 0.0) + float(value) * pg_tokens
        if "pg_loss" in parts:
            self.policy_tokens += pg_tokens

    def metrics(self, counts: Any, lambda_ptd: float, all_sum: AllSum = _identity) -> dict[str, float]:
        """The step's update metrics. ``counts`` (``LossCounts``) holds the global token counts; the
        policy statistics stay this rank's token-weighted means, the rest is summed over ranks."""
        out = {k: v / max(self.policy_tokens, 1) for k, v in self.policy_stats.items()}
        out.update(self.student_entropy.reduce(all_sum).metrics("student_entropy"))
        out["ptd_loss"] = all_sum(self.ptd_loss_sum) / max(counts.ptd_tokens, 1)
        out["ptd_loss_weighted"] = lambda_ptd * out["ptd_loss"]
        out.update(kl_ref_means(all_sum(self.kl_ref_sum), counts.kl_tokens, counts.pg_tokens))
        if self.true_kl:
            out["kl_ref_true"] = all_sum(self.kl_true_sum) / max(counts.pg_tokens, 1)
        out["pg_loss"] = all_sum(self.pg_loss)
        if self.papo:
            sums = {name: all_sum(self.papo_sums.get(name, 0.0)) for name in PAPO_PARTS}
            out["papo_loss"] = sums["papo_loss"]
            for name in PAPO_PARTS[1:]:
                out[name.removesuffix("_sum")] = sums[name] / max(counts.pg_tokens, 1)
        return out


# PAPO's loss parts (``ptdpo.objectives.ptdpo_loss``): its share of the loss, then its token sums
PAPO_PARTS = ("papo_loss", "perception_kl_sum", "papo_entropy_sum", "papo_masked_entropy_sum")


def hdpo_metrics(counts: Mapping[str, float]) -> dict[str, float]:
    """HDPO's rows from the privileged round's counts summed over ranks (nothing without HDPO)."""
    if not counts:
        return {}
    out = {k: float(counts[k]) for k in ("hdpo_cliff_groups", "hdpo_privileged_rollouts", "hdpo_kept_rollouts")}
    sampled = out["hdpo_privileged_rollouts"]
    out["hdpo_privileged_accuracy"] = counts["hdpo_privileged_correct"] / sampled if sampled else float("nan")
    return out


def kl_ref_means(kl_sum: float, kl_tokens: float, pg_tokens: float) -> dict[str, float]:
    """The two reference-KL metrics of a step from its summed per-token KL: ``kl_ref``, the mean over the
    ``kl_tokens`` tokens whose KL is on, and ``kl_ref_all``, the mean over all ``pg_tokens``
    policy-gradient tokens with the masked ones counted as zero (0 without tokens)."""
    return {"kl_ref": kl_sum / max(kl_tokens, 1), "kl_ref_all": kl_sum / max(pg_tokens, 1)}


def mean_over_updates(updates: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the optimizer steps of one training step that logged it."""
    values: dict[str, list[float]] = {}
    for u in updates:
        for k, v in u.items():
            values.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in values.items()}
