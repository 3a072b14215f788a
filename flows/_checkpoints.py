"""Training checkpoints through metaflow-checkpoint, for the ``train`` step (one node) and the ``train_nodes``
step (several nodes, ``@parallel``).

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

Several nodes (``resources.train.nodes > 1``, a :class:`Gang`): every node runs one ``torchrun`` agent for
its GPUs (one process on a CPU node), rendezvous at node 0 (``current.parallel.main_ip``). Global rank 0
lives on node 0, so only node 0 (the control task) writes checkpoints and only its step process saves
them, exactly as above. Worker nodes have filesystems of their own and save nothing, so
``@checkpoint`` cannot restore anything for them: each node fetches the checkpoint to continue from itself
(:func:`restore_for_training` with ``control_task_id``), all nodes the same one: node 0's newest checkpoint
of this task's earlier attempts (``@retry``), else the origin run's (``resume``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptdpo.run_config import RunConfig

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


def _task_checkpoint(pathspec: str, attempts: Iterable[int]) -> dict | None:
    """The newest training checkpoint saved by task ``pathspec`` in the first of ``attempts`` (tried in
    order) that saved any, or None."""
    from metaflow import Checkpoint, Task  # Checkpoint: exported by metaflow-checkpoint

    for attempt in attempts:
        # A Task object per attempt: Checkpoint.list(task=<pathspec str>, attempt=N) fails in
        # metaflow-checkpoint 0.2.14 (it builds the Task twice).
        try:
            refs = Checkpoint().list(task=Task(pathspec, attempt=attempt, _namespace_check=False))
        except Exception:  # noqa: BLE001 - no such attempt, or no checkpoints recorded for it
            refs = []
        refs = [r for r in refs if _name(r) == CHECKPOINT_NAME]
        if refs:
            return max(refs, key=lambda r: (_step_of(r), _version(r)))
    return None


def _origin_checkpoint(flow_name: str, origin_run_id: str, step_name: str = "train") -> dict | None:
    """The newest checkpoint reference saved by ``step_name`` in the origin run (any task, newest attempt
    first), or None. For a ``@parallel`` step only node 0's task has any."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    try:
        run = Run(f"{flow_name}/{origin_run_id}", _namespace_check=False)
        tasks = list(run[step_name])
    except (MetaflowNotFound, KeyError):
        return None
    best = None
    for task in tasks:
        newest = _task_checkpoint(task.pathspec, sorted(_attempts(task), reverse=True))
        if newest is not None and (best is None or _step_of(newest) > _step_of(best)):
            best = newest
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


def restore_for_training(current: Any, flow_name: str, step_name: str = "train",
                         control_task_id: str | None = None) -> tuple[str | None, str | None]:
    """(folder to pass as ``resume_from`` or None, a description of where it came from).

    One task (``control_task_id`` None): a ``@retry`` finds the previous attempt's checkpoint already
    restored by ``@checkpoint(load_policy="fresh")``. A node of a ``@parallel`` step passes the control
    task's id (node 0, the only one that saves): on a retry (``current.retry_count > 0``) the control task's
    newest checkpoint of the earlier attempts (newest attempt first) is loaded explicitly, on every node.
    Either way, with nothing from a retry and ``current.origin_run_id`` set (``resume``), the origin run's
    newest checkpoint of ``step_name``."""
    if control_task_id is None:
        if current.checkpoint.is_loaded:
            info = current.checkpoint.info
            return current.checkpoint.directory, f"retry of {getattr(info, 'pathspec', 'this task')}"
    elif int(current.retry_count) > 0:
        pathspec = f"{flow_name}/{current.run_id}/{step_name}/{control_task_id}"
        ref = _task_checkpoint(pathspec, range(int(current.retry_count) - 1, -1, -1))
        if ref is not None:
            current.checkpoint.load(ref)
            return current.checkpoint.directory, f"retry of {pathspec} (step {_step_of(ref)})"
    origin = getattr(current, "origin_run_id", None)
    if origin:
        ref = _origin_checkpoint(flow_name, origin, step_name)
        if ref is not None:
            current.checkpoint.load(ref)
            return current.checkpoint.directory, f"resume of run {origin} (step {_step_of(ref)})"
        print(f"[ptdpo] resume: the origin run {origin} saved no training checkpoint; starting from the base policy")
    return None, None


@dataclass(frozen=True)
class Gang:
    """This task's place in a multi-node training job (a ``@parallel`` step): ``num_nodes`` nodes, this is
    ``node_index`` (0: the control task, home of global rank 0), rendezvous at ``main_ip:master_port``."""

    num_nodes: int
    node_index: int
    main_ip: str
    master_port: int

    @classmethod
    def from_current(cls, current: Any) -> Gang:
        """From ``current.parallel``. The port is ``$PTDPO_MASTER_PORT`` if set, else derived from the run,
        step, control task and attempt, so every node computes the same one without talking, and a retry
        (or another run on the same machine) gets another."""
        par = current.parallel
        port = os.environ.get("PTDPO_MASTER_PORT")
        if not port:
            key = f"{current.flow_name}/{current.run_id}/{current.step_name}/{par.control_task_id}/{current.retry_count}"
            port = 20000 + int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10000
        return cls(int(par.num_nodes), int(par.node_index), str(par.main_ip), int(port))


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


def train_with_checkpoints(current: Any, run_config: RunConfig, items: list, hints_table: Any, verdicts: Any,
                           resume_from: str | None, fail_after_step: int | None = None, gang: Gang | None = None,
                           on_step: Callable[[Any], None] | None = None):
    """Run ``steps.train`` on ``run_config.train`` in this process (CPU, one GPU) or under torchrun (several
    GPUs, or several nodes with ``gang``: one torchrun agent per node, ``max(gpu, 1)`` processes each),
    saving every checkpoint rank 0 writes through ``@checkpoint``. ``on_step`` gets every step (in this
    process, or followed from rank 0's steps file on node 0). Returns ``steps.train.TrainOutput``; None on
    the nodes other than node 0."""
    from ptdpo.tracking import follow_steps
    from steps.audit import usable_hints
    from steps.train import STEPS_FILE, launch_torchrun, run_training, write_job

    train = run_config.train
    hints = usable_hints(hints_table.to_dict("records"), verdicts) if train.ptd.uses_hints else {}
    out_dir = Path(tempfile.mkdtemp(prefix="ptdpo-train-"))
    on_checkpoint = checkpoint_saver(current, out_dir / "staging")
    gpus = int(run_config.resources["train"].gpu or 0)
    if gang is not None and gang.num_nodes > 1:
        workdir = write_job(out_dir / "job", train, items, hints, resume_from, fail_after_step)
        launch = dict(nproc=max(gpus, 1), nnodes=gang.num_nodes, node_rank=gang.node_index,
                      master_addr=gang.main_ip, master_port=gang.master_port)
        print(f"[ptdpo] node {gang.node_index} of {gang.num_nodes}: torchrun with {launch['nproc']} process(es), "
              f"rendezvous at {gang.main_ip}:{gang.master_port}")
        if gang.node_index != 0:  # rank 0, and so every checkpoint, is on node 0
            return launch_torchrun(workdir, **launch)
        with follow_steps(workdir / STEPS_FILE, on_step):
            return _with_watcher(workdir, on_checkpoint, lambda: launch_torchrun(workdir, **launch))
    if gpus > 1:
        workdir = write_job(out_dir / "job", train, items, hints, resume_from, fail_after_step)
        with follow_steps(workdir / STEPS_FILE, on_step):
            return _with_watcher(workdir, on_checkpoint, lambda: launch_torchrun(workdir, nproc=gpus))
    import torch

    if not torch.cuda.is_available():
        # One thread by default: the CPU runs train tiny models, which gain nothing from a second thread
        # (0.4 s a step of configs/tiny.json either way on an idle 2-core machine), while two threads on a
        # machine where another process holds a core wait on each other: 11-14 s a step, measured.
        torch.set_num_threads(max(1, min(int(os.environ.get("PTDPO_NUM_THREADS", "1")), os.cpu_count() or 1)))
    return run_training(train, items, hints, out_dir, resume_from=resume_from,
                        fail_after_step=fail_after_step, on_checkpoint=on_checkpoint, progress=False,
                        on_step=on_step)


def _with_watcher(workdir: Path, on_checkpoint: Callable[[Path], None], launch: Callable[[], Any]) -> Any:
    """``launch()`` while a watcher saves each checkpoint rank 0 writes under ``workdir``; the last one is
    saved even when ``launch`` fails (a retry or a resume continues from it)."""
    watcher = _Watcher(workdir / "out" / "checkpoints", on_checkpoint)
    watcher.start()
    try:
        return launch()
    finally:
        watcher.stop_event.set()
        watcher.join(timeout=60)
        watcher.sweep()
