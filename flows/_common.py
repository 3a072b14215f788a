"""Wiring shared by the flows: how the run config reaches Metaflow (the ``Config`` parser, resources,
retries, timeouts, the schedule, and Kubernetes pod settings), and the import-path helpers.

Nothing here knows about the method, and nothing here is the config's schema: the run config is typed
and checked in the package (``ptdpo.run_config``). :func:`parse_config` is the ``parser`` of the flow's
``Config``: a bad config stops ``run`` or the deployment before anything starts, with one readable block
naming every bad key and value (a :class:`BadRunConfig`, which Metaflow prints without a traceback).

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

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from metaflow import config_expr, schedule
from metaflow.exception import MetaflowException
from metaflow.user_decorators.mutable_flow import MutableFlow
from metaflow.user_decorators.mutable_step import MutableStep
from metaflow.user_decorators.user_flow_decorator import FlowMutator
from metaflow.user_decorators.user_step_decorator import StepMutator

USER_VARIABLES = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")
FLOWS_DIR = Path(__file__).resolve().parent
REPO_ROOT = FLOWS_DIR.parent


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


def ensure_import_path() -> None:
    """Make ``ptdpo`` and ``steps`` importable when the flow runs from a checkout (``python
    flows/ptdpo_flow.py``) without an installed package. In a code package they sit next to the flow."""
    for p in (str(REPO_ROOT),):
        if (Path(p) / "ptdpo").is_dir() and p not in sys.path:
            sys.path.insert(0, p)


ensure_username()
ensure_import_path()  # before the package is imported: the checkout's ptdpo, not another installed one

from ptdpo.run_config import (  # noqa: E402
    CONFIG_DIR,
    RESOURCE_KEYS,
    RunConfigError,
    kubernetes_attributes,
    parse_run_config,
)

DEFAULT_CONFIG = CONFIG_DIR / "tiny.json"
# Steps that take their settings from another step's config section: the multi-node training step is
# configured as ``train``.
CONFIG_STEP_OF = {"train_nodes": "train"}


class BadRunConfig(MetaflowException):
    """A config the flow cannot run. Metaflow prints a ``MetaflowException`` as its headline and message,
    without "Internal error" and a traceback."""

    headline = "Bad run config"


def parse_config(text: str) -> dict[str, Any]:
    """The ``Config`` parser: ``ptdpo.run_config.parse_run_config`` (JSON, ``extends``, every value
    checked, relative paths taken from the config file's folder); its problems become one
    :class:`BadRunConfig`."""
    try:
        return parse_run_config(text, config_file(sys.argv))
    except RunConfigError as e:
        raise BadRunConfig(str(e)) from None


def config_file(argv: list[str]) -> Path | None:
    """The config file being parsed (Metaflow hands the parser the file's text only): the one this command
    line names (``--config config PATH``), else the one a ``metaflow.Runner`` in this process was given,
    else the default config for ``python flows/ptdpo_flow.py ...``; None for ``--config-value`` or when
    unknown (a text from no file: relative paths in it then stay relative to the working directory)."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return Path(argv[i + 2]).expanduser().resolve()
    if "--config-value" in argv:
        return None
    runner = _runner_config_file()
    if runner is not None:
        return runner
    return DEFAULT_CONFIG if argv and Path(argv[0]).name == "ptdpo_flow.py" else None


def _runner_config_file() -> Path | None:
    """The config path a ``metaflow.Runner`` parses in the calling process (a script's or a notebook's,
    whose own command line names no config): it sits in the options of the Runner's click API frame
    (``metaflow.runner.click_api``, metaflow 2.19, pinned); the task processes get it on their command line."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_compute_flow_parameters" and isinstance(frame.f_locals.get("opts"), dict):
            for name, path in frame.f_locals["opts"].get("config") or []:
                if name == "config" and isinstance(path, str | Path):
                    return Path(path).expanduser().resolve()
            return None
        frame = frame.f_back
    return None


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
