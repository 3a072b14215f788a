"""Batch audit: one verdict row per item (a pandas table), the audit report and the pass-rate floor.

``audit_batch(items, hints)`` accepts hints as ``Hint`` objects, hint dicts, ``HintResult``s or the
rows ``steps.hints.generate_hints_shard`` returns. An item without a hint (generation failed) gets a
``malformed`` verdict that says why: it counts against the pass rate, it is never dropped silently.

The report: pass rate over items, leak rate over the hints that exist, counts per reason and severity,
the same by generator, and the worst rejected examples with their rendered text. ``check_pass_rate``
raises ``AuditFloorError`` (carrying the report) when the pass rate is below the configured floor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.audit import REASONS, AuditConfig, Verdict, audit, item_facts
from ptdpo.hints.render import render_hint
from ptdpo.hints.schema import Hint, HintError

LEAK_REASONS = ("answer_string", "answer_value", "choice_letter", "choice_text", "decisive_value",
                "concluding_phrase", "full_solution")


class AuditFloorError(RuntimeError):
    """The audit's pass rate is below the configured floor. ``.report`` holds the full report."""

    def __init__(self, report: dict[str, Any], floor: float):
        self.report = report
        self.floor = floor
        top = ", ".join(f"{k} {v}" for k, v in sorted(report["reason_counts"].items(), key=lambda kv: -kv[1])[:4])
        super().__init__(
            f"hint audit pass rate {report['pass_rate']:.3f} is below the configured floor {floor:.3f}: "
            f"{report['n_items'] - report['n_passed']} of {report['n_items']} items have no usable hint "
            f"({report['n_missing']} without any hint; top reasons: {top or 'none'})"
        )


def _entry(x: Any) -> tuple[str | None, Any, dict[str, Any]]:
    """(item_id, hint-like or None, extra) from any accepted hint representation."""
    if isinstance(x, Hint):
        return x.item_id, x, {}
    if hasattr(x, "status") and hasattr(x, "hint") and hasattr(x, "item_id"):  # HintResult
        return x.item_id, x.hint, {"status": x.status, "error": getattr(x, "error", None)}
    if isinstance(x, dict):
        if "status" in x and "hint" in x:  # a generate_hints_shard row
            return x.get("item_id"), x.get("hint"), {"status": x.get("status"), "error": x.get("error")}
        return x.get("item_id"), x, {}
    raise TypeError(f"cannot read a hint from {type(x).__name__}")


def _gen_name(hint: Any) -> str:
    gen = hint.generator if isinstance(hint, Hint) else (hint or {}).get("generator") if isinstance(hint, dict) else None
    if not gen:
        return "unknown"
    return "/".join(str(gen.get(k, "")) for k in ("name", "model", "prompt_version"))


def audit_table(items: Sequence[Item], hints: Iterable[Any], config: AuditConfig | dict | None = None):
    """One row per item: item_id, generator, kind, status, passed, severity, reasons, details, text."""
    import pandas as pd

    config = config if isinstance(config, AuditConfig) else AuditConfig.from_dict(config)
    by_id: dict[str, tuple[Any, dict[str, Any]]] = {}
    for x in hints:
        iid, hint, extra = _entry(x)
        if iid is not None:
            by_id[iid] = (hint, extra)
    rows = []
    for item in items:
        hint, extra = by_id.get(item.id, (None, {"status": "missing"}))
        status = extra.get("status") or "ok"
        text = ""
        kind = ""
        if hint is None:
            why = extra.get("error") or "no hint was generated"
            verdict = Verdict(item.id, False, ["malformed"], "hard", [f"malformed (hard) in hint: no hint ({why})"])
        else:
            try:
                h = hint if isinstance(hint, Hint) else Hint.from_dict(hint)
                text, kind = render_hint(h, "plain"), h.kind
            except HintError:
                pass
            verdict = audit(hint, item, config, item_facts(item, config))
        rows.append({
            "item_id": item.id,
            "generator": _gen_name(hint),
            "kind": kind,
            "status": status,
            "passed": verdict.passed,
            "severity": verdict.severity,
            "reasons": list(verdict.reasons),
            "n_hard": sum("(hard)" in d for d in verdict.details),
            "details": list(verdict.details),
            "has_hint": hint is not None,
            "chars": len(text),
            "text": text,
        })
    return pd.DataFrame(rows, columns=["item_id", "generator", "kind", "status", "passed", "severity", "reasons",
                                       "n_hard", "details", "has_hint", "chars", "text"])


def _counts(reasons: Iterable[list[str]]) -> dict[str, int]:
    c = Counter(r for rs in reasons for r in rs)
    return {r: c[r] for r in REASONS if c[r]}


def audit_report(table, worst_n: int = 10) -> dict[str, Any]:
    n = len(table)
    has = table[table["has_hint"]] if n else table
    passed = int(table["passed"].sum()) if n else 0
    leaked = int(has["reasons"].map(lambda rs: any(r in LEAK_REASONS for r in rs)).sum()) if len(has) else 0
    by_gen = {}
    for gen, g in table.groupby("generator", sort=True) if n else []:
        by_gen[gen] = {
            "n": len(g), "passed": int(g["passed"].sum()), "pass_rate": float(g["passed"].mean()),
            "reason_counts": _counts(g["reasons"]),
        }
    bad = table[~table["passed"]] if n else table
    if len(bad):
        bad = bad.assign(_key=bad["n_hard"] * 1000 + bad["details"].map(len)).sort_values(
            ["_key", "chars"], ascending=False, kind="stable")
    worst = [
        {"item_id": r.item_id, "generator": r.generator, "reasons": list(r.reasons), "details": list(r.details)[:6],
         "text": r.text}
        for r in bad.head(worst_n).itertuples()
    ]
    return {
        "n_items": n,
        "n_hints": int(len(has)),
        "n_missing": int(n - len(has)),
        "n_passed": passed,
        "pass_rate": passed / n if n else 0.0,
        "leak_rate": leaked / len(has) if len(has) else 0.0,
        "reason_counts": _counts(table["reasons"]) if n else {},
        "severity_counts": {k: int(v) for k, v in table["severity"].value_counts().items()} if n else {},
        "by_generator": by_gen,
        "worst": worst,
    }


def audit_batch(items: Sequence[Item], hints: Iterable[Any], config: AuditConfig | dict | None = None,
                worst_n: int = 10):
    """(verdict table, report) for a batch."""
    table = audit_table(items, hints, config)
    return table, audit_report(table, worst_n)


def check_pass_rate(report: dict[str, Any], floor: float | None) -> None:
    """Raise AuditFloorError when the pass rate is below ``floor`` (None: no floor)."""
    if floor is None:
        return
    if not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"the audit floor must lie in [0, 1], got {floor}")
    if report["pass_rate"] < float(floor):
        raise AuditFloorError(report, float(floor))


def format_report(report: dict[str, Any], max_worst: int = 5) -> str:
    """Human-readable summary (for logs and cards)."""
    lines = [
        f"hint audit: {report['n_passed']}/{report['n_items']} items pass "
        f"({report['pass_rate']:.1%}); {report['n_missing']} without a hint; leak rate "
        f"{report['leak_rate']:.1%} of {report['n_hints']} hints",
    ]
    if report["reason_counts"]:
        lines.append("reasons: " + ", ".join(f"{k}={v}" for k, v in report["reason_counts"].items()))
    for gen, g in report["by_generator"].items():
        lines.append(f"  {gen}: {g['passed']}/{g['n']} pass ({g['pass_rate']:.1%})")
    for w in report["worst"][:max_worst]:
        lines.append(f"  worst {w['item_id']} [{', '.join(w['reasons'])}]: {w['details'][0] if w['details'] else ''}")
    return "\n".join(lines)


def usable_hints(hints: Iterable[Any], table) -> dict[str, Hint]:
    """item_id -> Hint for the hints whose verdict passed: the only ones PTD may use."""
    ok = set(table.loc[table["passed"] & table["has_hint"], "item_id"])
    out = {}
    for x in hints:
        iid, hint, _ = _entry(x)
        if iid in ok and hint is not None:
            out[iid] = hint if isinstance(hint, Hint) else Hint.from_dict(hint)
    return out
