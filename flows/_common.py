"""Wiring shared by the flows: the config file format, its checks, and how the config reaches Metaflow's
decorators (resources, retries, timeouts, the schedule, and Kubernetes pod settings).

Nothing here knows about the method; it only moves values from a config file into Metaflow.

**Config files** are JSON (``configs/*.json``). A file may start from another with ``"extends":
"qwen3vl-2b.json"`` (a file in ``configs/``, a path relative to the current directory, or an absolute
path); its keys are merged into the parent's as a JSON merge patch (RFC 7386: objects merge
recursively, ``null`` removes a key, anything else replaces).
:func:`parse_config` is the ``parser`` of the flow's ``Config``, so a bad config stops the run or the
deployment before anything starts.

**Kubernetes.** ``@resources`` on a step carries its CPU, memory, GPU, disk and shared memory (from
``config.resources.<step>``); those are honoured by ``--with kubernetes`` and Argo alike and ignored by a
local run. Pod settings that ``@resources`` cannot express (image, node selector, tolerations, PVCs,
secrets, namespace, service account, environment variables) come from ``config.kubernetes`` (defaults)
and ``config.kubernetes.steps.<step>`` (per step) and are applied by :class:`kubernetes_from_config`
*only to steps that run on Kubernetes*: those given ``@kubernetes`` by ``--with kubernetes`` or by
``argo-workflows create``. A plain ``run`` stays local. Attributes given explicitly on the command line
(``--with kubernetes:image=...``) win over the config.

**Several training nodes.** ``resources.train.nodes`` (default 1) is the number of nodes ``train`` runs on;
``gpu``, ``cpu``, ``memory`` and the rest are per node. Above 1 the flow takes its multi-node branch
(``launch_nodes`` -> ``train_nodes``, a ``@parallel`` step -> ``join_nodes``); every setting of ``train``
(``resources.train``, ``retry.train``, ``timeout.train``, ``kubernetes.steps.train``) applies to
``train_nodes`` too (:data:`CONFIG_STEP_OF`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from metaflow import config_expr, schedule
from metaflow.user_decorators.mutable_flow import MutableFlow
from metaflow.user_decorators.mutable_step import MutableStep
from metaflow.user_decorators.user_flow_decorator import FlowMutator
from metaflow.user_decorators.user_step_decorator import StepMutator

USER_VARIABLES = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")


def ensure_username() -> None:
    """Metaflow refuses to run without a user name in the environment, and refuses "root"; minimal
    containers (a fresh image as root, CI runners) have nothing else. Fall back to the process's login
    name, or to "ptdpo-root" for root, so the quick start works there too. METAFLOW_USER or USERNAME,
    when set, win. Task subprocesses inherit the value."""
    if any(os.environ.get(v) not in (None, "", "root") for v in USER_VARIABLES):
        return
    import getpass

    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry: leave Metaflow's own error message
        return
    os.environ["USERNAME"] = "ptdpo-root" if name == "root" else name


ensure_username()

FLOWS_DIR = Path(__file__).resolve().parent
REPO_ROOT = FLOWS_DIR.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny.json"

# Steps whose requirements come from the config (the others are bookkeeping: 1 CPU, 4 GB).
RESOURCE_STEPS = ("prepare_data", "generate_hints", "audit", "train", "evaluate", "report")
RETRY_STEPS = ("generate_hints", "train", "evaluate")
TIMEOUT_STEPS = ("generate_hints", "audit", "train", "evaluate")
RESOURCE_KEYS = ("cpu", "memory", "gpu", "disk", "shared_memory")  # the @resources attributes
TRAIN_RESOURCE_KEYS = ("nodes",)  # resources.train only: not @resources attributes
# Steps that take their settings from another step's config section: the multi-node training step is
# configured as ``train``.
CONFIG_STEP_OF = {"train_nodes": "train"}
TOP_LEVEL_KEYS = {
    "name", "project", "description", "notes", "seed", "extends", "data", "hints", "train", "eval",
    "resources", "retry", "timeout", "kubernetes", "schedule", "report",
}
# Keys of config.kubernetes that are not @kubernetes attributes.
K8S_EXTRA_KEYS = {"steps", "env"}
# @kubernetes attributes a config may set (the pod-level ones; requirements go through @resources).
K8S_ATTRS = {
    "image", "image_pull_policy", "image_pull_secrets", "service_account", "secrets", "node_selector",
    "namespace", "tolerations", "labels", "annotations", "persistent_volume_claims", "shared_memory",
    "use_tmpfs", "tmpfs_size", "tmpfs_path", "qos", "security_context", "disk", "compute_pool",
}


class FlowConfigError(ValueError):
    """A flow config that cannot be used; the message lists every problem found."""


# ------------------------------------------------------------------------------------------ parsing
def _find_parent(ref: str) -> Path:
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else [CONFIG_DIR / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise FlowConfigError(f"extends: cannot find {ref!r} (looked at {', '.join(str(c) for c in candidates)})")


def load_config_dict(text: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as a dict with ``extends`` resolved (no checks)."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise FlowConfigError(f"config is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise FlowConfigError("a config must be a JSON object")
    parent_ref = cfg.pop("extends", None)
    if parent_ref is None:
        return cfg
    parent_path = _find_parent(parent_ref)
    key = str(parent_path.resolve())
    if key in _seen:
        raise FlowConfigError(f"extends: cycle through {parent_path}")
    parent = load_config_dict(parent_path.read_text(), _seen + (key,))
    from ptdpo.config import (
        merge_patch,  # here, not at the top: ensure_import_path() runs after this module loads
    )

    merged = merge_patch(parent, cfg)
    merged.setdefault("extends_chain", [])
    merged["extends_chain"] = [str(parent_ref)] + list(parent.get("extends_chain", []))
    return merged


def parse_config(text: str) -> dict[str, Any]:
    """The ``Config`` parser: JSON, ``extends`` resolved, then checked (:func:`check_config`)."""
    cfg = load_config_dict(text)
    check_config(cfg)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and check a config file the way the flow does (for scripts and tests)."""
    return parse_config(Path(path).read_text())


# ------------------------------------------------------------------------------------------- checks
def uses_hints(cfg: dict[str, Any]) -> bool:
    """Whether this run generates and audits hints: asked of the typed training config
    (``PTDConfig.uses_hints``), the one place that decides it."""
    from ptdpo.config import train_config_from_dict

    return train_config_from_dict(copy.deepcopy(cfg["train"])).ptd.uses_hints


def check_config(cfg: dict[str, Any]) -> None:
    """Raise :class:`FlowConfigError` listing every problem: unknown or missing sections, a ``train``
    section that ``ptdpo.config.train_config_from_dict`` rejects, dataset specs the loader rejects,
    unknown benchmarks, bad resources, Kubernetes attributes ``@kubernetes`` does not have."""
    problems: list[str] = []
    extra = {"extends_chain"}
    if "parallel" in cfg:
        problems.append("parallel: not a config section; the number of training nodes is resources.train.nodes")
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS - extra - {"parallel"})
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    for key in ("name", "project", "data", "train", "eval", "resources"):
        if key not in cfg:
            problems.append(f"missing section {key!r}")
    project = cfg.get("project", "")
    if project and not (isinstance(project, str) and project.replace("_", "").isalnum() and project.islower()):
        problems.append(f"project: {project!r} must be lower-case letters, digits and '_' (it names deployments)")

    # train: the trainer's own schema
    train_cfg = None
    try:
        from ptdpo.config import train_config_from_dict

        train_cfg = train_config_from_dict(copy.deepcopy(cfg.get("train", {})))
    except Exception as e:  # noqa: BLE001
        problems.append(f"train: {e}")

    # data
    data = cfg.get("data") or {}
    if "train" not in data:
        problems.append("data.train: missing (a load_items spec)")
    try:
        from ptdpo.data.loaders import DatasetSpec

        for name, spec in data.items():
            try:
                DatasetSpec.from_dict(copy.deepcopy(spec))
            except Exception as e:  # noqa: BLE001
                problems.append(f"data.{name}: {e}")
    except ImportError as e:  # pragma: no cover - the data package is part of the project
        problems.append(f"data: cannot import ptdpo.data.loaders ({e})")

    # hints
    hints = cfg.get("hints") or {}
    if hints:
        gen = hints.get("generator")
        if not isinstance(gen, dict) or "name" not in gen:
            problems.append("hints.generator: must be an object with 'name'")
        else:
            problems.extend(_generator_problems(gen))
        shards = hints.get("shards", 1)
        if not isinstance(shards, int) or shards < 1:
            problems.append(f"hints.shards: must be an int >= 1, got {shards!r}")
        floor = (hints.get("audit") or {}).get("floor", 0.0)
        if not isinstance(floor, int | float) or not 0 <= floor <= 1:
            problems.append(f"hints.audit.floor: must be in [0, 1], got {floor!r}")
    elif train_cfg is not None and train_cfg.ptd.uses_hints:
        problems.append("hints: missing, but train.ptd uses hints (teacher_context 'hint')")

    # eval
    ev = cfg.get("eval") or {}
    benches = ev.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        problems.append("eval.benchmarks: must be a non-empty list of registry names or spec objects")
    else:
        try:
            from ptdpo.eval.registry import resolve_benchmark

            names = []
            for b in benches:
                try:
                    names.append(resolve_benchmark(copy.deepcopy(b)).name)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"eval.benchmarks: {e}")
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                problems.append(f"eval.benchmarks: duplicate names {dup}")
        except ImportError as e:  # pragma: no cover
            problems.append(f"eval: cannot import ptdpo.eval.registry ({e})")
    models = ev.get("models", ["base", "trained"])
    if not isinstance(models, list) or not models or any(m not in ("base", "trained") for m in models):
        problems.append(f"eval.models: a non-empty list of 'base' and/or 'trained', got {models!r}")
    if ev.get("generation") is not None:
        try:
            from ptdpo.eval.generation import GenerationConfig

            GenerationConfig.from_dict(copy.deepcopy(ev["generation"]))
        except Exception as e:  # noqa: BLE001
            problems.append(f"eval.generation: {e}")

    # resources, retry, timeout
    res = cfg.get("resources") or {}
    for step in RESOURCE_STEPS:
        r = res.get(step)
        if not isinstance(r, dict):
            problems.append(f"resources.{step}: missing (an object with cpu, memory and optionally gpu, disk, "
                            "shared_memory)")
            continue
        for k in ("cpu", "memory"):
            if k not in r:
                problems.append(f"resources.{step}.{k}: missing")
        known = RESOURCE_KEYS + (TRAIN_RESOURCE_KEYS if step == "train" else ())
        for k, v in r.items():
            if k in TRAIN_RESOURCE_KEYS and step != "train":
                problems.append(f"resources.{step}.{k}: only training runs on several nodes (resources.train.{k})")
            elif k not in known:
                problems.append(f"resources.{step}: unknown key {k!r}; known: {list(known)}")
            elif k == "nodes":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    problems.append(f"resources.train.nodes: the number of training nodes, an int >= 1, got {v!r}")
            elif v is not None and (not isinstance(v, int | float) or v < 0):
                problems.append(f"resources.{step}.{k}: must be a non-negative number, got {v!r}")
    for step in set(res) - set(RESOURCE_STEPS):
        problems.append(f"resources.{step}: not a step with configurable resources {list(RESOURCE_STEPS)}")
    for step, r in (cfg.get("retry") or {}).items():
        if step not in RETRY_STEPS:
            problems.append(f"retry.{step}: retries are configurable for {list(RETRY_STEPS)} only")
        elif not isinstance(r, dict) or not isinstance(r.get("times", 0), int) or r.get("times", 0) < 0:
            problems.append(f"retry.{step}: must be {{'times': int >= 0, 'minutes_between_retries': int}}")
    for step, t in (cfg.get("timeout") or {}).items():
        if step not in TIMEOUT_STEPS:
            problems.append(f"timeout.{step}: timeouts are configurable for {list(TIMEOUT_STEPS)} only")
        elif not isinstance(t, int) or t < 0:
            problems.append(f"timeout.{step}: seconds as an int >= 0, got {t!r}")

    # kubernetes
    k8s = cfg.get("kubernetes") or {}
    for where, attrs in [("kubernetes", k8s)] + [
        (f"kubernetes.steps.{s}", a) for s, a in (k8s.get("steps") or {}).items()
    ]:
        if not isinstance(attrs, dict):
            problems.append(f"{where}: must be an object")
            continue
        allowed = K8S_ATTRS | (K8S_EXTRA_KEYS if where == "kubernetes" else {"env"})
        bad = sorted(set(attrs) - allowed)
        if bad:
            problems.append(f"{where}: unknown key(s) {bad}; known: {sorted(allowed)}")
    # schedule
    sched = cfg.get("schedule") or {}
    bad = sorted(set(sched) - {"cron", "timezone"})
    if bad:
        problems.append(f"schedule: unknown key(s) {bad}; known: ['cron', 'timezone']")
    cron = sched.get("cron")
    if cron is not None and (not isinstance(cron, str) or len(cron.split()) not in (5, 6)):
        problems.append(f"schedule.cron: a cron expression such as '0 2 * * 0', got {cron!r}")
    if problems:
        name = cfg.get("name", "<unnamed>")
        raise FlowConfigError(f"config {name!r} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def _generator_problems(gen: dict[str, Any]) -> list[str]:
    """Check the generator's keyword arguments against its constructor without building it (building a
    vLLM generator would need a GPU)."""
    import inspect

    name = gen.get("name")
    modules = {"oracle": ("ptdpo.hints.oracle", "OracleGenerator"),
               "openai": ("ptdpo.hints.openai_gen", "OpenAIGenerator"),
               "vllm": ("ptdpo.hints.vllm_gen", "VLLMGenerator")}
    if name not in modules:
        return [f"hints.generator.name: {name!r} is not one of {sorted(modules)}"]
    try:
        import importlib

        from ptdpo.hints.generation import split_config

        kwargs, _ = split_config(dict(gen))
        kwargs.pop("name", None)
        cls = getattr(importlib.import_module(modules[name][0]), modules[name][1])
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        return [f"hints.generator ({name}): {e}"]
    except ImportError:
        return []
    return []


def train_nodes(cfg: dict[str, Any]) -> int:
    """``resources.train.nodes``: how many nodes train (1 when absent)."""
    return int(((cfg.get("resources") or {}).get("train") or {}).get("nodes") or 1)


# ------------------------------------------------------------------ decorator arguments from config
def step_resources(step: str) -> dict[str, Any]:
    """``@resources(**step_resources("train"))``: each requirement read from ``config.resources.<step>``."""
    out = {}
    for key in RESOURCE_KEYS:
        out[key] = config_expr(f"config.resources['{step}'].get('{key}')")
    return out


def step_retry(step: str) -> dict[str, Any]:
    """``@retry(**step_retry("train"))`` from ``config.retry.<step>`` (no retries when absent)."""
    return {
        "times": config_expr(f"(config.get('retry') or {{}}).get('{step}', {{}}).get('times', 0)"),
        "minutes_between_retries": config_expr(
            f"(config.get('retry') or {{}}).get('{step}', {{}}).get('minutes_between_retries', 2)"
        ),
    }


def step_timeout(step: str) -> dict[str, Any]:
    """``@timeout(**step_timeout("train"))`` from ``config.timeout.<step>`` in seconds (0: none)."""
    return {"seconds": config_expr(f"(config.get('timeout') or {{}}).get('{step}', 0)")}


def _plain(v: Any) -> Any:
    """ConfigValue -> plain dict/list (decorator attributes are serialised to JSON)."""
    return json.loads(json.dumps(v)) if v is not None else None


def _flow_config(mutable: MutableFlow) -> dict[str, Any]:
    for name, value in mutable.configs:
        if name == "config":
            return _plain(value)
    return {}


def kubernetes_attributes(cfg: dict[str, Any], step: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(@kubernetes attributes, environment variables) for ``step``: ``config.kubernetes`` overlaid with
    ``config.kubernetes.steps.<step>``; None values dropped."""
    k8s = copy.deepcopy(cfg.get("kubernetes") or {})
    per_step = (k8s.pop("steps", None) or {}).get(step, {}) or {}
    env = dict(k8s.pop("env", None) or {})
    env.update(per_step.pop("env", None) or {})
    attrs = {k: v for k, v in k8s.items() if v is not None}
    attrs.update({k: v for k, v in per_step.items() if v is not None})
    return attrs, env


class kubernetes_from_config(StepMutator):
    """Fill a step's ``@kubernetes`` from the config when (and only when) the step runs on Kubernetes."""

    def init(self, *args, **kwargs):
        self.step_name = kwargs.get("step_name") or (args[0] if args else None)

    def mutate(self, mutable_step: MutableStep) -> None:
        specs = [s for s in mutable_step.decorator_specs if s[0] == "kubernetes"]
        if not specs:
            return  # a local run: nothing to do
        from metaflow.plugins.kubernetes.kubernetes_decorator import KubernetesDecorator

        cfg = _flow_config(mutable_step.flow)
        step = CONFIG_STEP_OF.get(self.step_name, self.step_name)
        attrs, env = kubernetes_attributes(cfg, step)
        _, _, _, current_kwargs = specs[0]
        # Attributes set on the command line (different from @kubernetes' defaults) win over the config.
        explicit = {
            k: v for k, v in current_kwargs.items()
            if k in KubernetesDecorator.defaults and v is not None and v != KubernetesDecorator.defaults[k]
        }
        merged = dict(attrs)
        merged.update(explicit)
        mutable_step.add_decorator("kubernetes", deco_kwargs=merged, duplicates=MutableStep.OVERRIDE)
        if env:
            existing = [s for s in mutable_step.decorator_specs if s[0] == "environment"]
            vars_ = dict(env)
            if existing:
                vars_.update(existing[0][3].get("vars") or {})
            mutable_step.add_decorator("environment", deco_kwargs={"vars": vars_}, duplicates=MutableStep.OVERRIDE)


class ptdpo_platform(FlowMutator):
    """Flow-level wiring from the config: ``@schedule`` when ``config.schedule.cron`` is set, and
    :class:`kubernetes_from_config` on every step."""

    def pre_mutate(self, mutable_flow: MutableFlow) -> None:
        cfg = _flow_config(mutable_flow)
        sched = cfg.get("schedule") or {}
        if sched.get("cron"):
            kwargs = {"cron": sched["cron"]}
            if sched.get("timezone"):
                kwargs["timezone"] = sched["timezone"]
            mutable_flow.add_decorator(schedule, deco_kwargs=kwargs)
        for name, mstep in mutable_flow.steps:
            mstep.add_decorator(kubernetes_from_config, deco_kwargs={"step_name": name})


# ------------------------------------------------------------------------------ hints and audit
AUDIT_RUN_KEYS = ("floor", "max_attempts", "worst_n")


def hint_generator_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dict ``steps.hints.generate_hints_shard`` takes: ``hints.generator`` plus the run options
    (``max_attempts`` and the audit used for the feedback loop come from ``hints.audit``)."""
    hints = cfg.get("hints") or {}
    audit = dict(hints.get("audit") or {})
    out = dict(hints.get("generator") or {})
    out.setdefault("max_attempts", int(audit.get("max_attempts", 1)))
    out.setdefault("structured", bool(hints.get("structured", True)))
    if "unstructured_mode" in hints:
        out.setdefault("unstructured_mode", hints["unstructured_mode"])
    out.setdefault("audit", {k: v for k, v in audit.items() if k not in AUDIT_RUN_KEYS})
    return out


def audit_run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The audit config ``steps.audit.run_audit`` takes (``floor``, ``worst_n`` and AuditConfig fields)."""
    audit = dict(((cfg.get("hints") or {}).get("audit")) or {})
    audit.pop("max_attempts", None)
    return audit


def hint_cache_dir(cfg: dict[str, Any], current: Any = None) -> str:
    """Where hint shards keep their resumable cache: ``hints.cache_dir`` (on a cluster: the shared PVC,
    so a retried pod or a later run reuses finished items), else ``$PTDPO_HINT_CACHE``, else a folder
    under the system temp dir named after the (origin) run, shared by the attempts of a local run."""
    explicit = (cfg.get("hints") or {}).get("cache_dir") or os.environ.get("PTDPO_HINT_CACHE")
    if explicit:
        return str(explicit)
    import tempfile

    run = "adhoc"
    if current is not None:
        run = f"{current.flow_name}-{getattr(current, 'origin_run_id', None) or current.run_id}"
    return str(Path(tempfile.gettempdir()) / "ptdpo-hint-cache" / run)


def hints_table(rows: list[dict[str, Any]]):
    """(hints DataFrame, sha256 over the rows' item ids, statuses and hints) for the ``hints`` artifact."""
    import hashlib

    import pandas as pd

    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["item_id"]):
        h.update(json.dumps([r["item_id"], r.get("status"), r.get("hint")], sort_keys=True, default=str).encode())
        h.update(b"\n")
    cols = ["item_id", "status", "usable", "hint", "verdict", "error", "raw", "attempts", "history", "config_hash"]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
    return df, h.hexdigest()


# --------------------------------------------------------------------------------- small helpers
def run_workers_with_this_python() -> None:
    """A local ``@parallel`` step starts its worker nodes as ``python <flow> step ...``, with whatever
    ``python`` is first on PATH, not with the interpreter running the flow; with an unactivated virtual
    environment (``.venv/bin/python flows/ptdpo_flow.py run``) that is another Python without Metaflow.
    Put this interpreter's folder first on PATH (inherited by the worker processes) when it has a
    ``python``. Harmless elsewhere: in a container that ``python`` is the same one."""
    here = Path(sys.executable).parent
    found = shutil.which("python")
    if (here / "python").exists() and (found is None or Path(found).parent != here):
        os.environ["PATH"] = str(here) + os.pathsep + os.environ.get("PATH", "")


def ensure_import_path() -> None:
    """Make ``ptdpo`` and ``steps`` importable when the flow runs from a checkout (``python
    flows/ptdpo_flow.py``) without an installed package. In a code package they sit next to the flow."""
    for p in (str(REPO_ROOT),):
        if (Path(p) / "ptdpo").is_dir() and p not in sys.path:
            sys.path.insert(0, p)

