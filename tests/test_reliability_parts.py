"""The parts of fault tolerance that can be tested without running the flow:

- training folders (``steps.train.training_workdir``) are removed when training ends, on success and on
  failure; a folder left by a killed task is removed at the next start, one in use by a live process or
  without ptdpo's lock file is not (before: every training task left its ``ptdpo-train-*`` folder);
- the hint cache's durable copy (``flows/_hint_store.DatastoreMirror`` over Metaflow's local datastore
  storage): a shard interrupted after some hints, resumed on a machine whose local cache is gone, reuses
  the finished hints from the datastore and generates only the rest (before: the cache lived only in
  the local temp dir);
- the testing-only ``fault`` grammar (``flows/_faults.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "flows"))


# ------------------------------------------------------------------------------- training folders
def test_training_folder_is_removed_on_success_and_on_failure(tmp_path):
    from steps.train import WORKDIR_LOCK, WORKDIR_PREFIX, training_workdir

    with training_workdir(tmp_path) as work:
        assert work.parent == tmp_path and work.name.startswith(WORKDIR_PREFIX) and (work / WORKDIR_LOCK).exists()
        (work / "checkpoints").mkdir()
        (work / "checkpoints" / "big.pt").write_bytes(b"x" * 1000)
    assert not work.exists()
    with pytest.raises(RuntimeError, match="boom"), training_workdir(tmp_path) as work:
        (work / "model").mkdir()
        raise RuntimeError("boom")
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []


def _workdir_of(proc: subprocess.Popen) -> Path:
    for line in proc.stdout:
        if line.startswith("WORKDIR "):
            return Path(line.split(" ", 1)[1].strip())
    raise AssertionError("the training process printed no folder")


def test_stale_folders_of_dead_tasks_are_swept_and_live_or_foreign_ones_kept(tmp_path):
    from steps.train import training_workdir

    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from steps.train import training_workdir\n"
            "with training_workdir(sys.argv[2]) as w:\n"
            "    print('WORKDIR', w, flush=True)\n"
            "    time.sleep(float(sys.argv[3]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a task killed while training: its folder stays, its lock is released by the kernel
    dead = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path), "600"], stdout=subprocess.PIPE,
                            text=True, env=env)
    dead_dir = _workdir_of(dead)
    dead.kill()
    dead.wait(timeout=30)
    assert dead_dir.exists()
    foreign = tmp_path / "ptdpo-train-made-by-someone-else"  # no lock file: not ours to judge
    foreign.mkdir()
    # the next task to start sweeps the dead one's folder
    live = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path), "600"], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        live_dir = _workdir_of(live)
        assert live_dir.exists() and not dead_dir.exists() and foreign.exists()
        with training_workdir(tmp_path) as mine:  # and leaves a live task's folder alone
            assert live_dir.exists() and foreign.exists() and mine.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert not mine.exists()


# ------------------------------------------------------------------------------------ hint cache
def _items(n: int):
    from ptdpo.data.synthetic import generate_synthetic

    return generate_synthetic(n, seed=3)


class _Stop(RuntimeError):
    pass


def test_hint_cache_survives_a_lost_machine_through_the_datastore(tmp_path):
    from _hint_store import DatastoreMirror
    from metaflow.plugins.datastores.local_storage import LocalStorage

    from steps.hints import generate_hints_shard

    items = _items(6)
    mirror = DatastoreMirror(LocalStorage(str(tmp_path / "datastore")), "mf.ptdpo/hint-cache/PTDPOFlow/17")
    seen = []

    def crash_after_three(result):
        seen.append(result.item_id)
        if len(seen) == 3:
            raise _Stop("the machine went away")

    with pytest.raises(_Stop):
        generate_hints_shard(items, {"name": "oracle", "progress": False}, tmp_path / "pod-a", 0, mirror=mirror,
                             sync_every_s=3600, on_result=crash_after_three)
    # the exception path synced what was finished, although the sync interval had not passed
    segments = list((tmp_path / "datastore" / "mf.ptdpo" / "hint-cache" / "PTDPOFlow" / "17").rglob("seg-*"))
    assert len(segments) == 2  # the first hint (synced at once), then the other two at the exception
    report = {}
    rows, failures = generate_hints_shard(items, {"name": "oracle", "progress": False}, tmp_path / "pod-b", 0,
                                          mirror=mirror, sync_every_s=0, report=report)
    assert report["reused"] == 3 and report["from_mirror"] == 3 and report["generated"] == 3, report
    assert [r["item_id"] for r in rows] == [it.id for it in items] and not failures
    again = {}
    generate_hints_shard(items, {"name": "oracle", "progress": False}, tmp_path / "pod-c", 0, mirror=mirror,
                         report=again)
    assert again["reused"] == 6 and again["from_mirror"] == 6 and again["generated"] == 0, again
    # without a mirror, a machine with an empty cache has to start over
    alone = {}
    generate_hints_shard(items, {"name": "oracle", "progress": False}, tmp_path / "pod-d", 0, report=alone)
    assert alone["generated"] == 6


def test_cache_sync_is_throttled(tmp_path):
    from _hint_store import DatastoreMirror
    from metaflow.plugins.datastores.local_storage import LocalStorage

    from ptdpo.hints.generation import HintResult, ShardCache

    mirror = DatastoreMirror(LocalStorage(str(tmp_path / "ds")), "p")
    cache = ShardCache(tmp_path / "local" / "c.jsonl", "h", mirror=mirror, sync_every_s=3600)
    for i in range(5):
        cache.append(HintResult(f"i{i}", "failed", error="x", attempts=1, config_hash="h"))
    assert len(mirror.list("c.jsonl")) == 1  # the first at once, the rest waits for the interval
    cache.sync()
    assert len(mirror.list("c.jsonl")) == 2
    cache._last_sync = time.monotonic() - 3601
    cache.append(HintResult("i5", "failed", error="x", attempts=1, config_hash="h"))
    assert len(mirror.list("c.jsonl")) == 3
    fresh = ShardCache(tmp_path / "elsewhere" / "c.jsonl", "h", mirror=mirror)
    assert sorted(fresh.load()) == [f"i{i}" for i in range(6)] and fresh.from_mirror == 6


# ------------------------------------------------------------------------------------ fault grammar
def test_fault_grammar():
    from _faults import Fault, parse_faults

    steps = {"start", "train", "generate_hints", "evaluate"}
    assert parse_faults("start:raise,-, train:kill@2 ,generate_hints:raise@1", steps) == [
        Fault("start", "raise"), None, Fault("train", "kill", 2), Fault("generate_hints", "raise", 1)]
    assert parse_faults("", steps) == [] and parse_faults("-,-", steps) == []
    for bad, msg in [("train:explode", "expected <step>:raise|kill"), ("trian:raise", "no step 'trian'"),
                     ("train:kill@x", "expected")]:
        with pytest.raises(ValueError, match=msg):
            parse_faults(bad, steps)
