"""Training checkpoints through metaflow-checkpoint, for the ``train`` step.

The trainer writes checkpoints as ``<root>/step-XXXXXXXX/`` plus a ``latest`` pointer file
(``ptdpo.checkpoint``). Each new one is copied (hard links) into a small staging folder holding just that
step and its own ``latest`` file, and saved with ``current.checkpoint.save``: whatever restores it gets a
folder that ``run_training(resume_from=...)`` accepts as it is.

Where training continues from:

- a ``@retry`` of the task: ``@checkpoint(load_policy="fresh")`` has already restored the previous
  attempt's last checkpoint into ``current.checkpoint.directory``;
- ``resume`` of a failed run (``current.origin_run_id`` is set): the default policy loads nothing from
  another run, so the origin run's ``train`` task is looked up and its newest checkpoint (newest attempt
  first) is loaded explicitly;
- otherwise from the base policy.

Multi-GPU (``resources.train.gpu > 1``): training runs under ``torchrun`` in a child process group
(``steps.train.launch_torchrun``); a watcher thread in the step process saves each checkpoint rank 0
writes, so a pre-empted pod still leaves its checkpoints in the datastore.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_NAME = "train"


def _link_tree(src: Path, dst: Path) -> None:
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)


def checkpoint_saver(current: Any, staging_root: Path) -> Callable[[Path], None]:
    """``on_checkpoint(path)`` for ``run_training``: save ``path`` (a ``step-*`` folder) via ``@checkpoint``."""
    staging_root.mkdir(parents=True, exist_ok=True)

    def on_checkpoint(path: str | os.PathLike) -> None:
        path = Path(path)
        stage = Path(tempfile.mkdtemp(prefix="stage-", dir=staging_root))
        try:
            _link_tree(path, stage / path.name)
            (stage / "latest").write_text(path.name + "\n")
            step = int(path.name.split("-")[-1])
            current.checkpoint.save(str(stage), name=CHECKPOINT_NAME, metadata={"step": step}, latest=True)
            print(f"[ptdpo] checkpoint at step {step} saved to the datastore")
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    return on_checkpoint


def _origin_checkpoint(flow_name: str, origin_run_id: str, step_name: str = "train") -> dict | None:
    """The newest checkpoint reference saved by ``step_name`` in the origin run (any task, newest attempt
    first), or None."""
    from metaflow import Checkpoint, Run, Task  # Checkpoint: exported by metaflow-checkpoint
    from metaflow.exception import MetaflowNotFound

    try:
        run = Run(f"{flow_name}/{origin_run_id}", _namespace_check=False)
        tasks = list(run[step_name])
    except (MetaflowNotFound, KeyError):
        return None
    best = None
    for task in tasks:
        for attempt in sorted(_attempts(task), reverse=True):
            # A Task object per attempt: Checkpoint.list(task=<pathspec str>, attempt=N) fails in
            # metaflow-checkpoint 0.2.14 (it builds the Task twice).
            try:
                refs = Checkpoint().list(task=Task(task.pathspec, attempt=attempt, _namespace_check=False))
            except Exception:  # noqa: BLE001 - no checkpoints recorded for this attempt
                refs = []
            refs = [r for r in refs if _name(r) == CHECKPOINT_NAME]
            if refs:
                newest = max(refs, key=lambda r: (_step_of(r), _version(r)))
                if best is None or _step_of(newest) > _step_of(best):
                    best = newest
                break
    return best


def _version(ref: Any) -> int:
    v = ref.get("version_id") if isinstance(ref, dict) else getattr(ref, "version_id", None)
    return int(v) if isinstance(v, int) else -1


def _attempts(task: Any) -> list[int]:
    try:
        last = int(task.current_attempt)
    except Exception:  # noqa: BLE001
        last = 0
    return list(range(last + 1))


def _name(ref: Any) -> str | None:
    return ref.get("name") if isinstance(ref, dict) else getattr(ref, "name", None)


def _step_of(ref: Any) -> int:
    meta = ref.get("metadata") if isinstance(ref, dict) else getattr(ref, "metadata", None)
    try:
        return int((meta or {}).get("step", -1))
    except (TypeError, ValueError):
        return -1


def restore_for_training(current: Any, flow_name: str) -> tuple[str | None, str | None]:
    """(folder to pass as ``resume_from`` or None, a description of where it came from)."""
    if current.checkpoint.is_loaded:
        info = current.checkpoint.info
        return current.checkpoint.directory, f"retry of {getattr(info, 'pathspec', 'this task')}"
    origin = getattr(current, "origin_run_id", None)
    if origin:
        ref = _origin_checkpoint(flow_name, origin)
        if ref is not None:
            current.checkpoint.load(ref)
            return current.checkpoint.directory, f"resume of run {origin} (step {_step_of(ref)})"
        print(f"[ptdpo] resume: the origin run {origin} saved no training checkpoint; starting from the base policy")
    return None, None


class _Watcher(threading.Thread):
    """Polls a checkpoint root and calls ``on_checkpoint`` for each new ``latest`` folder."""

    def __init__(self, root: Path, on_checkpoint: Callable[[Path], None], every_s: float = 20.0):
        super().__init__(daemon=True)
        self.root, self.on_checkpoint, self.every_s = root, on_checkpoint, every_s
        self.seen: set[str] = set()
        self.stop_event = threading.Event()

    def sweep(self) -> None:
        from ptdpo.checkpoint import latest_checkpoint

        path = latest_checkpoint(self.root) if self.root.exists() else None
        if path is not None and path.name not in self.seen:
            self.seen.add(path.name)
            try:
                self.on_checkpoint(path)
            except Exception as e:  # noqa: BLE001 - pruned while copying: the next one will do
                print(f"[ptdpo] could not save checkpoint {path.name}: {e}")

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            self.sweep()


def train_with_checkpoints(current: Any, cfg: dict, items: list, hints_table: Any, verdicts: Any,
                           resume_from: str | None, fail_after_step: int | None = None):
    """Run ``steps.train`` in this process (CPU, one GPU) or under torchrun (several GPUs), saving every
    checkpoint through ``@checkpoint``. Returns ``steps.train.TrainOutput``."""
    from _common import ptd_needs_hints

    from steps.audit import usable_hints
    from steps.train import launch_torchrun, run_training, write_job

    hints = usable_hints(hints_table.to_dict("records"), verdicts) if ptd_needs_hints(cfg["train"]) else {}
    out_dir = Path(tempfile.mkdtemp(prefix="ptdpo-train-"))
    on_checkpoint = checkpoint_saver(current, out_dir / "staging")
    gpus = int(cfg["resources"]["train"].get("gpu") or 0)
    if gpus > 1:
        workdir = write_job(out_dir / "job", cfg["train"], items, hints, resume_from)
        watcher = _Watcher(workdir / "out" / "checkpoints", on_checkpoint)
        watcher.start()
        try:
            out = launch_torchrun(workdir, nproc=gpus)
        finally:
            watcher.stop_event.set()
            watcher.join(timeout=60)
            watcher.sweep()
        return out
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(int(os.environ.get("PTDPO_NUM_THREADS", "2")), os.cpu_count() or 1)))
    return run_training(cfg["train"], items, hints, out_dir, resume_from=resume_from,
                        fail_after_step=fail_after_step, on_checkpoint=on_checkpoint, progress=False)
