"""The sections of the run config (``ptdpo.run_config``): their types and their builders.

``data``, ``hints`` and ``eval`` are made of other parts' types, checked by those types' own rules after
the field checks (``ptdpo.config_fields``): ``DatasetSpec`` (``data.<set>``), ``resolve_benchmark`` and
``BenchmarkSpec`` (``eval.benchmarks``), ``GenerationConfig`` (``eval.generation``), ``AuditConfig``
(``hints.audit``) and the hint generator's constructor (``hints.generator``: its signature binds and its
annotations type the keywords, without building it). ``resources``, ``retry``, ``timeout``,
``kubernetes``, ``schedule`` and ``report`` are what Metaflow's decorators get (``flows/_common.py``);
``tracking`` is ``ptdpo.tracking.TrackingSection``.

Every builder raises :class:`RunConfigError` listing every problem of its section, each naming the key
path and the offending value.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ptdpo.config import PromptTemplateName
from ptdpo.config_fields import (
    Doc,
    FieldProblems,
    NonEmpty,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Range,
    build,
    check_value,
    field_hints,
    problems_for,
    show,
    unknown_keys_problem,
)
from ptdpo.data.loaders import DatasetSpec
from ptdpo.eval.generation import GenerationConfig
from ptdpo.eval.registry import BenchmarkSpec, resolve_benchmark
from ptdpo.hints.audit import AuditConfig
from ptdpo.tracking import TrackingSection

# Steps whose requirements come from the config (the others are bookkeeping: 1 CPU, 4 GB).
RESOURCE_STEPS = ("prepare_data", "generate_hints", "audit", "train", "evaluate", "report")
RETRY_STEPS = ("generate_hints", "train", "evaluate")
TIMEOUT_STEPS = ("generate_hints", "audit", "train", "evaluate")
RESOURCE_KEYS = ("cpu", "memory", "gpu", "disk", "shared_memory")  # the @resources attributes
# Keys of config.kubernetes that are not @kubernetes attributes.
K8S_EXTRA_KEYS = {"steps", "env"}
# @kubernetes attributes a config may set (the pod-level ones; requirements go through @resources).
K8S_ATTRS = {
    "image", "image_pull_policy", "image_pull_secrets", "service_account", "secrets", "node_selector",
    "namespace", "tolerations", "labels", "annotations", "persistent_volume_claims", "shared_memory",
    "use_tmpfs", "tmpfs_size", "tmpfs_path", "qos", "security_context", "disk", "compute_pool",
}
# Bounds of GenerationConfig fields (its annotations carry types only).
GENERATION_RANGES = {"max_new_tokens": Range(ge=1), "k": Range(ge=1), "batch_size": Range(ge=1),
                     "temperature": Range(ge=0), "top_p": Range(gt=0, le=1), "limit": Range(ge=0),
                     "score_timeout_s": Range(gt=0), "score_workers": Range(ge=0),
                     "accuracy_weight": Range(ge=0), "format_weight": Range(ge=0)}
MODELS = ("base", "trained")


class RunConfigError(ValueError):
    """A run config that cannot be used. ``problems`` lists every problem found, each naming its key path
    and value; the message is one block: a headline and one line per problem."""

    def __init__(self, problems: list[str], name: Any = None):
        self.problems = list(problems)
        self.name = name
        n = len(self.problems)
        head = f"config {name!r} has {n} problem(s)" if name else f"the config has {n} problem(s)"
        super().__init__(head + ":\n  - " + "\n  - ".join(self.problems))


# --------------------------------------------------------------------------------------- sections
@dataclass
class DataSection:
    """``data``: the training set (``train``), further named sets (manifest only), and its options."""

    train: DatasetSpec
    sets: dict[str, DatasetSpec] = field(default_factory=dict)
    shuffle: bool = False  # shuffle the training items with the run's seed (matters for sharding only)
    manifest_benchmarks: bool = True  # load every benchmark once in prepare_data to record its manifest
    # drop training items whose prompt (images included, counted with the policy's processor) is over
    # train.max_prompt_length, and count them in the manifest
    filter_overlong: bool = True


DATA_OPTIONS = tuple(f.name for f in dataclasses.fields(DataSection) if f.name not in ("train", "sets"))


@dataclass
class PromptSection:
    """``prompt``: what the model is asked to write, ONE setting for the whole run. ``template`` (a
    ``ptdpo.prompts.PROMPT_TEMPLATES`` name: ``boxed``, the paper's, or ``answer_tags``) builds the
    training rollouts' prompts and the hinted teacher's, the format reward and the answer extraction,
    and the evaluation prompts and scoring alike (the run config hands it to ``train`` and ``eval``)."""

    template: PromptTemplateName = "boxed"


@dataclass
class HintAuditSection:
    """``hints.audit``: the run options of the audit and the ``AuditConfig`` fields."""

    floor: Probability | None = None  # the run fails below this pass rate (None: no floor)
    max_attempts: PositiveInt = 1  # generation attempts per item, rejected hints sent back with the reasons
    worst_n: NonNegativeInt = 10  # rejected examples kept in the report
    config: AuditConfig = field(default_factory=AuditConfig)


AUDIT_RUN_KEYS = tuple(f.name for f in dataclasses.fields(HintAuditSection) if f.name != "config")


@dataclass
class HintsSection:
    """``hints``: how hints are generated (``generator``: ``name`` and its constructor's keywords), in how
    many shards, whether structured, audited how, cached where (``cache_dir``: a shared folder; unset:
    the run's datastore, synced every ``cache_sync_s`` seconds)."""

    generator: dict[str, Any]
    shards: PositiveInt = 1
    structured: bool = True
    unstructured_mode: Literal["convert", "generate"] = "convert"
    audit: HintAuditSection = field(default_factory=HintAuditSection)
    cache_dir: str | None = None
    # how often finished hints are copied to the run's datastore (seconds; 0: after every hint), when
    # cache_dir is not set; a task killed loses at most this much work to its retry or resume
    cache_sync_s: NonNegativeFloat = 30.0

    def generator_config(self) -> dict[str, Any]:
        """The dict ``steps.hints.generate_hints_shard`` takes: the generator's keywords plus the run options
        (keys set inside ``generator`` win)."""
        out = copy.deepcopy(self.generator)
        out.setdefault("max_attempts", self.audit.max_attempts)
        out.setdefault("structured", self.structured)
        out.setdefault("unstructured_mode", self.unstructured_mode)
        out.setdefault("audit", dataclasses.asdict(self.audit.config))
        return out


@dataclass
class EvalSection:
    """``eval``: the benchmarks (resolved specs), which models are scored, and how answers are generated."""

    benchmarks: list[BenchmarkSpec]
    models: list[Literal["base", "trained"]] = field(default_factory=lambda: list(MODELS))
    generation: GenerationConfig | None = None


@dataclass
class StepResources:
    """``resources.<step>``: the ``@resources`` requirements of one step (memory and disk in MB)."""

    cpu: NonNegativeFloat | None
    memory: NonNegativeFloat | None
    gpu: NonNegativeFloat | None = None
    disk: NonNegativeFloat | None = None
    shared_memory: NonNegativeFloat | None = None


@dataclass
class TrainResources(StepResources):
    """``resources.train``: also the number of nodes training runs on (the others are per node)."""

    nodes: Annotated[int, Doc("the number of training nodes"), Range(ge=1)] = 1


@dataclass
class RetrySpec:
    times: NonNegativeInt = 0
    minutes_between_retries: NonNegativeInt = 2


@dataclass
class ScheduleSection:
    cron: str | None = None  # e.g. "0 2 * * 0"; None: no schedule
    timezone: str | None = None


@dataclass
class ReportSection:
    baselines: dict[str, str] = field(default_factory=dict)  # label -> run pathspec, e.g. "PTDPOFlow/123"


def collect(problems: list[str], make):
    """``make()``, or None with its problems added to ``problems``."""
    try:
        return make()
    except (FieldProblems, RunConfigError) as e:
        problems.extend(e.problems)
    return None


def _raise(problems: list[str]) -> None:
    if problems:
        raise RunConfigError(problems)


def dataset_spec(spec: Any, where: str) -> DatasetSpec:
    """A ``load_items`` spec checked field by field, then by ``DatasetSpec`` itself."""
    _raise(problems_for(DatasetSpec, spec, where, partial=True))
    try:
        return DatasetSpec.from_dict(copy.deepcopy(spec))
    except ValueError as e:
        raise RunConfigError([f"{where}: {e}"]) from e


def data_section(data: Any, where: str = "data") -> DataSection:
    """``data``: ``train`` (required), further named dataset specs, and the options (``DATA_OPTIONS``)."""
    if not isinstance(data, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(data)}"])
    problems: list[str] = []
    if "train" not in data:
        problems.append(f"{where}.train: missing (a load_items spec)")
    options = {k: data[k] for k in DATA_OPTIONS if k in data}
    hints = field_hints(DataSection)
    for k, v in options.items():
        problems += check_value(v, hints[k], f"{where}.{k}")
    specs = {}
    for name, spec in data.items():
        if name not in options:
            specs[name] = collect(problems, lambda s=spec, n=name: dataset_spec(s, f"{where}.{n}"))
    _raise(problems)
    train = specs.pop("train")
    return DataSection(train=train, sets=specs, **options)


def eval_section(ev: Any, where: str = "eval") -> EvalSection:
    """``eval``: ``benchmarks`` (registry names or spec objects), ``models``, ``generation``."""
    problems = problems_for(_EvalJSON, ev, where)
    _raise(problems)
    benchmarks = []
    for i, ref in enumerate(ev["benchmarks"]):
        spot = f"{where}.benchmarks[{i}]"
        if isinstance(ref, dict):  # the keys it overrides or sets, typed as BenchmarkSpec declares them
            typed = problems_for(BenchmarkSpec, ref, spot, partial=True)
            if typed:
                problems += typed
                continue
        try:
            benchmarks.append(resolve_benchmark(copy.deepcopy(ref)))
        except (ValueError, TypeError) as e:
            problems.append(f"{spot}: {e}")
    names = [b.name for b in benchmarks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"{where}.benchmarks: duplicate names {dup}")
    models = ev.get("models", list(MODELS))
    if len(set(models)) != len(models):
        problems.append(f"{where}.models: each model at most once, got {show(models)}")
    generation = None
    if ev.get("generation") is not None:
        generation = collect(problems, lambda: generation_config(ev["generation"], f"{where}.generation"))
    _raise(problems)
    return EvalSection(benchmarks=benchmarks, models=list(models), generation=generation)


@dataclass
class _EvalJSON:
    benchmarks: Annotated[list[str | dict[str, Any]], NonEmpty()]
    models: Annotated[list[Literal["base", "trained"]], NonEmpty()] = field(default_factory=lambda: list(MODELS))
    generation: dict[str, Any] | None = None


def generation_config(gen: Any, where: str = "eval.generation") -> GenerationConfig:
    """A ``GenerationConfig`` from JSON: every field's type and range, then its own checks."""
    _raise(problems_for(GenerationConfig, gen, where, partial=True, ranges=GENERATION_RANGES))
    try:
        return GenerationConfig.from_dict(copy.deepcopy(gen))
    except ValueError as e:
        raise RunConfigError([f"{where}: {e}"]) from e


def hints_section(hints: Any, where: str = "hints") -> HintsSection:
    """``hints``: the generator (checked against its constructor), shards, structure, audit, cache."""
    if not isinstance(hints, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(hints)}"])
    plain = {k: v for k, v in hints.items() if k != "audit"}
    problems = problems_for(HintsSection, plain, where)
    if isinstance(hints.get("generator"), dict):
        problems += generator_problems(hints["generator"], f"{where}.generator")
    audit = collect(problems, lambda: hint_audit_section(hints.get("audit") or {}, f"{where}.audit"))
    _raise(problems)
    return HintsSection(**copy.deepcopy(plain), audit=audit)


def hint_audit_section(audit: Any, where: str = "hints.audit") -> HintAuditSection:
    """``hints.audit``: ``floor``, ``max_attempts``, ``worst_n`` and any ``AuditConfig`` field."""
    if not isinstance(audit, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(audit)}"])
    run = {k: v for k, v in audit.items() if k in AUDIT_RUN_KEYS}
    audit_fields = list(field_hints(AuditConfig))
    rest = {k: v for k, v in audit.items() if k in audit_fields}
    problems = []
    unknown = sorted(set(audit) - set(run) - set(rest))
    if unknown:
        problems.append(unknown_keys_problem(where, unknown, list(AUDIT_RUN_KEYS) + audit_fields))
    problems += problems_for(HintAuditSection, run, where) + problems_for(AuditConfig, rest, where, partial=True)
    _raise(problems)
    try:
        config = AuditConfig.from_dict(copy.deepcopy(rest))
    except ValueError as e:
        raise RunConfigError([f"{where}: {e}"]) from e
    return HintAuditSection(**run, config=config)


def generator_problems(gen: dict[str, Any], where: str = "hints.generator") -> list[str]:
    """The generator's ``name`` and keywords against its constructor's signature and annotations, without
    building it (building a vLLM generator would need a GPU); the run options it may carry, typed."""
    import inspect
    import typing

    from ptdpo.hints.generators import GENERATORS, generator_class, split_config

    name = gen.get("name")
    if name not in GENERATORS:
        return [f"{where}.name: {show(name)} is not one of {sorted(GENERATORS)}"]
    kwargs, run = split_config(dict(gen))
    kwargs.pop("name", None)
    problems = problems_for(_GeneratorRunOptions, run, where, partial=True)
    cls = generator_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        return problems + [f"{where} ({name}): {e}"]
    hints = typing.get_type_hints(cls.__init__)
    for key, value in kwargs.items():
        if key in hints:
            problems += check_value(value, hints[key], f"{where}.{key}")
    return problems


@dataclass
class _GeneratorRunOptions:
    """Run options a ``hints.generator`` object may carry (``ptdpo.hints.generators.RUN_KEYS``)."""

    structured: bool = True
    max_attempts: PositiveInt = 1
    unstructured_mode: Literal["convert", "generate"] = "convert"
    progress: bool = True
    audit: dict[str, Any] = field(default_factory=dict)
    retry_rejected: bool = False


def resources_section(res: Any, where: str = "resources") -> dict[str, StepResources]:
    """``resources.<step>`` for every step of :data:`RESOURCE_STEPS` (``nodes`` on ``train`` only)."""
    if not isinstance(res, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(res)}"])
    problems, out = [], {}
    for step in RESOURCE_STEPS:
        spot = f"{where}.{step}"
        r = res.get(step)
        if not isinstance(r, dict):
            problems.append(f"{spot}: missing (an object with cpu, memory and optionally gpu, disk, "
                            "shared_memory)" if r is None else f"{spot}: expected an object, got {show(r)}")
            continue
        r = dict(r)
        if step != "train" and "nodes" in r:
            problems.append(f"{spot}.nodes: only training runs on several nodes (resources.train.nodes)")
            r.pop("nodes")
        for k in ("cpu", "memory"):
            if k not in r:
                problems.append(f"{spot}.{k}: missing")
                r[k] = None
        out[step] = collect(problems, lambda s=step, r=r, spot=spot: build(
            TrainResources if s == "train" else StepResources, r, spot))
    for step in sorted(set(res) - set(RESOURCE_STEPS)):
        problems.append(f"{where}.{step}: not a step with configurable resources {list(RESOURCE_STEPS)}")
    _raise(problems)
    return out


def retry_section(retry: Any, where: str = "retry") -> dict[str, RetrySpec]:
    if not isinstance(retry, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(retry)}"])
    problems, out = [], {}
    for step, spec in retry.items():
        if step not in RETRY_STEPS:
            problems.append(f"{where}.{step}: retries are configurable for {list(RETRY_STEPS)} only")
        else:
            out[step] = collect(problems, lambda s=spec, step=step: build(RetrySpec, s, f"{where}.{step}"))
    _raise(problems)
    return out


def timeout_section(timeout: Any, where: str = "timeout") -> dict[str, int]:
    if not isinstance(timeout, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(timeout)}"])
    problems = []
    for step, seconds in timeout.items():
        if step not in TIMEOUT_STEPS:
            problems.append(f"{where}.{step}: timeouts are configurable for {list(TIMEOUT_STEPS)} only")
        else:
            problems += check_value(seconds, Annotated[int, Doc("seconds"), Range(ge=0)], f"{where}.{step}")
    _raise(problems)
    return dict(timeout)


def kubernetes_problems(k8s: Any, where: str = "kubernetes") -> list[str]:
    """Keys ``@kubernetes`` does not have, in ``kubernetes`` and ``kubernetes.steps.<step>``; ``env``
    objects of strings."""
    if not isinstance(k8s, dict):
        return [f"{where}: expected an object, got {show(k8s)}"]
    problems = []
    steps = k8s.get("steps") or {}
    if not isinstance(steps, dict):
        return [f"{where}.steps: expected an object, got {show(steps)}"]
    for spot, attrs in [(where, k8s)] + [(f"{where}.steps.{s}", a) for s, a in steps.items()]:
        if not isinstance(attrs, dict):
            problems.append(f"{spot}: expected an object, got {show(attrs)}")
            continue
        allowed = K8S_ATTRS | (K8S_EXTRA_KEYS if spot == where else {"env"})
        bad = sorted(set(attrs) - allowed)
        if bad:
            problems.append(f"{spot}: unknown key(s) {bad}; known: {sorted(allowed)}")
        if attrs.get("env") is not None:
            problems += check_value(attrs["env"], dict[str, str], f"{spot}.env")
    return problems


def kubernetes_attributes(cfg: Mapping[str, Any], step: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(@kubernetes attributes, environment variables) for ``step``: ``config.kubernetes`` overlaid with
    ``config.kubernetes.steps.<step>``; None values dropped. Read from the plain config dict, as the
    flow's decorators see it at deploy time (``flows/_common.kubernetes_from_config``)."""
    k8s = copy.deepcopy(cfg.get("kubernetes") or {})
    per_step = (k8s.pop("steps", None) or {}).get(step, {}) or {}
    env = dict(k8s.pop("env", None) or {})
    env.update(per_step.pop("env", None) or {})
    attrs = {k: v for k, v in k8s.items() if v is not None}
    attrs.update({k: v for k, v in per_step.items() if v is not None})
    return attrs, env


def schedule_section(sched: Any, where: str = "schedule") -> ScheduleSection:
    out = build(ScheduleSection, sched, where)
    if out.cron is not None and len(out.cron.split()) not in (5, 6):
        raise RunConfigError([f"{where}.cron: a cron expression such as '0 2 * * 0', got {show(out.cron)}"])
    return out


def tracking_section(tracking: Any, where: str = "tracking") -> TrackingSection:
    """``tracking``: TensorBoard (default on), MLflow / W&B (optional extras), the live card's refresh."""
    return build(TrackingSection, tracking, where)
