"""The typed training configuration: one schema, loaded from the flow's Config JSON.

Unknown keys are an error (a typo such as ``lamda_ptd`` must not silently train the baseline).
Values that depend on the algorithm (clip range, loss aggregation, KL) default to ``None`` and are
resolved by :meth:`TrainConfig.resolved` to the paper's choice for that algorithm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

ALGORITHMS = ("grpo", "dapo", "gspo")

# The paper's / the algorithms' own defaults (METHOD.md 2.7).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {"clip_low": 0.2, "clip_high": 0.2, "loss_agg": "token-mean", "kl_coef": 0.01,
             "dynamic_sampling": False, "overlong_buffer": 0},
    "dapo": {"clip_low": 0.2, "clip_high": 0.28, "loss_agg": "token-mean", "kl_coef": 0.0,
             "dynamic_sampling": True, "overlong_buffer": None},
    "gspo": {"clip_low": 3e-4, "clip_high": 4e-4, "loss_agg": "seq-mean-token-mean", "kl_coef": 0.0,
             "dynamic_sampling": False, "overlong_buffer": 0},
}


class ConfigError(ValueError):
    pass


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
    lambda_ptd: float = 0.05
    tau_ptd: float = 1.0
    k: int = 100
    support: Literal["union", "student", "teacher"] = "union"
    divergence: Literal["jsd", "forward_kl", "reverse_kl"] = "jsd"
    beta: float = 0.5
    teacher: Literal["ref", "old_policy"] = "ref"
    teacher_context: Literal["hint", "answer", "solution"] = "hint"
    mask_ref_kl_on_ptd_groups: bool = True
    ptd_on_filtered_groups: bool = True
    ptd_all_trajectories: bool = False
    ptd_skip_truncated: bool = False
    chunk_size: int = 1024
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
class TrainConfig:
    policy: str = "tiny:0.5m"
    algorithm: Literal["grpo", "dapo", "gspo"] = "grpo"
    advantage: Literal["grpo", "drgrpo"] = "grpo"
    group_size: int = 8
    prompts_per_step: int = 4
    mini_batch_prompts: int | None = None  # None: one optimizer step per batch
    micro_batch_rollouts: int = 8  # rollouts per forward/backward (gradient accumulation)
    epochs_per_batch: int = 1
    max_steps: int = 10
    epochs: float | None = None  # if set, it replaces max_steps: ceil(epochs * n_items / prompts_per_step)
    lr: float = 1e-6
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    clip_low: float | None = None
    clip_high: float | None = None
    loss_agg: str | None = None
    kl_coef: float | None = None
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_length: int = 4096
    max_response_length: int = 64
    acc_weight: float = 0.9
    format_weight: float = 0.1
    think_prefilled: bool = False
    enable_thinking: bool = False
    dynamic_sampling: bool | None = None
    max_resample_rounds: int = 3
    overlong_buffer: int | None = None  # DAPO: length of the soft-penalty window; 0 disables
    overlong_penalty: float = 1.0
    ptd: PTDConfig = field(default_factory=PTDConfig)
    precision: Literal["fp32", "bf16"] = "fp32"
    sharding: Literal["none", "fsdp"] = "none"  # data-parallel replicas, or FSDP2 parameter sharding
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    seed: int = 0
    rollout_backend: Literal["hf", "vllm"] = "hf"
    vllm: dict[str, Any] = field(default_factory=dict)
    min_pixels: int | None = None
    max_pixels: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    max_nonfinite_in_row: int = 3
    reward_workers: int = 4
    reward_timeout_s: float = 5.0

    def resolved(self) -> TrainConfig:
        """A copy with the algorithm-dependent ``None`` fields filled in and every value checked."""
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"train.algorithm: {self.algorithm!r} is not one of {ALGORITHMS}")
        out = dataclasses.replace(self, ptd=dataclasses.replace(self.ptd))
        for key, value in ALGO_DEFAULTS[self.algorithm].items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        if out.overlong_buffer is None:
            out.overlong_buffer = max(1, out.max_response_length // 4)
        _check(out)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is needed: as the PTD teacher, or for the KL term."""
        return (self.ptd.distills and self.ptd.teacher == "ref") or bool(self.kl_coef)


def _check(c: TrainConfig) -> None:
    positive = ["group_size", "prompts_per_step", "micro_batch_rollouts", "epochs_per_batch",
                "max_response_length", "max_prompt_length"]
    for name in positive:
        if getattr(c, name) < 1:
            raise ConfigError(f"train.{name}: must be >= 1, got {getattr(c, name)}")
    if c.mini_batch_prompts is not None and not (1 <= c.mini_batch_prompts <= c.prompts_per_step):
        raise ConfigError("train.mini_batch_prompts: must be between 1 and train.prompts_per_step")
    if c.temperature <= 0:
        raise ConfigError("train.temperature: must be > 0 (the PTD logits are divided by it)")
    if not 0 < c.top_p <= 1:
        raise ConfigError("train.top_p: must be in (0, 1]")
    if c.ptd.lambda_ptd < 0 or c.ptd.k < 1 or not 0 < c.ptd.beta < 1:
        raise ConfigError("train.ptd: need lambda_ptd >= 0, k >= 1 and 0 < beta < 1")
    if not 0 < c.ptd.tau_ptd <= 1:
        raise ConfigError("train.ptd.tau_ptd: must be in (0, 1]")
    if c.algorithm == "gspo" and c.loss_agg != "seq-mean-token-mean":
        raise ConfigError("train.loss_agg: GSPO is defined with sequence-level averaging")


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if name == "ptd":
            value = _from_dict(PTDConfig, value, f"{where}.ptd")
        elif name == "adam_betas":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def train_config_from_dict(data: dict[str, Any], where: str = "train") -> TrainConfig:
    """Build and resolve a TrainConfig from the ``train`` section of a flow config."""
    return _from_dict(TrainConfig, data, where).resolved()
