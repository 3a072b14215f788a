"""Experiment tracking: every training step's metrics to TensorBoard (by default), MLflow and Weights &
Biases (when the run config's ``tracking`` section names them).

- :class:`TrackingSection` is the ``tracking`` section of the run config (typed like every section).
- :func:`open_tracker` builds the loggers a section asks for; :class:`Tracker` sends each step's metrics
  (``ptdpo.metrics`` names, as ``train/<name>``) to all of them. The trainer reaches it through its
  ``on_step`` callback only.
- TensorBoard event files are written by ``torch.utils.tensorboard`` (the ``tensorboard`` package, a
  dependency) into a folder of the task, or ``tracking.tensorboard_dir`` (a shared volume, to watch a run
  live); the flow stores them with the run (:func:`tensorboard_files`, artifact ``tensorboard_logs``) and
  :func:`export_tensorboard` writes them back out for ``tensorboard --logdir``.
- MLflow and W&B are optional extras (``pip install 'ptdpo[mlflow]'`` / ``'ptdpo[wandb]'``): their clients
  are imported only when the section configures them, never by ``import ptdpo``.
- A training job under torchrun runs in other processes: its rank 0 appends each step to a JSON-lines
  file (:func:`step_writer`) that the step process follows (:func:`follow_steps`) and feeds to the same
  callbacks.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from ptdpo.config_fields import Range

__all__ = [
    "MLflowSection", "StepRecord", "Tracker", "TrackingError", "TrackingSection", "WandbSection",
    "export_tensorboard", "follow_steps", "open_tracker", "read_scalars", "step_writer", "tensorboard_files",
]


class TrackingError(RuntimeError):
    """A tracker the config asks for cannot start (its client is not installed, its server refuses)."""


@dataclass
class MLflowSection:
    """``tracking.mlflow``: an MLflow tracking server (``tracking_uri``: ``http://mlflow:5000``,
    ``sqlite:///mlflow.db``; None: MLflow's own default, ``$MLFLOW_TRACKING_URI`` first), the experiment and
    the run name (default: the flow run)."""

    tracking_uri: str | None = None
    experiment: str = "ptdpo"
    run_name: str | None = None


@dataclass
class WandbSection:
    """``tracking.wandb``: a Weights & Biases project (the key comes from ``WANDB_API_KEY`` or ``wandb
    login``; ``mode: offline`` writes locally for ``wandb sync`` later)."""

    project: str = "ptdpo"
    entity: str | None = None
    run_name: str | None = None
    mode: Literal["online", "offline", "disabled"] = "online"
    dir: str | None = None


@dataclass
class TrackingSection:
    """``tracking``: where training metrics go while a run trains, and how often the live card refreshes.

    ``tensorboard`` (default on): event files stored with the run; ``tensorboard_dir``: write them there as
    well (a shared volume: ``tensorboard --logdir`` on it shows the run live); ``mlflow`` / ``wandb``: the
    optional trackers; ``card_refresh_s``: at most one refresh of the live training card per this many
    seconds (each refresh starts a small process)."""

    tensorboard: bool = True
    tensorboard_dir: str | None = None
    mlflow: MLflowSection | None = None
    wandb: WandbSection | None = None
    card_refresh_s: Annotated[float, Range(gt=0)] = 30.0


class StepRecord(NamedTuple):
    """What a step callback gets: the trainer's ``StepResult`` has these two fields too."""

    step: int
    metrics: dict[str, float]


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


# ------------------------------------------------------------------------------------------- loggers
class TensorBoardLogger:
    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the tensorboard package is a dependency: a broken install
            raise TrackingError(f"TensorBoard logging needs the 'tensorboard' package ({e}); install ptdpo's "
                                "dependencies (scripts/setup.sh) or set tracking.tensorboard = false") from e
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=10)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, section: MLflowSection, run_name: str, params: Mapping[str, Any]):
        mlflow = _optional("mlflow", "mlflow")
        if section.tracking_uri:
            mlflow.set_tracking_uri(section.tracking_uri)
        mlflow.set_experiment(section.experiment)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=section.run_name or run_name)
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbLogger:
    def __init__(self, section: WandbSection, run_name: str, params: Mapping[str, Any]):
        wandb = _optional("wandb", "wandb")
        self.run = wandb.init(project=section.project, entity=section.entity, name=section.run_name or run_name,
                              mode=section.mode, dir=section.dir, config=dict(params))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def _optional(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackingError(f"tracking.{extra} is configured but the {module!r} client is not installed: "
                            f"pip install 'ptdpo[{extra}]' (an optional extra), or remove tracking.{extra}") from e


class Tracker:
    """Every configured logger; ``log`` is the trainer's ``on_step`` callback. A logger that fails while
    logging is reported once and dropped: tracking never stops training."""

    def __init__(self, loggers: list[Any], tensorboard_dir: Path | None = None):
        self.loggers = list(loggers)
        self.tensorboard_dir = tensorboard_dir

    def __call__(self, result: Any) -> None:
        self.log(int(result.step), result.metrics)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = _scalars(metrics)
        for logger in list(self.loggers):
            try:
                logger.log(step, values)
            except Exception as e:  # noqa: BLE001 - a tracking server down must not kill a 90-hour run
                print(f"[ptdpo] tracking: {type(logger).__name__} failed at step {step} ({e}); no longer used")
                self.loggers.remove(logger)

    def close(self) -> None:
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as e:  # noqa: BLE001
                print(f"[ptdpo] tracking: closing {type(logger).__name__} failed ({e})")
        self.loggers = []


def open_tracker(section: TrackingSection | None, run_name: str, log_dir: str | Path,
                 params: Mapping[str, Any] | None = None) -> Tracker:
    """The loggers ``section`` asks for (TensorBoard into ``section.tensorboard_dir`` or ``log_dir``)."""
    section = section or TrackingSection()
    loggers: list[Any] = []
    tb_dir = None
    if section.tensorboard:
        tb_dir = Path(section.tensorboard_dir) / run_name if section.tensorboard_dir else Path(log_dir)
        try:
            loggers.append(TensorBoardLogger(tb_dir))
        except TrackingError as e:  # on by default, so a broken install warns rather than stopping training
            print(f"[ptdpo] tracking: no TensorBoard logs for this run: {e}")
            tb_dir = None
    flat = flatten(params or {})
    if section.mlflow is not None:
        loggers.append(MLflowLogger(section.mlflow, run_name, flat))
    if section.wandb is not None:
        loggers.append(WandbLogger(section.wandb, run_name, flat))
    return Tracker(loggers, tb_dir)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ptd": {"k": 16}}`` -> ``{"ptd.k": 16}`` (trackers take flat parameters)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------- event files
def tensorboard_files(log_dir: str | Path | None) -> dict[str, bytes]:
    """The event files under ``log_dir`` (relative path -> bytes): what the flow stores with the run."""
    if log_dir is None or not Path(log_dir).is_dir():
        return {}
    root = Path(log_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def export_tensorboard(files: Mapping[str, bytes], dest: str | Path) -> Path:
    """Write stored event files (a run's ``tensorboard_logs``) under ``dest`` for ``tensorboard --logdir``."""
    dest = Path(dest)
    for rel, data in files.items():
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:
            raise ValueError(f"tensorboard file {rel!r} would land outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under ``log_dir`` (tag -> [(step, value)]), read with
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


# ------------------------------------------------------------------------ steps across processes
def step_writer(path: str | Path) -> Callable[[Any], None]:
    """An ``on_step`` callback appending ``{"step", "metrics"}`` lines to ``path`` (torchrun's rank 0)."""
    path = Path(path)

    def write(result: Any) -> None:
        line = json.dumps({"step": int(result.step), "metrics": _scalars(result.metrics)})
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    return write


@contextmanager
def follow_steps(path: str | Path, on_step: Callable[[StepRecord], None] | None,
                 every_s: float = 2.0) -> Iterator[None]:
    """While the body runs, feed every step line appended to ``path`` to ``on_step`` (a thread polling
    every ``every_s`` seconds; the lines left at the end are fed too)."""
    if on_step is None:
        yield
        return
    path = Path(path)
    stop = threading.Event()
    state = {"offset": 0}

    def sweep() -> None:
        if not path.exists():
            return
        with open(path, encoding="utf-8") as f:
            f.seek(state["offset"])
            while True:
                line = f.readline()
                if not line.endswith("\n"):  # a line still being written: read it next time
                    break
                state["offset"] = f.tell()
                row = json.loads(line)
                on_step(StepRecord(int(row["step"]), dict(row["metrics"])))

    def loop() -> None:
        while not stop.wait(every_s):
            sweep()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        sweep()
