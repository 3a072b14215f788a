"""Atomic training checkpoints: the folder mechanics.

A checkpoint is a folder ``step-XXXXXXXX`` written under a temporary name and renamed into place
only when complete, and ``latest`` is a one-line file replaced atomically after that. A crash while
saving therefore leaves either the previous checkpoint or the new one, never a half-written folder
that loads wrongly. ``meta.json`` names the step, the layout and every file of the folder
(:func:`checkpoint_files`), whoever wrote them: with sharded checkpoints every rank writes its own
files into the staging folder (:func:`staging_folder`) and rank 0 commits it (:func:`commit_checkpoint`).
What goes into the files (model, optimizer, trainer state) is ``ptdpo.train_state``'s business.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


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


def commit_checkpoint(root: str | Path, tmp: Path, step: int, keep: int = 2, meta: dict | None = None) -> Path:
    """Record the files of the complete staging folder ``tmp`` in its ``meta.json``, rename it into
    place as checkpoint ``step``, point ``latest`` at it and prune all but the newest ``keep``."""
    root = Path(root)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    (tmp / "meta.json").write_text(json.dumps({"step": step, **(meta or {}), "files": files}))
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
    return json.loads((Path(path) / "meta.json").read_text())


def checkpoint_files(path: str | Path) -> list[str]:
    """Every file of a checkpoint folder, relative to it, as recorded when it was committed."""
    return list(checkpoint_meta(path).get("files", []))


def _prune(root: Path, keep: int) -> None:
    if keep < 1:
        return
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder named by ``latest``, or None when there is no complete checkpoint."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "meta.json").exists():
        return None
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(model_state, trainer_state, step) of a one-writer (``full``) checkpoint folder."""
    path = Path(path)
    meta = checkpoint_meta(path)
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    return model_state, trainer_state, int(meta["step"])
