"""Checkpoints are verified before they are used, and a resume never quietly becomes a start from scratch:

- ``meta.json`` records the size and sha256 of every file (the per-rank DCP shards of a sharded checkpoint
  too); a flipped byte, a cut file, a missing file or a missing ``meta.json`` is found and named;
- the newest checkpoint is found from the ``step-*`` folders: a truncated or garbled ``latest`` pointer
  does not hide it (before: "no checkpoint", and training started over);
- a corrupt newest checkpoint is skipped, naming its path and step, and the older one is used;
- ``run_training(resume_from=...)`` with nothing usable there raises (before: trained from step 0 and
  reported a resume);
- a file torch cannot read is named with its folder and step (before: "PytorchStreamReader failed reading
  zip archive" alone).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ptdpo.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    checkpoint_problems,
    find_valid_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def _flip(path: Path, at: float = 0.5) -> None:
    """Flip 16 bytes of ``path`` in place (same size: only a hash can tell)."""
    b = bytearray(path.read_bytes())
    i = int(len(b) * at)
    b[i:i + 16] = bytes(x ^ 0xFF for x in b[i:i + 16])
    path.write_bytes(bytes(b))


def _two_checkpoints(root: Path) -> tuple[Path, Path]:
    one = save_checkpoint(root, 1, {"w": torch.full((64,), 1.0)}, {"step": 1}, keep=3)
    two = save_checkpoint(root, 2, {"w": torch.full((64,), 2.0)}, {"step": 2}, keep=3)
    return one, two


def test_meta_records_size_and_sha256_of_every_file(tmp_path):
    import hashlib

    _, two = _two_checkpoints(tmp_path)
    meta = checkpoint_meta(two)
    assert meta["files"] == ["model.pt", "trainer.pt"] and set(meta["file_info"]) == {"model.pt", "trainer.pt"}
    for name, rec in meta["file_info"].items():
        data = (two / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint_problems(two) == []


@pytest.mark.parametrize("damage, expected", [
    ("flip", "file model.pt has another sha256 than at save (corrupt)"),
    ("cut", "file model.pt is"),
    ("remove", "file model.pt is missing"),
    ("meta", "meta.json is missing"),
    ("garble meta", "meta.json is unreadable"),
])
def test_damage_is_found_and_named(tmp_path, damage, expected):
    _, two = _two_checkpoints(tmp_path)
    if damage == "flip":
        _flip(two / "model.pt")
    elif damage == "cut":
        (two / "model.pt").write_bytes((two / "model.pt").read_bytes()[:100])
    elif damage == "remove":
        (two / "model.pt").unlink()
    elif damage == "meta":
        (two / "meta.json").unlink()
    else:
        (two / "meta.json").write_text('{"step": 2, "fi')
    problems = checkpoint_problems(two)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_truncated_or_garbled_pointer_does_not_hide_the_newest_checkpoint(tmp_path):
    _, two = _two_checkpoints(tmp_path)
    for pointer in ("", "step-000", "st\x00\x00garbage", "step-00000009"):
        (tmp_path / "latest").write_text(pointer)
        assert latest_checkpoint(tmp_path) == two, pointer
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == two
    model_state, _, step = load_checkpoint(latest_checkpoint(tmp_path))
    assert step == 2 and model_state["w"][0] == 2.0


def test_a_corrupt_newest_checkpoint_is_skipped_naming_path_and_step(tmp_path, capsys):
    one, two = _two_checkpoints(tmp_path)
    _flip(two / "model.pt")
    skipped = []
    assert find_valid_checkpoint(tmp_path, on_skip=lambda p, s, probs: skipped.append((p, s, probs))) == one
    assert skipped == [(two, 2, ["file model.pt has another sha256 than at save (corrupt)"])]
    assert find_valid_checkpoint(tmp_path) == one  # the default warns on stderr, naming path and step
    err = capsys.readouterr().err
    assert f"skipping checkpoint {two} (step 2)" in err and "model.pt" in err
    assert resolve_checkpoint(tmp_path) == one
    _flip(one / "trainer.pt")
    with pytest.raises(CheckpointError, match="no usable checkpoint under it .*step-00000002: file model.pt.*"
                                              "step-00000001: file trainer.pt"):
        resolve_checkpoint(tmp_path)


def test_an_unreadable_file_is_named_with_its_folder_and_step(tmp_path):
    _, two = _two_checkpoints(tmp_path)
    # a hand-edited meta.json that matches the damaged file: only torch can tell now
    _flip(two / "model.pt", at=0.9)
    meta = checkpoint_meta(two)
    meta.pop("file_info")
    (two / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(two)
    assert str(two) in str(ei.value) and "(step 2)" in str(ei.value) and "file model.pt cannot be read" in str(ei.value)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("fmt", ["full", "sharded"])
def test_train_state_checkpoints_are_verified_shards_included(tmp_path, fmt):
    from ptdpo.train_state import load_train_state, save_train_state

    model, opt = _model_and_optimizer()
    path = save_train_state(tmp_path, 3, model, opt, {"step": 3}, keep=2, fmt=fmt)
    info = checkpoint_meta(path)["file_info"]
    if fmt == "sharded":  # this rank's DCP shard file is recorded with its hash
        assert "shards/__0_0.distcp" in info and "shards/.metadata" in info
    assert all(len(rec["sha256"]) == 64 and rec["size"] > 0 for rec in info.values())
    fresh, fresh_opt = _model_and_optimizer()
    state, step = load_train_state(path, fresh, fresh_opt)
    assert step == 3 and state == {"step": 3}
    target = path / ("shards/__0_0.distcp" if fmt == "sharded" else "optimizer.pt")
    _flip(target)
    rel = str(target.relative_to(path))
    assert checkpoint_problems(path) == [f"file {rel} has another sha256 than at save (corrupt)"]
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}.* file {rel} is \d+ bytes, \d+ were saved"):
        load_train_state(path, fresh, fresh_opt)  # sizes are checked on every load, before torch reads


def test_a_resume_that_finds_nothing_usable_raises_instead_of_starting_over(tmp_path, tiny_policy):
    from ptdpo.data.synthetic import generate_synthetic
    from steps.train import InjectedFailure, run_training

    items = generate_synthetic(4, seed=0)
    cfg = {"policy": "tiny:0.5m", "group_size": 2, "prompts_per_step": 1, "max_steps": 2, "checkpoint_every": 1,
           "max_response_length": 4, "ptd": {"enabled": False}, "rollout_backend": "hf", "reward_workers": 1}
    with pytest.raises(InjectedFailure):
        run_training(cfg, items, {}, tmp_path / "a", fail_after_step=1, policy=copy.deepcopy(tiny_policy),
                     progress=False)
    root = tmp_path / "a" / "checkpoints"
    (root / "latest").write_text("step-0")  # a pointer cut short
    _flip(root / "step-00000001" / "model.pt")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as ei:
        run_training(cfg, items, {}, tmp_path / "b", resume_from=str(root), policy=copy.deepcopy(tiny_policy),
                     progress=False)
    assert "step-00000001: file model.pt has another sha256" in str(ei.value)
