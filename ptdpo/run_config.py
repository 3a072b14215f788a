"""The run config of ``flows/ptdpo_flow.py``, typed once: :class:`RunConfig` and its sections.

**Files** are JSON (``configs/*.json``). A file may start from another with ``"extends":
"qwen3vl-2b.json"`` (a file in ``configs/``, a path relative to the current directory, or an absolute
path); its keys are merged into the parent's as a JSON merge patch (RFC 7386: objects merge
recursively, ``null`` removes a key, anything else replaces; ``ptdpo.config.merge_patch``).

**Checks.** :func:`run_config_from_dict` checks every key's type, range and allowed values and lists
every problem at once, each naming its key path and the offending value (:class:`RunConfigError`). The
flow's ``Config`` parser calls it (:func:`parse_run_config`), so a bad file stops ``run`` or a
deployment before any step starts. Sections other parts own are checked by their own types, composed
here: ``train`` is a ``ptdpo.config.TrainConfig``, ``data.<set>`` a ``DatasetSpec``, ``eval.benchmarks``
go through ``resolve_benchmark``, ``eval.generation`` is a ``GenerationConfig``, ``hints.audit`` an
``AuditConfig`` (plus the run keys ``floor``, ``max_attempts``, ``worst_n``), and ``hints.generator``
must bind to the generator's constructor, with the types it declares.

**Sections**: ``name``, ``project`` (lower-case, names deployments), ``description``, ``notes``,
``seed``, ``data``, ``hints`` (needed when ``train.ptd`` uses hints), ``train``, ``eval``,
``resources.<step>``, ``retry.<step>``, ``timeout.<step>``, ``kubernetes``, ``schedule``, ``report``.
The Metaflow wiring that moves them into decorators is ``flows/_common.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ptdpo.config import TrainConfig, merge_patch, train_config_from_dict
from ptdpo.config_fields import (
    Doc,
    FieldProblems,
    Name,
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
from ptdpo.eval.registry import BenchmarkSpec
from ptdpo.hints.audit import AuditConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Steps whose requirements come from the config (the others are bookkeeping: 1 CPU, 4 GB).
RESOURCE_STEPS = ("prepare_data", "generate_hints", "audit", "train", "evaluate", "report")
RETRY_STEPS = ("generate_hints", "train", "evaluate")
TIMEOUT_STEPS = ("generate_hints", "audit", "train", "evaluate")
RESOURCE_KEYS = ("cpu", "memory", "gpu", "disk", "shared_memory")  # the @resources attributes
SECTIONS = ("name", "project", "description", "notes", "seed", "extends", "data", "hints", "train", "eval",
            "resources", "retry", "timeout", "kubernetes", "schedule", "report")
REQUIRED_SECTIONS = ("name", "project", "data", "train", "eval", "resources")
# Keys of config.kubernetes that are not @kubernetes attributes.
K8S_EXTRA_KEYS = {"steps", "env"}
# @kubernetes attributes a config may set (the pod-level ones; requirements go through @resources).
K8S_ATTRS = {
    "image", "image_pull_policy", "image_pull_secrets", "service_account", "secrets", "node_selector",
    "namespace", "tolerations", "labels", "annotations", "persistent_volume_claims", "shared_memory",
    "use_tmpfs", "tmpfs_size", "tmpfs_path", "qos", "security_context", "disk", "compute_pool",
}
# The hint generators and their classes; the constructor's signature is the generator's schema.
GENERATOR_CLASSES = {"oracle": ("ptdpo.hints.oracle", "OracleGenerator"),
                     "openai": ("ptdpo.hints.openai_gen", "OpenAIGenerator"),
                     "vllm": ("ptdpo.hints.vllm_gen", "VLLMGenerator")}
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


# ------------------------------------------------------------------------------------------ files
def _find_parent(ref: str, config_dir: Path) -> Path:
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else [config_dir / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise RunConfigError([f"extends: cannot find {ref!r} (looked at {', '.join(str(c) for c in candidates)})"])


def load_config_dict(text: str, config_dir: Path = CONFIG_DIR, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as a dict with ``extends`` resolved (no checks); ``extends_chain`` lists the parents."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunConfigError([f"config is not valid JSON: {e}"]) from e
    if not isinstance(cfg, dict):
        raise RunConfigError([f"a config must be a JSON object, got {show(cfg)}"])
    parent_ref = cfg.pop("extends", None)
    if parent_ref is None:
        return cfg
    if not isinstance(parent_ref, str):
        raise RunConfigError([f"extends: expected a file name, got {show(parent_ref)}"])
    parent_path = _find_parent(parent_ref, config_dir)
    key = str(parent_path.resolve())
    if key in _seen:
        raise RunConfigError([f"extends: cycle through {parent_path}"])
    parent = load_config_dict(parent_path.read_text(), config_dir, _seen + (key,))
    merged = merge_patch(parent, cfg)
    merged["extends_chain"] = [parent_ref] + list(parent.get("extends_chain", []))
    return merged


def parse_run_config(text: str) -> dict[str, Any]:
    """The flow's ``Config`` parser: JSON, ``extends`` resolved, every value checked. Returns the plain
    dict (what Metaflow stores as ``config``); :class:`RunConfigError` lists every problem."""
    cfg = load_config_dict(text)
    run_config_from_dict(cfg)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and check a config file the way the flow does (the plain dict; for scripts and tests)."""
    return parse_run_config(Path(path).read_text())


def load_run_config(path: str | Path) -> RunConfig:
    """A config file as the typed :class:`RunConfig`."""
    return run_config_from_dict(load_config_file(path))


# --------------------------------------------------------------------------------------- sections
@dataclass
class DataSection:
    """``data``: the training set (``train``), further named sets (manifest only), and two options."""

    train: DatasetSpec
    sets: dict[str, DatasetSpec] = field(default_factory=dict)
    shuffle: bool = False  # shuffle the training items with the run's seed (matters for sharding only)
    manifest_benchmarks: bool = True  # load every benchmark once in prepare_data to record its manifest


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
    many shards, whether structured, audited how, cached where."""

    generator: dict[str, Any]
    shards: PositiveInt = 1
    structured: bool = True
    unstructured_mode: Literal["convert", "generate"] = "convert"
    audit: HintAuditSection = field(default_factory=HintAuditSection)
    cache_dir: str | None = None

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


@dataclass
class RunConfig:
    """One run of the training flow, every section typed and checked."""

    name: str
    project: str
    data: DataSection
    train: TrainConfig  # resolved (algorithm defaults filled in)
    eval: EvalSection
    resources: dict[str, StepResources]
    hints: HintsSection | None = None
    description: str | None = None
    notes: str | list[str] | None = None
    seed: int = 0
    retry: dict[str, RetrySpec] = field(default_factory=dict)
    timeout: dict[str, int] = field(default_factory=dict)  # seconds; 0: none
    kubernetes: dict[str, Any] = field(default_factory=dict)  # checked keys; read by flows/_common.py
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    report: ReportSection = field(default_factory=ReportSection)
    extends_chain: list[str] = field(default_factory=list)

    @property
    def train_nodes(self) -> int:
        """``resources.train.nodes``: how many nodes train."""
        return self.resources["train"].nodes


@dataclass
class _TopLevel:
    """The plain top-level values (the sections are checked by their own builders)."""

    name: Name
    project: Annotated[str, NonEmpty()]
    description: str | None = None
    notes: str | list[str] | None = None
    seed: NonNegativeInt = 0
    extends_chain: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- checks
def run_config_from_dict(cfg: dict[str, Any]) -> RunConfig:
    """The typed run config of a config dict (``extends`` already resolved), or :class:`RunConfigError`
    listing every problem: unknown or missing sections, and every value of every section."""
    if not isinstance(cfg, dict):
        raise RunConfigError([f"a config must be a JSON object, got {show(cfg)}"])
    cfg = copy.deepcopy(cfg)
    problems: list[str] = []
    if "parallel" in cfg:
        problems.append("parallel: not a config section; the number of training nodes is resources.train.nodes")
    unknown = sorted(set(cfg) - set(SECTIONS) - {"extends_chain", "parallel"})
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; known: {sorted(SECTIONS)}")
    for key in REQUIRED_SECTIONS:
        if key not in cfg:
            problems.append(f"missing section {key!r}")
    top = {f.name: cfg[f.name] for f in dataclasses.fields(_TopLevel) if f.name in cfg}
    problems += problems_for(_TopLevel, top, "", partial=True)
    project = cfg.get("project")
    if isinstance(project, str) and project and not (project.replace("_", "").isalnum() and project.islower()):
        problems.append(f"project: {project!r} must be lower-case letters, digits and '_' (it names deployments)")

    train = _section(problems, lambda: train_config_from_dict(cfg.get("train", {}), "train", require_policy=True))
    data = _section(problems, lambda: data_section(cfg.get("data", {})))
    ev = _section(problems, lambda: eval_section(cfg.get("eval", {})))
    hints = None
    if cfg.get("hints") is not None:
        hints = _section(problems, lambda: hints_section(cfg["hints"]))
    elif train is not None and train.ptd.uses_hints:
        problems.append("hints: missing, but train.ptd uses hints (teacher_context 'hint')")
    resources = _section(problems, lambda: resources_section(cfg.get("resources", {})))
    retry = _section(problems, lambda: retry_section(cfg.get("retry") or {}))
    timeout = _section(problems, lambda: timeout_section(cfg.get("timeout") or {}))
    problems += kubernetes_problems(cfg.get("kubernetes") or {})
    schedule = _section(problems, lambda: schedule_section(cfg.get("schedule") or {}))
    report = _section(problems, lambda: build(ReportSection, cfg.get("report") or {}, "report"))
    if problems:
        raise RunConfigError(problems, cfg.get("name") if isinstance(cfg.get("name"), str) else None)
    return RunConfig(
        name=cfg["name"], project=cfg["project"], data=data, train=train, eval=ev, resources=resources,
        hints=hints, description=cfg.get("description"), notes=cfg.get("notes"), seed=cfg.get("seed", 0),
        retry=retry, timeout=timeout, kubernetes=cfg.get("kubernetes") or {}, schedule=schedule, report=report,
        extends_chain=cfg.get("extends_chain", []),
    )


def _section(problems: list[str], make):
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
    """``data``: ``train`` (required), further named dataset specs, ``shuffle``, ``manifest_benchmarks``."""
    if not isinstance(data, dict):
        raise RunConfigError([f"{where}: expected an object, got {show(data)}"])
    problems: list[str] = []
    if "train" not in data:
        problems.append(f"{where}.train: missing (a load_items spec)")
    options = {k: data[k] for k in ("shuffle", "manifest_benchmarks") if k in data}
    for k, v in options.items():
        problems += check_value(v, bool, f"{where}.{k}")
    specs = {}
    for name, spec in data.items():
        if name not in options:
            specs[name] = _section(problems, lambda s=spec, n=name: dataset_spec(s, f"{where}.{n}"))
    _raise(problems)
    train = specs.pop("train")
    return DataSection(train=train, sets=specs, **options)


def eval_section(ev: Any, where: str = "eval") -> EvalSection:
    """``eval``: ``benchmarks`` (registry names or spec objects), ``models``, ``generation``."""
    problems = problems_for(_EvalJSON, ev, where)
    _raise(problems)
    from ptdpo.eval.registry import resolve_benchmark

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
        generation = _section(problems, lambda: generation_config(ev["generation"], f"{where}.generation"))
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
    audit = _section(problems, lambda: hint_audit_section(hints.get("audit") or {}, f"{where}.audit"))
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
    import importlib
    import inspect
    import typing

    name = gen.get("name")
    if name not in GENERATOR_CLASSES:
        return [f"{where}.name: {show(name)} is not one of {sorted(GENERATOR_CLASSES)}"]
    from ptdpo.hints.generation import split_config

    kwargs, run = split_config(dict(gen))
    kwargs.pop("name", None)
    problems = problems_for(_GeneratorRunOptions, run, where, partial=True)
    module, cls_name = GENERATOR_CLASSES[name]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError:
        return problems  # an optional dependency missing here; the step that builds it will say so
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
    """Run options a ``hints.generator`` object may carry (``ptdpo.hints.generation.RUN_KEYS``)."""

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
        out[step] = _section(problems, lambda s=step, r=r, spot=spot: build(
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
            out[step] = _section(problems, lambda s=spec, step=step: build(RetrySpec, s, f"{where}.{step}"))
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
