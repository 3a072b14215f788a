"""flows/eval_flow.py end to end through ``metaflow.Runner``: the tiny model on two synthetic benchmarks
in parallel foreach branches (one per benchmark x model), and the join's comparison table."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "eval_flow.py"

pytestmark = pytest.mark.slow

# Metaflow's Runner imports vendored typing_extensions, which patches typing._collect_parameters for
# the whole process; later torch/transformers imports in this test process then fail. Put it back.
_COLLECT_PARAMETERS = getattr(typing, "_collect_parameters", None)


def _restore_typing() -> None:
    if _COLLECT_PARAMETERS is not None:
        typing._collect_parameters = _COLLECT_PARAMETERS


def test_eval_flow_two_benchmarks_two_models(tmp_path, monkeypatch):
    from metaflow import Runner, namespace

    (tmp_path / ".metaflow").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USERNAME", "ptdpo-test")
    env = {
        "USERNAME": "ptdpo-test", "METAFLOW_USER": "ptdpo-test", "METAFLOW_HOME": str(tmp_path / "home"),
        "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
        "OMP_NUM_THREADS": "1", "PTDPO_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    }
    try:
        with Runner(str(FLOW), show_output=False, env=env, cwd=str(tmp_path)).run(
            model="tiny:0.5m", baseline="tiny:0.5m@1", benchmarks="synthetic_id,synthetic_ood", limit=3,
        ) as running:
            run = running.run
            assert run.successful, running.stderr
            namespace(None)
            results = run.data.eval_results
            comparison = run.data.eval_comparison
            branches = list(run["evaluate"])
    finally:
        _restore_typing()
    # one parallel branch per (benchmark, model)
    assert len(branches) == 4
    assert list(results.columns) == ["benchmark", "model", "metric", "value", "n"]
    acc = results[results.metric == "accuracy"]
    assert set(acc.benchmark) == {"synthetic_id", "synthetic_ood"}
    assert set(acc.model) == {"tiny:0.5m", "tiny:0.5m@1"}
    assert (acc.n == 3).all() and acc.value.between(0, 1).all()
    # the comparison holds both models, deltas against the baseline, and the two "overall" rows
    text = comparison.to_string()
    assert "overall (mean accuracy)" in text and "overall (mean relative improvement)" in text
    assert any("Δabs" in str(c) for c in comparison.columns)
    assert not any(isinstance(v, float) and math.isinf(v) for v in acc.value)
