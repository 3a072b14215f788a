"""Training checkpoints through metaflow-checkpoint, for the ``train`` step (one node) and the ``train_nodes``
step (several nodes, ``@parallel``).

The trainer writes checkpoints as ``<root>/step-XXXXXXXX/`` plus a ``latest`` pointer file
(``ptdpo.checkpoint``). Each new one is copied (hard links) into a small staging folder holding just that
step and its own ``latest`` file, and saved with ``current.checkpoint.save``: whatever restores it gets a
folder that ``run_training(resume_from=...)`` accepts as it is.

Where training continues from (:func:`restore_for_training`): the newest checkpoint that verifies, found
by walking back in time,

1. this task's earlier attempts (a ``@retry``), newest attempt first;
2. the chain of runs this one continues (``resume``; a resume of a resume goes on to the first run:
   ``flows/_lineage.py``), newest run first, each run's ``train`` task newest attempt first;

within one attempt the highest step first. Each candidate is loaded from the datastore into the task's
training folder and verified (every file's size and sha256 against ``meta.json``, per-rank shards
included: ``ptdpo.checkpoint``); a bad one is skipped with a warning naming its datastore location, its
step and what is wrong, and the next older one is tried. The walk is recorded (the ``resume_chain``
artifact). When checkpoints were saved but none is usable the task fails with that record, unless the
user chose to start over (``restart_training``); with no checkpoint saved anywhere, training starts from
the base policy, and the record says so.

Multi-GPU (``resources.train.gpu > 1``): training runs under ``torchrun`` in a child process group
(``steps.train.launch_torchrun``); a watcher thread in the step process saves each checkpoint rank 0
writes, so a pre-empted pod still leaves its checkpoints in the datastore.

Several nodes (``resources.train.nodes > 1``, a :class:`Gang`): every node runs one ``torchrun`` agent for
its GPUs (one process on a CPU node), rendezvous at node 0 (``current.parallel.main_ip``). Global rank 0
lives on node 0, so only node 0 (the control task) writes checkpoints and only its step process saves
them, exactly as above. Worker nodes have filesystems of their own and save nothing, so
``@checkpoint`` cannot restore anything for them: each node fetches the checkpoint to continue from itself
(:func:`restore_for_training` with ``control_task_id``), all nodes the same one, found by the same walk
over node 0's tasks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
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


class NoUsableCheckpoint(RuntimeError):
    """Checkpoints were saved, so training was expected to continue from one, but none is usable."""


@dataclass
class Restored:
    """Where training continues from: ``path`` (a verified ``step-*`` folder) or None (the base policy),
    ``source`` (for people: ``resume of run 12 (step 4)``, ``retry of <task> (step 4)``), ``step`` (0:
    none), and ``chain``: every run, task attempt and checkpoint looked at, and what was found."""

    path: str | None
    source: str | None
    step: int
    chain: list[dict[str, Any]]


def _refs(pathspec: str, attempt: int) -> list[Any]:
    """The training checkpoints task ``pathspec`` saved in ``attempt``, highest step first."""
    from metaflow import Checkpoint, Task  # Checkpoint: exported by metaflow-checkpoint

    # A Task object per attempt: Checkpoint.list(task=<pathspec str>, attempt=N) fails in
    # metaflow-checkpoint 0.2.14 (it builds the Task twice).
    try:
        refs = Checkpoint().list(task=Task(pathspec, attempt=attempt, _namespace_check=False))
    except Exception:  # noqa: BLE001 - no such attempt, or no checkpoints recorded for it
        refs = []
    refs = [r for r in refs if _name(r) == CHECKPOINT_NAME]
    return sorted(refs, key=lambda r: (_step_of(r), _version(r)), reverse=True)


def _run_tasks(flow_name: str, run_id: str, step_name: str) -> list[Any] | None:
    """The tasks of ``step_name`` in run ``run_id`` (None: the step never ran there)."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    try:
        return list(Run(f"{flow_name}/{run_id}", _namespace_check=False)[step_name])
    except (MetaflowNotFound, KeyError):
        return None


def _version(ref: Any) -> int:
    v = ref.get("version_id") if isinstance(ref, dict) else getattr(ref, "version_id", None)
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


def _attempts(task: Any) -> list[int]:
    try:
        last = int(task.current_attempt)
    except Exception:  # noqa: BLE001
        last = 0
    return list(range(last + 1))


def _name(ref: Any) -> str | None:
    return ref.get("name") if isinstance(ref, dict) else getattr(ref, "name", None)


def _url(ref: Any) -> str:
    return str((ref.get("url") if isinstance(ref, dict) else getattr(ref, "url", None)) or "?")


def _step_of(ref: Any) -> int:
    meta = ref.get("metadata") if isinstance(ref, dict) else getattr(ref, "metadata", None)
    try:
        return int((meta or {}).get("step", -1))
    except (TypeError, ValueError):
        return -1


def _candidates(current: Any, flow_name: str, step_name: str, control_task_id: str | None,
                chain: list[dict[str, Any]]):
    """(what, pathspec, attempt, ref) for every saved checkpoint, newest first; records in ``chain`` the
    attempts and runs that saved none."""
    from _lineage import run_chain

    retry = int(current.retry_count)
    if retry > 0:
        pathspec = f"{flow_name}/{current.run_id}/{step_name}/{control_task_id or current.task_id}"
        for attempt in range(retry - 1, -1, -1):
            refs = _refs(pathspec, attempt)
            if not refs:
                chain.append({"run": str(current.run_id), "task": pathspec, "attempt": attempt,
                              "outcome": "no checkpoint saved"})
            for ref in refs:
                yield f"retry of {pathspec}", pathspec, attempt, ref
    for run_id in run_chain(current):
        tasks = _run_tasks(flow_name, run_id, step_name)
        if not tasks:
            chain.append({"run": run_id, "task": None, "attempt": None,
                          "outcome": f"no {step_name} task (the run stopped before it)"})
            continue
        for task in tasks:
            for attempt in sorted(_attempts(task), reverse=True):
                refs = _refs(task.pathspec, attempt)
                if not refs:
                    chain.append({"run": run_id, "task": task.pathspec, "attempt": attempt,
                                  "outcome": "no checkpoint saved"})
                for ref in refs:
                    yield f"resume of run {run_id}", task.pathspec, attempt, ref


def restore_for_training(current: Any, flow_name: str, dest: str | Path, step_name: str = "train",
                         control_task_id: str | None = None, restart: bool = False) -> Restored:
    """Find, load (into folders under ``dest``) and verify the checkpoint training continues from: see
    the module docstring for the order. A node of a ``@parallel`` step passes the control task's id
    (node 0, the only one that saves). Raises :class:`NoUsableCheckpoint` when checkpoints were saved
    but none is usable, unless ``restart`` (the user's explicit choice to start over then)."""
    from ptdpo.checkpoint import find_valid_checkpoint

    dest = Path(dest)
    chain: list[dict[str, Any]] = []
    for n, (what, pathspec, attempt, ref) in enumerate(_candidates(current, flow_name, step_name,
                                                                  control_task_id, chain)):
        step = _step_of(ref)
        entry = {"run": pathspec.split("/")[1], "task": pathspec, "attempt": attempt, "step": step,
                 "checkpoint": _url(ref)}
        chain.append(entry)
        folder = dest / f"candidate-{n}"
        try:
            current.checkpoint.load(ref, path=str(folder))
        except Exception as e:  # noqa: BLE001 - missing or unreadable objects in the datastore
            entry.update(outcome="skipped", reason=f"could not be loaded from the datastore ({type(e).__name__}: {e})")
            _warn(entry)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        problems: list[str] = []
        path = find_valid_checkpoint(folder, on_skip=lambda p, s, probs, acc=problems: acc.extend(probs))
        if path is None:
            entry.update(outcome="skipped", reason="; ".join(problems) or "the stored folder holds no step-* checkpoint")
            _warn(entry)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        found = int(path.name.split("-")[-1])
        if found != step:
            entry.update(outcome="skipped", reason=f"holds step {found}, its record says step {step}")
            _warn(entry)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        entry.update(outcome="used")
        print(f"[ptdpo] continuing from checkpoint {entry['checkpoint']}/{path.name} (step {step}, "
              f"{pathspec} attempt {attempt})")
        return Restored(str(path), f"{what} (step {step})", step, chain)
    saved = [e for e in chain if "checkpoint" in e]
    if saved and not restart:
        raise NoUsableCheckpoint(
            f"{len(saved)} training checkpoint(s) were saved before this task, and none is usable, so training "
            "cannot continue; it is not started over silently. What was looked at, newest first:\n"
            + "\n".join(_describe(e) for e in chain)
            + "\nTo train from the base policy instead: resume with --tag restart_training (or start a run "
              "with --restart_training True)."
        )
    if saved:
        print("[ptdpo] WARNING: no usable checkpoint; starting from the base policy, as asked (restart_training)")
        return Restored(None, "restart (no usable checkpoint; restart_training)", 0, chain)
    if chain:
        print("[ptdpo] no training checkpoint was saved before this task: starting from the base policy\n"
              + "\n".join(_describe(e) for e in chain))
    return Restored(None, None, 0, chain)


def _describe(entry: dict[str, Any]) -> str:
    where = entry.get("task") or f"run {entry['run']}"
    if entry.get("attempt") is not None:
        where += f" attempt {entry['attempt']}"
    if "checkpoint" in entry:
        where += f": checkpoint {entry['checkpoint']} (step {entry['step']})"
    reason = f": {entry['reason']}" if entry.get("reason") else ""
    return f"  - {where}: {entry['outcome']}{reason}"


def _warn(entry: dict[str, Any]) -> None:
    step = entry["step"]
    print(f"[ptdpo] WARNING: skipping checkpoint {entry['checkpoint']}/step-{step:08d} (step {step}, {entry['task']} "
          f"attempt {entry['attempt']}): {entry['reason']}; trying the next older one", file=sys.stderr)


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
                           resume_from: str | None, out_dir: str | Path, fail_after_step: int | None = None,
                           gang: Gang | None = None, after_checkpoint: Callable[[int], None] | None = None,
                           on_step: Callable[[Any], None] | None = None):
    """Run ``steps.train`` on ``run_config.train`` in this process (CPU, one GPU) or under torchrun (several
    GPUs, or several nodes with ``gang``: one torchrun agent per node, ``max(gpu, 1)`` processes each),
    working in ``out_dir`` (``steps.train.training_workdir``) and saving every checkpoint rank 0 writes
    through ``@checkpoint`` (then ``after_checkpoint(step)``, a testing hook). ``on_step`` gets every step (in
    this process, or followed from rank 0's steps file on node 0). Returns ``steps.train.TrainOutput``; None
    on the nodes other than node 0."""
    from ptdpo.tracking import follow_steps
    from steps.audit import usable_hints
    from steps.train import STEPS_FILE, launch_torchrun, run_training, write_job

    train = run_config.train
    hints = usable_hints(hints_table.to_dict("records"), verdicts) if train.ptd.uses_hints else {}
    out_dir = Path(out_dir)
    save = checkpoint_saver(current, out_dir / "staging")

    def on_checkpoint(path: str | os.PathLike) -> None:
        save(path)
        if after_checkpoint is not None:
            after_checkpoint(int(Path(path).name.split("-")[-1]))

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
