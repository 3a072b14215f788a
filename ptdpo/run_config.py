"""The run config of ``flows/ptdpo_flow.py``, typed once: :class:`RunConfig` and its sections.

**Files** are JSON (``configs/*.json``). A file may start from another with ``"extends":
"qwen3vl-2b.json"`` (a path relative to the file's own folder, a file in ``configs/``, or an absolute
path; relative data paths in a file are likewise taken from its folder, never from the working
directory: :func:`resolve_config_paths`); its keys are merged into the parent's as a JSON merge patch (RFC 7386: objects merge
recursively, ``null`` removes a key, anything else replaces; ``ptdpo.config.merge_patch``). ``extends``
may list several files: ``["ablations/tau-0.2.json", "overlays/tiny-smoke.json"]`` starts from the first
and patches the others on top, in order (the overlays of ``configs/overlays`` and ``configs/hints``).

**Checks.** :func:`run_config_from_dict` checks every key's type, range and allowed values and lists
every problem at once, each naming its key path and the offending value (:class:`RunConfigError`). The
flow's ``Config`` parser calls it (:func:`parse_run_config`), so a bad file stops ``run`` or a
deployment before any step starts. Sections other parts own are checked by their own types, composed
here: ``train`` is a ``ptdpo.config.TrainConfig``, ``data.<set>`` a ``DatasetSpec``, ``eval.benchmarks``
go through ``resolve_benchmark``, ``eval.generation`` is a ``GenerationConfig``, ``hints.audit`` an
``AuditConfig`` (plus the run keys ``floor``, ``max_attempts``, ``worst_n``), and ``hints.generator``
must bind to the generator's constructor, with the types it declares.

**Sections**: ``name``, ``project`` (lower-case, names deployments), ``description``, ``notes``, ``seed``,
``prompt`` (the prompt template of the whole run: ``{"template": "boxed"}``, the default, or
``"answer_tags"``; it becomes ``train.prompt_template``, which a file must not set itself),
``data``, ``hints`` (needed when ``train.ptd`` uses hints), ``train``, ``eval``, ``resources.<step>``,
``retry.<step>``, ``timeout.<step>``, ``kubernetes``, ``schedule``, ``report``, ``tracking``
(TensorBoard by default, MLflow / W&B when set, the live card's refresh: ``ptdpo.tracking``); their types
and builders are in ``ptdpo.run_sections``.
The Metaflow wiring that moves them into decorators is ``flows/_common.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from ptdpo.config import TrainConfig, merge_patch, train_config_from_dict
from ptdpo.config_fields import Name, NonEmpty, NonNegativeInt, build, problems_for, show
from ptdpo.run_sections import (
    AUDIT_RUN_KEYS,
    RESOURCE_KEYS,
    RESOURCE_STEPS,
    RETRY_STEPS,
    TIMEOUT_STEPS,
    DataSection,
    EvalSection,
    HintAuditSection,
    HintsSection,
    PromptSection,
    ReportSection,
    RetrySpec,
    RunConfigError,
    ScheduleSection,
    StepResources,
    TrainResources,
    collect,
    data_section,
    eval_section,
    generation_config,
    hints_section,
    kubernetes_attributes,
    kubernetes_problems,
    resources_section,
    retry_section,
    schedule_section,
    timeout_section,
    tracking_section,
)
from ptdpo.tracking import TrackingSection

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SECTIONS = ("name", "project", "description", "notes", "seed", "extends", "prompt", "data", "hints", "train",
            "eval", "resources", "retry", "timeout", "kubernetes", "schedule", "report", "tracking")
REQUIRED_SECTIONS = ("name", "project", "data", "train", "eval", "resources")


# ------------------------------------------------------------------------------------------ files
def _find_parent(ref: str, config_dir: Path, base_dir: Path | None, seen: tuple[str, ...] = ()) -> Path:
    """A parent named by ``extends``: next to the file that names it, else in the configs catalogue; the
    working directory only when the text came from no file (``--config-value``). A file never extends
    itself: ``baselines/x.json`` extending ``x.json`` means the catalogue's ``x.json``."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        candidates = [p]
    elif base_dir is not None:
        candidates = [base_dir / p, config_dir / p]
    else:
        candidates = [config_dir / p, Path.cwd() / p]
    found = [c for c in dict.fromkeys(candidates) if c.is_file()]
    for c in found:
        if str(c.resolve()) not in seen:
            return c
    if found:
        raise RunConfigError([f"extends: cycle through {found[0]}"])
    raise RunConfigError([f"extends: cannot find {ref!r} (looked at {', '.join(str(c) for c in candidates)})"])


def resolve_config_paths(cfg: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """One config file's own keys with their relative local paths made absolute against ``base_dir``, the
    file's folder: every dataset spec of ``data`` and ``eval.benchmarks[].dataset``
    (``ptdpo.data.spec.resolve_spec_paths``), ``hints.cache_dir``, ``tracking.tensorboard_dir``, and
    ``train.policy`` when it is written as a relative path (``./`` or ``../``: a saved model folder)."""
    from ptdpo.data.spec import resolve_spec_paths

    cfg = copy.deepcopy(cfg)
    data = cfg.get("data")
    if isinstance(data, dict):
        for name, spec in data.items():
            if isinstance(spec, dict) and "format" in spec:
                data[name] = resolve_spec_paths(spec, base_dir)
    benches = (cfg.get("eval") or {}).get("benchmarks") if isinstance(cfg.get("eval"), dict) else None
    for b in benches if isinstance(benches, list) else []:
        if isinstance(b, dict) and isinstance(b.get("dataset"), dict):
            b["dataset"] = resolve_spec_paths(b["dataset"], base_dir)
    train = cfg.get("train")
    policy = train.get("policy") if isinstance(train, dict) else None
    if isinstance(policy, str) and policy.startswith(("./", "../")):  # a local folder, written as a path
        train["policy"] = str((base_dir / policy).resolve())
    for section, key in (("hints", "cache_dir"), ("tracking", "tensorboard_dir")):
        value = (cfg.get(section) or {}).get(key) if isinstance(cfg.get(section), dict) else None
        if isinstance(value, str) and value and "://" not in value and not value.startswith(("/", "~")):
            cfg[section][key] = str(base_dir / value)
    return cfg


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON lets a key appear twice and json.loads keeps the last one: a config edited in two places would
    # silently use whichever came last.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RunConfigError([f"{key}: appears twice in the same object of the config file (JSON keeps only "
                                  "the last); keep one"])
        seen[key] = value
    return seen


def load_config_dict(text: str, config_dir: Path = CONFIG_DIR, _seen: tuple[str, ...] = (),
                     base_dir: Path | None = None) -> dict[str, Any]:
    """The config as a dict with ``extends`` resolved (no checks); ``extends_chain`` lists the parents.

    ``extends`` is one file or a list of files: the first is the base, each further one is applied on top
    of it as a merge patch (an overlay such as ``overlays/tiny-smoke.json`` or ``hints/openai-endpoint.json``),
    then the file's own keys. ``base_dir`` is the folder of the file ``text`` was read from: relative paths
    in it (``extends``, data files, image folders, cache folders) are taken from there, each file's from
    its own folder (:func:`resolve_config_paths`). Without it (text from no file) they stay relative."""
    try:
        cfg = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise RunConfigError([f"config is not valid JSON: {e}"]) from e
    if not isinstance(cfg, dict):
        raise RunConfigError([f"a config must be a JSON object, got {show(cfg)}"])
    if base_dir is not None:
        cfg = resolve_config_paths(cfg, Path(base_dir))
    parent_ref = cfg.pop("extends", None)
    if parent_ref is None:
        return cfg
    refs = [parent_ref] if isinstance(parent_ref, str) else parent_ref
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise RunConfigError([f"extends: expected a file name or a non-empty list of them, got {show(parent_ref)}"])
    merged: dict[str, Any] | None = None
    chain: list[str] = []
    for ref in refs:
        parent_path = _find_parent(ref, config_dir, Path(base_dir) if base_dir is not None else None, _seen)
        key = str(parent_path.resolve())
        if key in _seen:
            raise RunConfigError([f"extends: cycle through {parent_path}"])
        parent = load_config_dict(parent_path.read_text(), config_dir, _seen + (key,),
                                  base_dir=parent_path.resolve().parent)
        chain += [ref] + list(parent.pop("extends_chain", []))
        merged = parent if merged is None else merge_patch(merged, parent)
    merged = merge_patch(merged, cfg)
    merged["extends_chain"] = chain
    return merged


def parse_run_config(text: str, path: str | Path | None = None) -> dict[str, Any]:
    """The flow's ``Config`` parser: JSON, ``extends`` resolved, every value checked. Returns the plain
    dict (what Metaflow stores as ``config``); :class:`RunConfigError` lists every problem. ``path``: the
    file ``text`` was read from, whose folder relative paths in it are taken from (:func:`load_config_dict`)."""
    if path is None:
        cfg = load_config_dict(text)
    else:
        p = Path(path).expanduser().resolve()
        cfg = load_config_dict(text, _seen=(str(p),), base_dir=p.parent)
    run_config_from_dict(cfg)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and check a config file the way the flow does (the plain dict; for scripts and tests); its
    relative paths are taken from its folder."""
    return parse_run_config(Path(path).read_text(), path)


def load_run_config(path: str | Path) -> RunConfig:
    """A config file as the typed :class:`RunConfig`."""
    return run_config_from_dict(load_config_file(path))


@dataclass
class RunConfig:
    """One run of the training flow, every section typed and checked."""

    name: str
    project: str
    data: DataSection
    train: TrainConfig  # resolved (algorithm defaults filled in); prompt_template from ``prompt``
    eval: EvalSection
    resources: dict[str, StepResources]
    prompt: PromptSection = field(default_factory=PromptSection)
    hints: HintsSection | None = None
    description: str | None = None
    notes: str | list[str] | None = None
    seed: int = 0
    retry: dict[str, RetrySpec] = field(default_factory=dict)
    timeout: dict[str, int] = field(default_factory=dict)  # seconds; 0: none
    kubernetes: dict[str, Any] = field(default_factory=dict)  # checked keys; read by flows/_common.py
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    report: ReportSection = field(default_factory=ReportSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
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

    prompt = collect(problems, lambda: build(PromptSection, cfg.get("prompt") or {}, "prompt"))
    train_dict = cfg.get("train", {})
    if isinstance(train_dict, dict) and "prompt_template" in train_dict:
        problems.append("train.prompt_template: set prompt.template instead (one setting for the rollouts, the "
                        "teacher, the rewards and evaluation)")
        train_dict = {k: v for k, v in train_dict.items() if k != "prompt_template"}
    if isinstance(train_dict, dict) and prompt is not None:
        train_dict = {**train_dict, "prompt_template": prompt.template}
    train = collect(problems, lambda: train_config_from_dict(train_dict, "train", require_policy=True))
    data = collect(problems, lambda: data_section(cfg.get("data", {})))
    ev_dict = cfg.get("eval", {})
    gen_dict = ev_dict.get("generation") if isinstance(ev_dict, dict) else None
    if isinstance(gen_dict, dict) and "prompt_template" in gen_dict:
        problems.append("eval.generation.prompt_template: set prompt.template instead (one setting for the "
                        "rollouts, the teacher, the rewards and evaluation)")
        ev_dict = {**ev_dict, "generation": {k: v for k, v in gen_dict.items() if k != "prompt_template"}}
    if isinstance(ev_dict, dict) and prompt is not None:
        ev_dict = {**ev_dict, "generation": {**(ev_dict.get("generation") or {}), "prompt_template": prompt.template}}
    ev = collect(problems, lambda: eval_section(ev_dict))
    hints = None
    if cfg.get("hints") is not None:
        hints = collect(problems, lambda: hints_section(cfg["hints"]))
    elif train is not None and train.ptd.uses_hints:
        problems.append("hints: missing, but train.ptd uses hints (teacher_context 'hint')")
    resources = collect(problems, lambda: resources_section(cfg.get("resources", {})))
    retry = collect(problems, lambda: retry_section(cfg.get("retry") or {}))
    timeout = collect(problems, lambda: timeout_section(cfg.get("timeout") or {}))
    problems += kubernetes_problems(cfg.get("kubernetes") or {})
    schedule = collect(problems, lambda: schedule_section(cfg.get("schedule") or {}))
    report = collect(problems, lambda: build(ReportSection, cfg.get("report") or {}, "report"))
    tracking = collect(problems, lambda: tracking_section(cfg.get("tracking") or {}))
    if problems:
        raise RunConfigError(problems, cfg.get("name") if isinstance(cfg.get("name"), str) else None)
    return RunConfig(
        name=cfg["name"], project=cfg["project"], data=data, train=train, eval=ev, resources=resources,
        prompt=prompt, hints=hints, description=cfg.get("description"), notes=cfg.get("notes"), seed=cfg.get("seed", 0),
        retry=retry, timeout=timeout, kubernetes=cfg.get("kubernetes") or {}, schedule=schedule, report=report,
        tracking=tracking, extends_chain=cfg.get("extends_chain", []),
    )


__all__ = [  # the run config and, for the steps and scripts that take one section, its sections
    "AUDIT_RUN_KEYS", "CONFIG_DIR", "RESOURCE_KEYS", "RESOURCE_STEPS", "RETRY_STEPS", "TIMEOUT_STEPS",
    "DataSection", "EvalSection", "HintAuditSection", "HintsSection", "PromptSection", "ReportSection", "RetrySpec",
    "resolve_config_paths",
    "RunConfig",
    "RunConfigError", "ScheduleSection", "StepResources", "TrackingSection", "TrainResources", "data_section",
    "eval_section",
    "generation_config", "hints_section", "kubernetes_attributes", "load_config_dict", "load_config_file",
    "load_run_config", "parse_run_config", "run_config_from_dict",
]
