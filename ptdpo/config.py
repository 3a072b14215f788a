"""The typed training configuration: one schema, loaded from the ``train`` section of a run config.

Unknown keys are an error (a typo such as ``lamda_ptd`` must not silently train the baseline), and so is
every value that does not fit its field: each field's annotation is its check (``ptdpo.config_fields``:
``bool`` takes only ``true``/``false``, ``int`` no string or fraction, ``Literal`` only the listed
values, ``PositiveFloat`` only numbers > 0...). Every problem names its key path and value, and all
problems are reported together. Values that depend on the algorithm (clip range, loss aggregation, KL)
default to ``None`` and are resolved by :meth:`TrainConfig.resolved` to the paper's choice for that
algorithm.

Defaults follow the paper and its released code (METHOD.md 2.7, 5): EasyR1's PPO clip 0.2 / 0.3 with
dual clip C = 3; the reference KL as the released scripts set it (k3 in the ``forward`` direction, the
masked KL divided by all policy-gradient tokens); PTD with DAPO without online filtering or overlong
shaping; the ``boxed`` prompt. Each other choice is a named option (docs/choices.md lists them).
:meth:`TrainConfig.loss_options` hands the loss its options in one piece.

The baselines of the paper's main table (METHOD.md 3, docs/baselines.md) are options of the same schema:
OPSD is PTD's distillation on every rollout (``ptd.select: all``, ``ptd.support: full``) with
``policy_gradient: false``; HDPO is the ``hdpo`` section; PAPO the ``papo`` section.
:attr:`TrainConfig.distillation` says which distillation term a run has (PTD's, OPSD's or HDPO's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ptdpo.config_fields import (
    FieldProblems,
    Fraction,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    build,
    instance_problems,
)

# The paper's / the algorithms' own defaults (METHOD.md 2.7). GRPO's clip is EasyR1's (the released
# code's): clip_ratio_low 0.2, clip_ratio_high 0.3.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {"clip_low": 0.2, "clip_high": 0.3, "loss_agg": "token-mean", "kl_coef": 0.01,
             "dynamic_sampling": False, "overlong_buffer": 0},
    "dapo": {"clip_low": 0.2, "clip_high": 0.28, "loss_agg": "token-mean", "kl_coef": 0.0,
             "dynamic_sampling": True, "overlong_buffer": None},
    "gspo": {"clip_low": 3e-4, "clip_high": 4e-4, "loss_agg": "seq-mean-token-mean", "kl_coef": 0.0,
             "dynamic_sampling": False, "overlong_buffer": 0},
}

# PTD on top of DAPO, as the released PTD-DAPO scripts run it (online_filtering=false).
PTD_DAPO_DEFAULTS: dict[str, Any] = {"dynamic_sampling": False, "overlong_buffer": 0}


# The loss aggregations of ptdpo.objectives.policy (LOSS_AGG_MODES; a test keeps the two equal): the
# config names them without importing torch.
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# Adam's betas may be 0 (no momentum) but not 1; the JSD mixing weight beta lies strictly inside (0, 1).
AdamBeta = Annotated[float, Range(ge=0, lt=1)]
OpenUnit = Annotated[float, Range(gt=0, lt=1)]
# Dual-clip PPO's constant: the loss of a negative-advantage token is capped at -A * c, so c > 1.
DualClip = Annotated[float, Range(gt=1)]
DUAL_CLIP_C = 3.0  # EasyR1's clip_ratio_dual, on in every released script
# The reference KL (METHOD.md 2.7), as ptdpo.objectives.policy.KL_DIRECTIONS / loss.KL_NORMALIZERS name them.
KlDirection = Literal["forward", "reverse"]
KlNormalizer = Literal["all_tokens", "kl_tokens"]
PromptTemplateName = Literal["boxed", "answer_tags"]  # ptdpo.prompts.PROMPT_TEMPLATES (a test keeps them equal)


class ConfigError(FieldProblems):
    """A training config that cannot be used; ``problems`` lists every problem, each with its key path."""


def merge_patch(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) of config dicts: objects merge recursively, ``None`` removes a
    key, anything else replaces. Neither input is modified."""
    import copy

    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_patch(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class PTDConfig:
    enabled: bool = True
    lambda_ptd: NonNegativeFloat = 0.05
    tau_ptd: Fraction = 1.0
    k: PositiveInt = 100
    # union / student / teacher: the Top-K support (METHOD.md 2.6); full: the whole vocabulary, no Top-K and
    # no tail (OPSD's full JSD; ptdpo.objectives.full_vocab), k unused.
    support: Literal["union", "student", "teacher", "full"] = "union"
    divergence: Literal["jsd", "forward_kl", "reverse_kl"] = "jsd"
    beta: OpenUnit = 0.5
    teacher: Literal["ref", "old_policy"] = "ref"
    teacher_context: Literal["hint", "answer", "solution"] = "hint"
    # tau: PTD's rule (the failed rollouts of groups whose accuracy is below tau_ptd); all: every rollout
    # whose item has the teacher context, whatever its reward (OPSD, ptdpo.objectives.ptd_mask).
    select: Literal["tau", "all"] = "tau"
    mask_ref_kl_on_ptd_groups: bool = True
    ptd_on_filtered_groups: bool = True
    ptd_all_trajectories: bool = False
    ptd_skip_truncated: bool = False
    chunk_size: PositiveInt = 1024
    # Ablation (METHOD.md 2.7): switch off the reference KL on the groups PTD would select, but apply
    # no distillation, separating the effect of KL masking from that of the hint teacher.
    mask_only: bool = False

    # The one home of "what does PTD do in this run": the flow (hint generation, audit), the trainer (mask,
    # teacher forward) and the study all ask these three, never the raw fields.
    @property
    def selects_rollouts(self) -> bool:
        """The PTD mask is computed: to distill, or (``mask_only``) to switch the reference KL off there."""
        return self.enabled and (self.lambda_ptd > 0 or self.mask_only)

    @property
    def distills(self) -> bool:
        """The PTD loss is applied (not for baselines, nor the KL-masking-only ablation)."""
        return self.selects_rollouts and self.lambda_ptd > 0 and not self.mask_only

    @property
    def uses_hints(self) -> bool:
        """The run needs audited hints: PTD selects rollouts by "has a usable hint" (teacher context
        ``hint``). True for ``mask_only`` too: its mask is the one PTD would use."""
        return self.selects_rollouts and self.teacher_context == "hint"


@dataclass
class HDPOConfig:
    """HDPO (arXiv 2603.23871): on "cliff" prompts (every rollout of the group failed) the policy samples
    ``num_samples`` privileged rollouts from the prompt with the ground truth in it (``context``), keeps the
    correct ones (R = 1), and distils the teacher's token distribution on them into the student, which
    sees the answer-free prompt: L = L_RL + lambda_distill * L_distill (cliff prompts only). The
    divergence is the one ``ptd`` configures (``divergence``, ``k``, ``support``, ``beta``)."""

    enabled: bool = False
    lambda_distill: PositiveFloat = 0.05
    num_samples: PositiveInt = 8  # privileged rollouts per cliff prompt
    max_kept_per_prompt: PositiveInt | None = None  # None: every correct privileged rollout
    context: Literal["answer", "solution"] = "answer"  # the ground truth in the privileged prompt
    # old_policy: the policy itself before the update (teacher and student share the weights, as HDPO
    # defines it); ref: the frozen reference on the privileged prompt
    teacher: Literal["old_policy", "ref"] = "old_policy"


@dataclass
class PAPOConfig:
    """PAPO (arXiv 2507.06448): a second policy forward on each rollout with ``mask_ratio`` of its image
    patches blacked out; the loss gains -gamma KL_prcp + entropy_coef H + masked_entropy_coef H_mask
    (``ptdpo.objectives.perception``) over the policy-gradient tokens."""

    enabled: bool = False
    gamma: NonNegativeFloat = 0.01  # weight of the implicit perception loss (the KL it maximises)
    mask_ratio: OpenUnit = 0.6  # probability that an image patch (one processor patch row) is blacked out
    entropy_coef: NonNegativeFloat = 0.03  # eta_1: the original-input policy's entropy
    masked_entropy_coef: NonNegativeFloat = 0.03  # eta_2: the masked-input policy's entropy
    kl_clamp: PositiveFloat | None = 10.0  # per-token KL_prcp at most this (the released low_var_kl's clamp)
    # true: the masked forward carries gradient (the paper's objective: both branches, eta_2 acts); false:
    # it runs without gradient, as the released code's default (then eta_2 changes no weight)
    masked_gradient: bool = True


@dataclass(frozen=True)
class Distillation:
    """The one distillation term of a run: PTD's (OPSD is PTD with ``select: all``) or HDPO's."""

    kind: Literal["ptd", "hdpo"]
    weight: float  # lambda: the term's weight in the loss
    teacher: Literal["ref", "old_policy"]
    context: Literal["hint", "answer", "solution"]  # what the teacher's prompt adds

    @classmethod
    def of_ptd(cls, ptd: PTDConfig) -> Distillation:
        """PTD's term (OPSD's too: PTD with ``select: all``) as the ``ptd`` section sets it."""
        return cls("ptd", ptd.lambda_ptd, ptd.teacher, ptd.teacher_context)


@dataclass
class VLLMConfig:
    """Options of a vLLM engine (``train.vllm`` for colocated rollouts, ``eval.generation.vllm`` for
    evaluation), each a ``vllm.LLM`` argument; ``ptdpo.engines.vllm_args.engine_kwargs`` maps them.
    ``None`` defaults are decided where the engine is built, from its role and the platform."""

    tensor_parallel_size: PositiveInt = 1
    # None: 0.35 colocated with training (the trainer keeps the rest), 0.9 for an engine alone
    gpu_memory_utilization: Fraction | None = None
    max_model_len: PositiveInt | None = None  # None: the model's own context length
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    enforce_eager: bool = False  # no CUDA graphs or compilation: faster start, slower decoding
    # None: on where the platform supports it (CUDA), off elsewhere; true where it is unsupported is an error
    enable_sleep_mode: bool | None = None
    limit_images: PositiveInt | None = None  # images per prompt; None: 4 colocated with training, 8 alone
    # KV cache size in GiB (vLLM's kv_cache_memory_bytes). None: vLLM sizes it from gpu_memory_utilization,
    # on CPU as that share of the machine's RAM: set it there (1 GiB serves the tiny models)
    kv_cache_gib: PositiveFloat | None = None
    mm_processor_kwargs: dict[str, Any] | None = None  # to vLLM's image processor; train passes its min/max pixels
    seed: NonNegativeInt = 0  # the engine's own seed; samples are seeded per request
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # any other vllm.LLM argument, passed as given


@dataclass
class TrainConfig:
    # The library's default policy is for programmatic use; a run config must name its policy
    # (train_config_from_dict(require_policy=True)).
    policy: Name = "tiny:0.5m"
    algorithm: Literal["grpo", "dapo", "gspo"] = "grpo"
    advantage: Literal["grpo", "drgrpo"] = "grpo"
    group_size: PositiveInt = 8
    prompts_per_step: PositiveInt = 4
    mini_batch_prompts: PositiveInt | None = None  # None: one optimizer step per batch
    micro_batch_rollouts: PositiveInt = 8  # rollouts per forward/backward (gradient accumulation)
    epochs_per_batch: PositiveInt = 1
    max_steps: PositiveInt = 10
    epochs: PositiveFloat | None = None  # if set, it replaces max_steps: ceil(epochs * n_items / prompts_per_step)
    lr: PositiveFloat = 1e-6
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: NonNegativeInt = 0
    weight_decay: NonNegativeFloat = 0.01
    adam_betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    grad_clip: PositiveFloat = 1.0
    clip_low: PositiveFloat | None = None
    clip_high: PositiveFloat | None = None
    dual_clip_c: DualClip | None = DUAL_CLIP_C  # None: no dual clip
    loss_agg: LossAgg | None = None
    kl_coef: NonNegativeFloat | None = None
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    # forward (the released scripts' forward_kl): the estimator on r = log pi - log pi_ref; reverse: on
    # r = log pi_ref - log pi (Schulman's estimator of KL(pi || pi_ref)).
    kl_direction: KlDirection = "forward"
    # all_tokens (released): the masked per-token KL summed over the step and divided by all its
    # policy-gradient tokens; kl_tokens: divided by the tokens whose KL is on.
    kl_normalizer: KlNormalizer = "all_tokens"
    # The prompt and format of rollouts, the teacher, rewards (ptdpo.prompts). A run config sets it once
    # for training and evaluation as prompt.template; this field carries it to the trainer.
    prompt_template: PromptTemplateName = "boxed"
    temperature: PositiveFloat = 1.0
    top_p: Fraction = 1.0
    max_prompt_length: PositiveInt = 4096
    max_response_length: PositiveInt = 64
    acc_weight: NonNegativeFloat = 0.9
    format_weight: NonNegativeFloat = 0.1
    think_prefilled: bool = False
    enable_thinking: bool = False
    dynamic_sampling: bool | None = None
    max_resample_rounds: NonNegativeInt = 3
    overlong_buffer: NonNegativeInt | None = None  # DAPO: length of the soft-penalty window; 0 disables
    overlong_penalty: NonNegativeFloat = 1.0
    ptd: PTDConfig = field(default_factory=PTDConfig)
    # false: no advantage or policy-gradient term, only the distillation term (OPSD); the reference KL and
    # PAPO's terms live on policy-gradient tokens, so they go too
    policy_gradient: bool = True
    hdpo: HDPOConfig = field(default_factory=HDPOConfig)
    papo: PAPOConfig = field(default_factory=PAPOConfig)
    # Parameters (and the optimizer's weights) are float32 either way; bf16 is the compute dtype.
    precision: Literal["fp32", "bf16"] = "fp32"
    sharding: Literal["none", "fsdp"] = "none"  # data-parallel replicas, or FSDP2 parameter sharding
    optimizer_foreach: bool | None = None  # None: torch's choice (foreach on CUDA, off on CPU)
    # sharded: every rank writes its own shard files (DCP) into the checkpoint folder, which all ranks must
    # see (one node); full: rank 0 gathers and writes everything (any layout, e.g. node-local disks on
    # several nodes); auto: sharded for FSDP on one node, else full.
    checkpoint_format: Literal["auto", "sharded", "full"] = "auto"
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    seed: NonNegativeInt = 0
    rollout_backend: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    min_pixels: PositiveInt | None = None
    max_pixels: PositiveInt | None = None
    checkpoint_every: NonNegativeInt = 0  # 0: no periodic checkpoints
    keep_checkpoints: NonNegativeInt = 2  # 0: keep all
    max_nonfinite_in_row: PositiveInt = 3
    reward_workers: NonNegativeInt = 4  # 0: the reward module's default
    reward_timeout_s: PositiveFloat = 5.0

    def resolved(self, where: str = "train") -> TrainConfig:
        """A copy with the algorithm-dependent ``None`` fields filled in and every value checked (a config
        built in code gets the same checks as one read from JSON)."""
        problems = instance_problems(self, where)
        if problems:
            raise ConfigError(problems)
        out = dataclasses.replace(self, ptd=dataclasses.replace(self.ptd), vllm=dataclasses.replace(self.vllm),
                                  hdpo=dataclasses.replace(self.hdpo), papo=dataclasses.replace(self.papo))
        if self.algorithm == "dapo" and out.ptd.distills:
            # The released PTD-DAPO scripts run with online filtering off: no dynamic sampling, no overlong
            # shaping. Set dynamic_sampling true to keep it (ptd.ptd_on_filtered_groups: the dropped
            # all-fail groups still feed PTD).
            for key in ("dynamic_sampling", "overlong_buffer"):
                if getattr(out, key) is None:
                    setattr(out, key, PTD_DAPO_DEFAULTS[key])
        for key, value in ALGO_DEFAULTS[self.algorithm].items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        if out.overlong_buffer is None:
            out.overlong_buffer = max(1, out.max_response_length // 4)
        problems = _cross_field_problems(out, where)
        if problems:
            raise ConfigError(problems)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of ``ptdpo.objectives.ptdpo_loss`` this config sets (all but the counts,
        the tensors and the policy-loss function), from a resolved config."""
        unresolved = [k for k in ("clip_low", "clip_high", "loss_agg", "kl_coef") if getattr(self, k) is None]
        if unresolved:
            raise ConfigError([f"train.{k}: unresolved (call TrainConfig.resolved() first)" for k in unresolved])
        distill = self.distillation
        opts = {
            "kl_coef": self.kl_coef, "lambda_ptd": distill.weight if distill else self.ptd.lambda_ptd,
            "kl_estimator": self.kl_estimator,
            "kl_direction": self.kl_direction, "kl_normalizer": self.kl_normalizer,
            "clip_low": self.clip_low, "clip_high": self.clip_high, "dual_clip_c": self.dual_clip_c,
            "loss_agg_mode": self.loss_agg, "max_response_len": self.max_response_length,
        }
        if self.papo.enabled:
            opts.update(perception_coef=self.papo.gamma, entropy_coef=self.papo.entropy_coef,
                        masked_entropy_coef=self.papo.masked_entropy_coef, perception_kl_clamp=self.papo.kl_clamp)
        return opts

    @property
    def distillation(self) -> Distillation | None:
        """The run's distillation term (PTD's, OPSD's or HDPO's), or None: who teaches, with what context,
        at what weight. The trainer's teacher, its prompts and the loss weight all come from here."""
        if self.hdpo.enabled:
            h = self.hdpo
            return Distillation("hdpo", h.lambda_distill, h.teacher, h.context)
        return Distillation.of_ptd(self.ptd) if self.ptd.distills else None

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is needed: as the distillation teacher, or for the KL term."""
        distill = self.distillation
        return (distill is not None and distill.teacher == "ref") or bool(self.kl_coef)


def _cross_field_problems(c: TrainConfig, where: str) -> list[str]:
    """The checks that involve several fields (each field's own type and range is its annotation)."""
    problems = []
    if c.mini_batch_prompts is not None and c.mini_batch_prompts > c.prompts_per_step:
        problems.append(f"{where}.mini_batch_prompts: must be between 1 and {where}.prompts_per_step "
                        f"({c.prompts_per_step}), got {c.mini_batch_prompts}")
    if c.min_pixels is not None and c.max_pixels is not None and c.min_pixels > c.max_pixels:
        problems.append(f"{where}.min_pixels: must be <= {where}.max_pixels ({c.max_pixels}), got {c.min_pixels}")
    if c.algorithm == "gspo" and c.loss_agg != "seq-mean-token-mean":
        problems.append(f"{where}.loss_agg: GSPO is defined with sequence-level averaging "
                        f"('seq-mean-token-mean'), got {c.loss_agg!r}")
    if c.hdpo.enabled and c.ptd.distills:
        problems.append(f"{where}.hdpo.enabled: HDPO's distillation replaces PTD's (one distillation term per "
                        f"run); disable {where}.ptd (enabled false or lambda_ptd 0)")
    if not c.policy_gradient:
        if not c.ptd.distills:
            problems.append(f"{where}.policy_gradient: false leaves nothing to train without {where}.ptd's "
                            "distillation (OPSD: ptd.select 'all')")
        for section in ("hdpo", "papo"):
            if getattr(c, section).enabled:
                problems.append(f"{where}.{section}.enabled: {section.upper()} adds to the policy-gradient loss; "
                                f"it cannot run with {where}.policy_gradient false")
        if c.kl_coef:
            problems.append(f"{where}.kl_coef: the reference KL lives on policy-gradient tokens; set it to 0 "
                            f"with {where}.policy_gradient false, got {c.kl_coef}")
    return problems


def train_config_from_dict(data: dict[str, Any], where: str = "train", require_policy: bool = False) -> TrainConfig:
    """Build and resolve a TrainConfig from the ``train`` section of a config; :class:`ConfigError` lists
    every problem. ``require_policy``: ``policy`` must be given (a run config; the default tiny policy
    is only for code)."""
    problems = []
    if require_policy and isinstance(data, dict) and "policy" not in data:
        problems.append(f"{where}.policy: missing (the policy to train: tiny:<size>, a folder or a hub id)")
    try:
        cfg = build(TrainConfig, data, where)
    except FieldProblems as e:
        raise ConfigError(problems + e.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg.resolved(where)
