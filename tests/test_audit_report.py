"""The batch audit, its report, the pass-rate floor and the audit step body."""

from __future__ import annotations

import pandas as pd
import pytest

from ptdpo.data.schema import Item
from ptdpo.hints import (
    AuditFloorError,
    Hint,
    Region,
    audit_batch,
    check_pass_rate,
    format_report,
    run_generation,
    usable_hints,
)
from ptdpo.hints.oracle import OracleGenerator
from steps.audit import run_audit
from steps.hints import generate_hints_shard

G1 = {"name": "gen-a", "model": "m1", "prompt_version": "v1"}
G2 = {"name": "gen-b", "model": "m2", "prompt_version": "v1"}


def _item(i, answer="7"):
    return Item(id=f"i{i}", images=[], question="How many objects are there?", answer=answer,
                solution="4 on the left and 3 on the right, 7 in total.")


def _hint(i, *steps, gen=G1, regions=True):
    regs = [Region([0, 0, 500, 500], "left half", "objects here")] if regions else []
    return Hint(f"i{i}", regions=regs, steps=list(steps), generator=gen)


@pytest.fixture()
def batch():
    items = [_item(i) for i in range(6)]
    hints = [
        _hint(0, "Count the objects in both halves."),                       # ok
        _hint(1, "There are 7 objects.", "So the answer is 7.").to_dict(),   # leak: dict form
        _hint(2, "Count them; the left half holds 4.", gen=G2),              # decisive
        {"item_id": "i3", "status": "failed", "hint": None, "error": "HTTP 500: boom"},  # a failed shard row
        _hint(4, "Count every object.", gen=G2, regions=False),              # soft only: passes
    ]  # i5: no hint at all
    return items, hints


def test_table_and_report(batch):
    items, hints = batch
    table, report = audit_batch(items, hints, worst_n=3)
    assert isinstance(table, pd.DataFrame) and list(table["item_id"]) == [f"i{i}" for i in range(6)]
    assert list(table["passed"]) == [True, False, False, False, True, False]
    assert list(table["severity"]) == ["ok", "hard", "hard", "hard", "soft", "hard"]
    assert table.loc[1, "reasons"] == ["answer_string", "concluding_phrase"]
    assert table.loc[2, "reasons"] == ["decisive_value"]
    assert "HTTP 500: boom" in table.loc[3, "details"][0] and table.loc[5, "reasons"] == ["malformed"]
    assert table.loc[4, "reasons"] == ["no_spatial_cue"]
    assert report["n_items"] == 6 and report["n_hints"] == 4 and report["n_missing"] == 2
    assert report["n_passed"] == 2 and report["pass_rate"] == pytest.approx(2 / 6)
    assert report["leak_rate"] == pytest.approx(2 / 4)
    assert report["reason_counts"] == {"answer_string": 1, "decisive_value": 1, "concluding_phrase": 1,
                                       "no_spatial_cue": 1, "malformed": 2}
    assert report["severity_counts"] == {"hard": 4, "ok": 1, "soft": 1}
    a, b = report["by_generator"]["gen-a/m1/v1"], report["by_generator"]["gen-b/m2/v1"]
    assert (a["n"], a["passed"], b["n"], b["passed"]) == (2, 1, 2, 1)
    assert report["by_generator"]["unknown"]["n"] == 2
    assert [w["item_id"] for w in report["worst"]][0] == "i1"  # two hard reasons come first
    assert len(report["worst"]) == 3 and "There are 7 objects" in report["worst"][0]["text"]
    text = format_report(report)
    assert "2/6 items pass" in text and "answer_string=1" in text and "worst i1" in text
    ok = usable_hints(hints, table)
    assert sorted(ok) == ["i0", "i4"] and all(isinstance(h, Hint) for h in ok.values())


def test_check_pass_rate(batch):
    items, hints = batch
    _, report = audit_batch(items, hints)
    check_pass_rate(report, None)
    check_pass_rate(report, 0.3)
    with pytest.raises(AuditFloorError) as ei:
        check_pass_rate(report, 0.9)
    msg = str(ei.value)
    assert "0.333" in msg and "0.900" in msg and "4 of 6" in msg and "2 without any hint" in msg
    assert ei.value.report is report and ei.value.floor == 0.9
    with pytest.raises(ValueError, match="floor"):
        check_pass_rate(report, 90)


def test_run_audit_step(batch, tmp_path):
    items, hints = batch
    table, report = run_audit([it.to_dict() for it in items], hints, {"floor": 0.2, "worst_n": 2, "max_chars": 2000})
    assert report["floor"] == 0.2 and len(report["worst"]) == 2 and "items pass" in report["summary"]
    with pytest.raises(AuditFloorError) as ei:
        run_audit(items, hints, {"floor": 0.5})
    assert ei.value.report["n_passed"] == 2
    with pytest.raises(ValueError, match="unknown audit config key"):
        run_audit(items, hints, {"floor": 0.5, "max_char": 3})
    # stricter config: soft reasons fail too
    t2, r2 = run_audit(items, hints, {"fail_on_soft": True})
    assert r2["n_passed"] == 1


def test_end_to_end_shard_rows_into_audit(tmp_path):
    from ptdpo.data.synthetic import generate_synthetic

    items = generate_synthetic(20, seed=9)
    rows, failures = generate_hints_shard(items, {"name": "oracle"}, tmp_path, 0)
    table, report = run_audit(items, rows, {"floor": 0.99})
    assert report["pass_rate"] == 1.0 and report["by_generator"].keys() == {"oracle/scene-metadata/oracle-v1"}
    results = run_generation(OracleGenerator(), items)
    t2, _ = run_audit(items, results)
    assert list(t2["passed"]) == list(table["passed"])
