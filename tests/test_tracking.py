"""Experiment tracking (ptdpo.tracking): TensorBoard event files that TensorBoard's own reader reads back,
steps carried across processes, MLflow and W&B as optional extras that ``import ptdpo`` never loads, a
failing tracker dropped without stopping training; and the card pieces that turn numbers into words."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ptdpo.run_config import RunConfigError, load_config_file, run_config_from_dict
from ptdpo.tracking import (
    StepRecord,
    Tracker,
    TrackingError,
    TrackingSection,
    export_tensorboard,
    follow_steps,
    open_tracker,
    read_scalars,
    step_writer,
    tensorboard_files,
)

ROOT = Path(__file__).resolve().parents[1]


def test_tensorboard_event_files_round_trip(tmp_path):
    tracker = open_tracker(TrackingSection(), "run-1", tmp_path / "tb", params={"ptd": {"k": 16}})
    for step in (1, 2, 3):
        tracker(StepRecord(step, {"reward": 0.1 * step, "accuracy": float("nan"), "note": "x", "flag": True}))
    tracker.close()
    files = tensorboard_files(tracker.tensorboard_dir)
    assert files and all(name.startswith("events.out.tfevents.") for name in files)
    scalars = read_scalars(export_tensorboard(files, tmp_path / "exported"))
    assert [s for s, _ in scalars["train/reward"]] == [1, 2, 3]
    assert [round(v, 6) for _, v in scalars["train/reward"]] == [0.1, 0.2, 0.3]
    assert "train/accuracy" not in scalars and "train/note" not in scalars and "train/flag" not in scalars
    with pytest.raises(ValueError, match="outside"):
        export_tensorboard({"../escape": b"x"}, tmp_path / "exported")


def test_tensorboard_dir_from_the_config_holds_one_folder_per_run(tmp_path):
    tracker = open_tracker(TrackingSection(tensorboard_dir=str(tmp_path / "shared")), "PTDPOFlow-7", tmp_path / "x")
    tracker(StepRecord(1, {"reward": 1.0}))
    tracker.close()
    assert tracker.tensorboard_dir == tmp_path / "shared" / "PTDPOFlow-7"
    assert list((tmp_path / "shared" / "PTDPOFlow-7").glob("events.out.tfevents.*"))


def test_steps_written_by_a_worker_are_followed_in_the_step_process(tmp_path):
    seen: list[StepRecord] = []
    path = tmp_path / "steps.jsonl"
    write = step_writer(path)
    with follow_steps(path, seen.append, every_s=0.05):
        for step in (1, 2):
            write(StepRecord(step, {"reward": step / 2, "bad": float("inf")}))
        with open(path, "a") as f:
            f.write('{"step": 3, "metr')  # a line still being written is not read yet
    assert [r.step for r in seen] == [1, 2] and seen[0].metrics == {"reward": 0.5}
    with follow_steps(path, None):  # nothing to feed: a no-op
        pass


class _Broken:
    def log(self, step, metrics):
        raise ConnectionError("tracking server down")

    def close(self):
        pass


def test_a_failing_tracker_is_dropped_and_training_goes_on(capsys):
    ok: list = []

    class _Ok:
        def log(self, step, metrics):
            ok.append((step, metrics))

        def close(self):
            pass

    tracker = Tracker([_Broken(), _Ok()])
    tracker(StepRecord(1, {"reward": 1.0}))
    tracker(StepRecord(2, {"reward": 2.0}))
    assert len(tracker.loggers) == 1 and [s for s, _ in ok] == [1, 2]
    assert "tracking server down" in capsys.readouterr().out


def test_mlflow_and_wandb_are_optional_extras():
    # importing ptdpo (and everything a run config touches) loads neither client, nor tensorboard
    code = ("import sys, ptdpo, ptdpo.tracking, ptdpo.run_config, steps.train, steps.report; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb', 'tensorboard')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
    project = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "tensorboard" in deps and "mlflow" not in deps and "wandb" not in deps
    assert project["optional-dependencies"]["mlflow"] and project["optional-dependencies"]["wandb"]
    assert "tensorboard==" in (ROOT / "constraints.txt").read_text()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_configured_tracker_without_its_client_says_how_to_install_it(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed (an import of it raises ImportError)
    cfg = load_config_file(ROOT / "configs" / "tiny-test.json")
    cfg["tracking"] = {name: {}}
    section = run_config_from_dict(cfg).tracking
    with pytest.raises(TrackingError, match=rf"pip install 'ptdpo\[{name}\]'"):
        open_tracker(section, "run", tmp_path)


def test_the_tracking_section_is_typed():
    cfg = load_config_file(ROOT / "configs" / "tiny-test.json")
    assert run_config_from_dict(cfg).tracking == TrackingSection()
    cfg["tracking"] = {"wandb": {"mode": "sometimes"}, "card_refresh_s": 0, "tensorbord": True}
    with pytest.raises(RunConfigError) as e:
        run_config_from_dict(cfg)
    assert "tracking" in str(e.value) and ("tensorbord" in str(e.value) or "sometimes" in str(e.value))


# ------------------------------------------------------------------------------------ card pieces
def test_card_numbers_in_words():
    sys.path.insert(0, str(ROOT / "flows"))
    from _card_parts import MAX_COLUMNS, fmt, series_state, tables

    from steps.report import pick_samples, relative_cell, truncation_notes

    assert series_state(pd.Series([0.0, 0.0])) == "all zero" and series_state(pd.Series([math.nan])) == "no data"
    assert series_state(pd.Series([0.0, 0.5])) == ""
    assert fmt(float("nan")) == "n/a" and fmt(0.123456) == "0.1235" and "characters)" in fmt("x" * 500)
    assert "\u200b" in fmt("a" * 40)  # a long word can break
    assert relative_cell(float("nan"), {"base": 0.0, "benchmark": "b"}) == "n/a: base accuracy is 0"
    assert relative_cell(12.5, {"base": 0.4}) == "+12.5%"
    assert relative_cell(float("nan"), {"base": float("nan"), "benchmark": "overall (mean relative improvement)"}) \
        .startswith("n/a: no benchmark")
    wide = pd.DataFrame({"k": [1], **{f"c{i}": [i] for i in range(12)}})
    parts = tables(wide, key="k")
    assert len(parts) == 3 and all(len(t._headers) <= MAX_COLUMNS and t._headers[0] == "k" for t in parts)
    ev = pd.DataFrame([{"benchmark": "b", "model": "base", "metric": "truncation_rate", "value": 1.0, "n": 4},
                       {"benchmark": "b", "model": "base", "metric": "accuracy", "value": 0.0, "n": 4},
                       {"benchmark": "b", "model": "trained", "metric": "truncation_rate", "value": 0.1, "n": 4}])
    notes = truncation_notes(ev, 8, pd.DataFrame({"truncated_frac": [1.0, 0.9]}), 8)
    assert len(notes) == 2 and "hit the token limit" in notes[0] and "accuracy is 0%" in notes[0]
    preds = pd.DataFrame([{"benchmark": "b", "model": m, "item_id": f"i{i}", "sample": 0, "question": "q",
                           "gold": "a", "raw_output": "o", "extracted": None, "correct": 0.0, "reason": "no_answer",
                           "truncated": True, "response_tokens": 8} for m in ("base", "trained") for i in range(5)])
    picked = pick_samples([preds], per_branch=2)
    assert list(picked["item_id"]) == ["i0", "i1", "i0", "i1"]
    json.dumps(picked.to_dict("records"))
