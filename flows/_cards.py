"""Card contents for the flows: training curves, the audit summary, the results table.

Each function returns a list of Metaflow card components; the flow appends them to ``current.card``.
Plots are matplotlib figures embedded as PNG (``Image.from_matplotlib``), tables are ``Table``s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd
from metaflow.cards import Image, Markdown, Table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}g}"
    return str(v)


def _table(df: pd.DataFrame, digits: int = 4, max_rows: int = 200) -> Table:
    df = df.head(max_rows)
    rows = [[_fmt(v, digits) for v in row] for row in df.itertuples(index=False)]
    return Table(rows, headers=[str(c) for c in df.columns])


# ------------------------------------------------------------------------------------------ training
def config_table(train_config: Mapping[str, Any]) -> Table:
    """The resolved training config (algorithm defaults filled in), one row per key; nested sections
    (``ptd``, ``vllm``) as ``section.key``."""
    rows = []
    for key, value in train_config.items():
        if isinstance(value, Mapping):
            rows.extend([f"{key}.{k}", _fmt(v)] for k, v in value.items())
        else:
            rows.append([key, _fmt(value)])
    return Table(rows, headers=["train key", "value"])


def training_components(metrics: pd.DataFrame, title: str = "Training", info: Mapping[str, Any] | None = None,
                        train_config: Mapping[str, Any] | None = None) -> list:
    """Curves, the per-step table and (``train_config``, the flow's resolved ``train_config`` artifact)
    the configuration the run trained with."""
    from steps.report import CURVES

    out: list = [Markdown(f"# {title}")]
    if info:
        out.append(Markdown("  \n".join(f"**{k}**: {v}" for k, v in info.items())))
    if train_config:
        out.append(Markdown("## Training config (resolved)"))
        out.append(config_table(train_config))
    if metrics is None or len(metrics) == 0:
        out.append(Markdown("_No training steps were logged._"))
        return out
    df = metrics.sort_values("step")
    curves = [(c, label) for c, label in CURVES if c in df.columns]
    plt = _plt()
    ncol = 3
    nrow = max(1, math.ceil(len(curves) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (col, label) in zip(axes.flat, curves):
        ax.plot(df["step"], df[col], marker="o", markersize=2.5, linewidth=1.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    out.append(Image.from_matplotlib(fig, label="training curves"))
    plt.close(fig)
    keep = ["step"] + [c for c, _ in curves] + [c for c in ("kl_ref", "grad_norm", "lr", "time_step") if c in df]
    out.append(Markdown("## Per-step metrics"))
    out.append(_table(df[keep]))
    return out


# --------------------------------------------------------------------------------------------- audit
def _verdict_chart(verdicts: pd.DataFrame, floor: Any = None):
    """Passed / rejected / no-hint counts, with the pass-rate floor as a line."""
    passed = int(verdicts["passed"].astype(bool).sum())
    missing = int((~verdicts["has_hint"].astype(bool)).sum()) if "has_hint" in verdicts else 0
    rejected = len(verdicts) - passed - missing
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 1.8))
    labels, counts, colours = ["passed", "rejected", "no hint"], [passed, rejected, missing], ["#27ae60", "#c0392b", "#7f8c8d"]
    ax.barh(labels[::-1], counts[::-1], color=colours[::-1])
    if isinstance(floor, int | float):
        ax.axvline(float(floor) * len(verdicts), color="black", linestyle="--", linewidth=1, label=f"floor {floor:g}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("items")
    ax.set_title(f"audit verdicts: {passed}/{len(verdicts)} pass")
    fig.tight_layout()
    img = Image.from_matplotlib(fig, label="audit verdicts")
    plt.close(fig)
    return img


def audit_components(report: Mapping[str, Any], verdicts: pd.DataFrame | None, hints: pd.DataFrame | None = None,
                     max_examples: int = 20) -> list:
    """Summary numbers, rejection reasons (chart and counts) and the rejected examples with their text.
    ``report`` and ``verdicts`` are what ``steps.audit.run_audit`` returns."""
    out: list = [Markdown("# Zero-spoiler audit")]
    if report.get("summary"):
        out.append(Markdown("```\n" + str(report["summary"]) + "\n```"))
    scalars = {k: v for k, v in report.items() if not isinstance(v, dict | list) and k != "summary"}
    if scalars:
        out.append(Table([[k, _fmt(v)] for k, v in scalars.items()], headers=["", "value"]))
    if verdicts is not None and len(verdicts):
        out.append(_verdict_chart(verdicts, report.get("floor")))
    reasons = Counter({str(k): int(v) for k, v in (report.get("reason_counts") or {}).items()})
    if not reasons and verdicts is not None and len(verdicts) and "reasons" in verdicts:
        for rs in verdicts.loc[~verdicts["passed"].astype(bool), "reasons"]:
            reasons.update(list(rs) if isinstance(rs, list | tuple) else [str(rs)])
    if reasons:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(reasons) + 1.2))
        names, counts = zip(*reasons.most_common())
        ax.barh(list(names)[::-1], list(counts)[::-1], color="#c0392b")
        ax.set_xlabel("hints flagged")
        ax.set_title("audit reasons")
        fig.tight_layout()
        out.append(Image.from_matplotlib(fig, label="audit reasons"))
        plt.close(fig)
        out.append(Table([[k, v] for k, v in reasons.most_common()], headers=["reason", "hints"]))
    by_gen = report.get("by_generator") or {}
    if by_gen:
        out.append(Markdown("## By generator"))
        out.append(Table([[g, v.get("n"), v.get("passed"), _fmt(v.get("pass_rate"))] for g, v in by_gen.items()],
                         headers=["generator", "hints", "passed", "pass rate"]))
    if verdicts is None or len(verdicts) == 0:
        out.append(Markdown("_No verdicts (this run does not use hints)._"))
        return out
    rejected = verdicts[~verdicts["passed"].astype(bool)]
    out.append(Markdown(f"## Rejected examples ({len(rejected)} of {len(verdicts)} items)"))
    if len(rejected) == 0:
        out.append(Markdown("_Every hint passed._"))
        return out
    rows = []
    for row in rejected.head(max_examples).to_dict("records"):
        rs = row.get("reasons")
        details = row.get("details")
        text = str(row.get("text") or "")
        rows.append([
            row.get("item_id"),
            ", ".join(rs) if isinstance(rs, list | tuple) else str(rs),
            str(row.get("severity", "")),
            "; ".join(details[:3]) if isinstance(details, list | tuple) else "",
            text if len(text) <= 400 else text[:399] + "…",
        ])
    out.append(Table(rows, headers=["item", "reasons", "severity", "details", "hint"]))
    return out


# ------------------------------------------------------------------------------------------- results
def results_components(summary: Mapping[str, Any], comparison: pd.DataFrame, eval_results: pd.DataFrame,
                       train_metrics: pd.DataFrame | None = None) -> list:
    out: list = [Markdown(f"# ptdpo run: {summary.get('name')}"),
                 Markdown(f"**policy** {summary.get('policy')} · **algorithm** {summary.get('algorithm')} · "
                          f"**train items** {summary.get('train_items')} · "
                          f"**audit pass rate** {_fmt(summary.get('audit_pass_rate'))}")]
    out.append(Markdown("## Results (accuracy) and deltas against the base model"))
    out.append(_table(comparison))
    models = [c for c in comparison.columns if c != "benchmark" and "Δ" not in c]
    benches = comparison[~comparison["benchmark"].astype(str).str.startswith("overall")]
    if len(benches) and models:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(benches) * max(1, len(models)) / 2), 3.2))
        width = 0.8 / len(models)
        xs = range(len(benches))
        for j, m in enumerate(models):
            ax.bar([x + j * width for x in xs], benches[m].fillna(0.0), width, label=m)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in xs])
        ax.set_xticklabels(benches["benchmark"], rotation=20, fontsize=8)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out.append(Image.from_matplotlib(fig, label="accuracy by benchmark"))
        plt.close(fig)
    if summary.get("eval_errors"):
        out.append(Markdown(f"**Benchmarks that failed to evaluate:** {', '.join(summary['eval_errors'])}"))
    out.append(Markdown("## All metrics"))
    out.append(_table(eval_results))
    if summary.get("train_config"):
        out.append(Markdown("## Training config (resolved)"))
        out.append(config_table(summary["train_config"]))
    if train_metrics is not None and len(train_metrics):
        out.extend(training_components(train_metrics, title="Training curves")[1:])
    return out
