"""The training card and the run summary show the resolved training config (algorithm defaults filled in),
not the raw JSON ``train.ptd`` section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from ptdpo.config import train_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "flows"))


def _text(components) -> str:
    return json.dumps([c.render() for c in components], default=str, ensure_ascii=False)


def _results() -> pd.DataFrame:
    return pd.DataFrame([{"benchmark": "a", "model": m, "metric": "accuracy", "value": v, "n": 10}
                         for m, v in (("base", 0.5), ("trained", 0.6))])


def test_summary_and_cards_show_the_resolved_config():
    from _cards import results_components, training_components

    from steps.report import build_summary, comparison_table

    raw = {"name": "x", "train": {"policy": "tiny:0.5m", "algorithm": "dapo", "ptd": {"lambda_ptd": 0.5}}}
    resolved = train_config_from_dict(raw["train"]).to_dict()
    ev = _results()
    metrics = pd.DataFrame({"step": [1, 2], "reward": [0.1, 0.3], "ptd_loss": [0.2, 0.1],
                            "ptd_loss_weighted": [0.1, 0.05]})
    for given in (resolved, None):  # the flow's artifact, or resolved from the raw config
        s = build_summary(raw, {"train": {"count": 4}}, None, metrics, ev, comparison_table(ev), train_config=given)
        # DAPO's defaults are filled in: clip-higher, no KL; the PTD section has every key
        assert s["train_config"]["clip_high"] == 0.28 and s["train_config"]["kl_coef"] == 0.0
        assert s["ptd"]["lambda_ptd"] == 0.5 and s["ptd"]["tau_ptd"] == 1.0 and s["algorithm"] == "dapo"
        assert s["training"]["ptd_loss_weighted_first"] == 0.1
        json.dumps(s)
    card = _text(results_components(s, comparison_table(ev), ev, metrics))
    assert "Training config (resolved)" in card and "ptd.tau_ptd" in card and "clip_high" in card
    # no JSON dump of the ptd section, raw ({"lambda_ptd": 0.5}) or resolved ({"enabled": true, ...})
    assert 'lambda_ptd\\": 0.5' not in card and '{\\"enabled' not in card
    card = _text(training_components(metrics, info={"final step": 2}, train_config=resolved))
    assert "Training config (resolved)" in card and "ptd.lambda_ptd" in card and "0.28" in card
    assert "Training config" not in _text(training_components(metrics))
