"""Step body of ``audit``: the zero-spoiler audit of every hint, the report and the pass-rate floor.

:func:`run_audit` takes the items and the joined hint rows (from ``steps.hints``; ``Hint`` objects or
hint dicts work too) and returns ``(verdicts, report)``: a DataFrame with one verdict per item and the
report dict (pass rate, leak rate, counts per reason, by generator, worst examples). With a ``floor`` in
the audit config it raises ``AuditFloorError`` (whose ``.report`` carries the report) when the pass
rate is below it, which fails the run.

Audit config: the run config's ``hints.audit`` section (``ptdpo.run_config.HintAuditSection``), or a dict
of any ``ptdpo.hints.AuditConfig`` field (``max_chars``, ``max_steps``, ``require_regions``,
``fail_on_soft``, ``decisive_ignore``, ...) plus ``floor`` (None: no floor) and ``worst_n``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.audit import AuditConfig
from ptdpo.hints.report import audit_batch, check_pass_rate, format_report, usable_hints
from ptdpo.run_config import HintAuditSection

__all__ = ["run_audit", "usable_hints", "format_report"]


def run_audit(
    items: Sequence[Item | Mapping[str, Any]],
    hints: Sequence[Any],
    audit_config: HintAuditSection | Mapping[str, Any] | None = None,
):
    """(verdicts DataFrame, report dict); raises AuditFloorError below the configured floor.
    ``audit_config``: the run config's ``hints.audit`` section, or a dict of its keys."""
    if isinstance(audit_config, HintAuditSection):
        floor, worst_n, config = audit_config.floor, audit_config.worst_n, audit_config.config
    else:
        cfg = dict(audit_config or {})
        floor = cfg.pop("floor", None)
        worst_n = int(cfg.pop("worst_n", 10))
        config = AuditConfig.from_dict(cfg)
    items = [it if isinstance(it, Item) else Item.from_dict(dict(it)) for it in items]
    table, report = audit_batch(items, hints, config, worst_n=worst_n)
    report["floor"] = floor
    report["summary"] = format_report(report)
    check_pass_rate(report, floor)
    return table, report
