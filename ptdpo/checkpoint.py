"""Atomic, verifiable training checkpoints: the folder mechanics.

A checkpoint is a folder ``step-XXXXXXXX`` written under a temporary name and renamed into place
only when complete, and ``latest`` is a one-line file replaced atomically after that. A crash while
saving therefore leaves either the previous checkpoint or the new one, never a half-written folder
that loads wrongly. ``meta.json`` names the step, the layout and every file of the folder
(:func:`checkpoint_files`) with its size and sha256, whoever wrote them: with sharded checkpoints every
rank writes its own files (``shards/__<rank>_0.distcp``) into the staging folder (:func:`staging_folder`)
and rank 0 records and commits it (:func:`commit_checkpoint`).

A checkpoint can still go bad after it was committed: a copy cut short, a flipped block on a disk, a
datastore object overwritten. :func:`checkpoint_problems` compares every file with what ``meta.json``
recorded, and :func:`find_valid_checkpoint` walks the step folders newest first, skipping (and naming)
the ones that fail. The ``latest`` pointer is a convenience for people and tools: which checkpoint is
newest is decided from the step folders themselves, so a truncated or garbled pointer never reads as
"no checkpoint".

What goes into the files (model, optimizer, trainer state) is ``ptdpo.train_state``'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"
META = "meta.json"
STEP_FOLDER = re.compile(r"^step-(\d+)$")
_HASH_WORKERS = 8  # files hashed in parallel (hashlib releases the GIL): per-rank shards of one checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, naming its folder, its step and what is wrong with it."""

    def __init__(self, path: str | Path, step: int | None, problems: list[str]):
        self.path, self.step, self.problems = str(path), step, list(problems)
        at = f" (step {step})" if step is not None else ""
        super().__init__(f"checkpoint {self.path}{at} is unusable: " + "; ".join(self.problems))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def staging_folder(root: str | Path, step: int, fresh: bool = True) -> Path:
    """The temporary folder checkpoint ``step`` is written into before :func:`commit_checkpoint`; the
    same path on every rank, so all of them can write their shards there. ``fresh``: remove what a
    crashed attempt left (the one writer, or rank 0 before a barrier, does that)."""
    root = Path(root)
    tmp = root / f".tmp-step-{step:08d}"
    if fresh:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    return tmp


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_files(folder: str | Path, files: list[str]) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` for ``files`` under ``folder``, hashed in parallel."""
    folder = Path(folder)
    with ThreadPoolExecutor(max_workers=max(1, min(_HASH_WORKERS, len(files)))) as pool:
        digests = list(pool.map(lambda f: file_sha256(folder / f), files))
    return {f: {"size": (folder / f).stat().st_size, "sha256": d} for f, d in zip(files, digests)}


def commit_checkpoint(root: str | Path, tmp: Path, step: int, keep: int = 2, meta: dict | None = None) -> Path:
    """Record the files of the complete staging folder ``tmp`` (size and sha256 of each) in its
    ``meta.json``, rename it into place as checkpoint ``step``, point ``latest`` at it and prune all but
    the newest ``keep``."""
    root = Path(root)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != META)
    (tmp / META).write_text(json.dumps({"step": step, **(meta or {}), "files": files,
                                        "file_info": describe_files(tmp, files)}))
    _fsync_dir(tmp)
    final = root / f"step-{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep)
    return final


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """One writer: ``model_state`` (tensors) and ``trainer_state`` (anything torch.save handles) as
    checkpoint ``step``, in the ``full`` layout."""
    tmp = staging_folder(root, step)
    torch.save({k: v.detach().cpu() for k, v in model_state.items()}, tmp / "model.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    return commit_checkpoint(root, tmp, step, keep, {"format": "full"})


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def checkpoint_files(path: str | Path) -> list[str]:
    """Every file of a checkpoint folder, relative to it, as recorded when it was committed."""
    return list(checkpoint_meta(path).get("files", []))


def _prune(root: Path, keep: int) -> None:
    if keep < 1:
        return
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def step_of_folder(path: str | Path) -> int | None:
    m = STEP_FOLDER.match(Path(path).name)
    return int(m.group(1)) if m else None


def step_folders(root: str | Path) -> list[Path]:
    """The ``step-*`` folders under ``root``, newest (highest step) first; staging folders are not among them."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(step_of_folder(p), p) for p in root.iterdir() if p.is_dir()]
    return [p for s, p in sorted(((s, p) for s, p in found if s is not None), reverse=True)]


def read_pointer(root: str | Path) -> str | None:
    """The folder name ``latest`` holds, or None when the pointer is missing, truncated or garbled."""
    try:
        name = (Path(root) / LATEST).read_text(errors="replace").strip()
    except OSError:
        return None
    return name if STEP_FOLDER.match(name) else None


def checkpoint_problems(path: str | Path, hashes: bool = True) -> list[str]:
    """What is wrong with checkpoint folder ``path`` (empty: nothing): ``meta.json`` missing or unreadable,
    a recorded file missing, of another size, or (``hashes``) with another sha256 than at save. A
    checkpoint written before sizes and hashes were recorded is checked for its files' presence only."""
    path = Path(path)
    if not path.is_dir():
        return ["no such folder"]
    try:
        meta = checkpoint_meta(path)
    except FileNotFoundError:
        return [f"{META} is missing (the checkpoint was never committed, or was cut short when copied)"]
    except (OSError, ValueError) as e:
        return [f"{META} is unreadable ({type(e).__name__}: {e})"]
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return [f"{META} holds no step number"]
    problems = []
    folder_step = step_of_folder(path)
    if folder_step is not None and folder_step != meta["step"]:
        problems.append(f"{META} says step {meta['step']}, the folder is named for step {folder_step}")
    info = meta.get("file_info")
    if not isinstance(info, dict):
        return problems + [f"file {f} is missing" for f in meta.get("files", []) if not (path / f).is_file()]
    present = {}
    for rel, rec in sorted(info.items()):
        p = path / rel
        if not p.is_file():
            problems.append(f"file {rel} is missing")
        elif p.stat().st_size != rec.get("size"):
            problems.append(f"file {rel} is {p.stat().st_size} bytes, {rec.get('size')} were saved")
        else:
            present[rel] = rec
    if hashes and present:
        names = sorted(present)
        with ThreadPoolExecutor(max_workers=max(1, min(_HASH_WORKERS, len(names)))) as pool:
            digests = dict(zip(names, pool.map(lambda f: file_sha256(path / f), names)))
        problems += [f"file {f} has another sha256 than at save (corrupt)" for f in names
                     if digests[f] != present[f].get("sha256")]
    return problems


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest committed checkpoint under ``root`` (the highest ``step-*`` folder holding a
    ``meta.json``), or None when there is none. The ``latest`` pointer is not needed: a truncated or
    garbled one changes nothing. Nothing is verified here (see :func:`find_valid_checkpoint`)."""
    for path in step_folders(root):
        if (path / META).is_file():
            return path
    return None


def find_valid_checkpoint(root: str | Path, on_skip: Callable[[Path, int | None, list[str]], None] | None = None,
                          hashes: bool = True) -> Path | None:
    """The newest checkpoint under ``root`` that passes :func:`checkpoint_problems`; every newer one that
    fails is reported to ``on_skip(path, step, problems)`` (default: a warning on stderr naming its path
    and step) and skipped. None when no checkpoint under ``root`` is usable."""
    import sys

    for path in step_folders(root):
        problems = checkpoint_problems(path, hashes=hashes)
        if not problems:
            return path
        step = step_of_folder(path)
        if on_skip is not None:
            on_skip(path, step, problems)
        else:
            print(f"[ptdpo] WARNING: skipping checkpoint {path} (step {step}): {'; '.join(problems)}",
                  file=sys.stderr)
    return None


def resolve_checkpoint(source: str | Path) -> Path:
    """The checkpoint folder to resume from: ``source`` itself when it is one (its files' presence and
    sizes checked), else the newest valid checkpoint under the root ``source`` (every file hashed).
    Raises :class:`CheckpointError` when there is none: a resume that was asked for never quietly
    becomes a start from scratch."""
    source = Path(source)
    if (source / META).exists() or step_of_folder(source) is not None:
        problems = checkpoint_problems(source, hashes=False)
        if problems:
            raise CheckpointError(source, step_of_folder(source), problems)
        return source
    skipped: list[str] = []

    def note(path: Path, step: int | None, problems: list[str]) -> None:
        skipped.append(f"{path.name}: {'; '.join(problems)}")
        print(f"[ptdpo] WARNING: skipping checkpoint {path} (step {step}): {'; '.join(problems)}")

    path = find_valid_checkpoint(source, on_skip=note)
    if path is None:
        found = "; ".join(skipped) if skipped else "no step-* folder with a meta.json"
        raise CheckpointError(source, None, [f"no usable checkpoint under it ({found})"])
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(model_state, trainer_state, step) of a one-writer (``full``) checkpoint folder."""
    path = Path(path)
    problems = checkpoint_problems(path, hashes=False)
    if problems:
        raise CheckpointError(path, step_of_folder(path), problems)
    meta = checkpoint_meta(path)
    model_state = torch_load(path, "model.pt", int(meta["step"]), weights_only=True)
    trainer_state = torch_load(path, "trainer.pt", int(meta["step"]), weights_only=False)
    return model_state, trainer_state, int(meta["step"])


def torch_load(path: Path, name: str, step: int, weights_only: bool) -> Any:
    """``torch.load`` of one file of a checkpoint; a failure names the file, the folder and the step
    (torch's own message, e.g. "PytorchStreamReader failed reading zip archive", names none of them)."""
    try:
        return torch.load(path / name, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any reader failure: the file is unusable
        raise CheckpointError(path, step, [f"file {name} cannot be read ({type(e).__name__}: {e})"]) from e
