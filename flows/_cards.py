"""Card contents for the flows: the training card, the audit summary, the report.

Each function returns a list of Metaflow card components; the flow appends them to ``current.card``.
Cards are read by people: every table and chart has a sentence saying what it shows, metrics have a
glossary (``ptdpo.metrics``, ``ptdpo.eval.metrics.EVAL_METRICS``), numbers that cannot be shown are said
in words (a chart of zeros, a relative change against a zero base, outputs cut at the token limit), and
tables are cut to fit a 1200-px page (``_card_parts``). Plots are matplotlib figures embedded as PNG.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd
from _card_parts import curves_figure, figure_png, fmt, glossary_table, plt, say, series_state, tables
from metaflow.cards import Image, Markdown, Table


def _plt():
    return plt()


def _fmt(v: Any, digits: int = 4) -> str:
    return fmt(v, digits)


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
                        train_config: Mapping[str, Any] | None = None, with_glossary: bool = True) -> list:
    """Curves (a metric with nothing to draw says so in words), the per-step table in column groups that
    fit the page, the glossary of the metrics shown and (``train_config``, the flow's resolved
    ``train_config`` artifact) the configuration the run trained with."""
    from ptdpo.metrics import glossary
    from steps.report import CURVES, truncation_notes

    out: list = [Markdown(f"# {title}")]
    if info:
        out.append(Markdown("  \n".join(f"**{k}**: {v}" for k, v in info.items())))
    if metrics is None or len(metrics) == 0:
        out.append(Markdown("_No training steps were logged._"))
    else:
        df = metrics.sort_values("step")
        curves = [(c, label) for c, label in CURVES if c in df.columns]
        out.append(Markdown("## Training curves"))
        out.append(say("One panel per metric, by training step; a metric that stayed at zero (or was never "
                       "measured) says so in its panel. Meanings: the glossary below."))
        out.append(Image(figure_png(curves_figure(df, curves)), label="training curves"))
        if train_config:  # the report says it once at its top
            limit = train_config.get("max_response_length")
            out.extend(Markdown(f"**Note.** {n}") for n in truncation_notes(None, None, df, limit))
        keep = ["step"] + [c for c, _ in curves] + [c for c in ("truncated_frac", "kl_ref", "grad_norm", "lr",
                                                                 "time_step") if c in df]
        out.append(Markdown("## Per-step metrics"))
        out.append(say(f"Every metric of the last {min(len(df), 200)} logged steps, one row per step (long "
                       "tables are split into column groups, each starting with the step)."))
        out.extend(tables(df[keep].tail(200), key="step"))
        if with_glossary:
            out.extend(glossary_table(glossary(keep)))
    if train_config:
        out.append(Markdown("## Training config (resolved)"))
        out.append(say("The training options this run used, algorithm defaults filled in."))
        out.append(config_table(train_config))
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
        out.append(say("The audit's numbers: how many hints were checked, the pass rate and the floor below "
                       "which the run stops."))
        out.append(Table([[k, _fmt(v)] for k, v in scalars.items()], headers=["", "value"]))
    if verdicts is not None and len(verdicts):
        out.append(say("Hints that passed, were rejected as spoilers or malformed, or were never written."))
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
        out.append(say("Why hints were rejected, by reason (a hint may have several)."))
        out.append(Image.from_matplotlib(fig, label="audit reasons"))
        plt.close(fig)
        out.append(Table([[k, v] for k, v in reasons.most_common()], headers=["reason", "hints"]))
    by_gen = report.get("by_generator") or {}
    if by_gen:
        out.append(Markdown("## By generator"))
        out.append(say("Pass rate per hint generator and model."))
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
    out.append(say(f"The first {min(len(rejected), max_examples)} rejected hints: the item, why, and the hint's "
                   "text."))
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
            fmt(text),
        ])
    out.append(Table(rows, headers=["item", "reasons", "severity", "details", "hint"]))
    return out


# ------------------------------------------------------------------------------------------- results
def about_run(summary: Mapping[str, Any], config: Mapping[str, Any] | None) -> list:
    """Where the data came from, which hint generator wrote the hints, and the resolved run config."""
    out: list = [Markdown("## About this run")]
    src = summary.get("data_source") or {}
    where = src.get("path") or src.get("data_files") or ("generated" if src.get("format") == "synthetic" else "?")
    out.append(Markdown(
        f"**training data**: {src.get('format', '?')} · {where} · {summary.get('train_items')} items · content hash "
        f"{str(summary.get('train_data_hash') or '')[:12]}  \n"
        f"**hint generator**: {summary.get('hint_generator')}  \n"
        f"**policy** {summary.get('policy')} · **algorithm** {summary.get('algorithm')} · "
        f"**audit pass rate** {_fmt(summary.get('audit_pass_rate'))}"))
    if config:
        import json

        # the training options are the resolved table below; the pod settings say nothing about results
        shown = {k: v for k, v in config.items() if k not in ("kubernetes", "train")}
        out.append(Markdown("### Resolved run config"))
        out.append(say("The whole config this run used, every extends applied and relative paths resolved "
                       "(train: the resolved table below; kubernetes left out)."))
        out.append(Markdown("```json\n" + json.dumps(shown, indent=1, default=str)[:20000] + "\n```"))
    return out


def accuracy_chart(comparison: pd.DataFrame, models: list[str],
                   intervals: list[Mapping[str, Any]] | None = None) -> list:
    """Bars of accuracy per benchmark and model, or the reason in words when there is nothing to draw; with
    ``intervals`` (the summary's ``accuracy_intervals``), the base and trained bars carry their 95% intervals."""
    benches = comparison[~comparison["benchmark"].astype(str).str.startswith("overall")]
    if not len(benches) or not models:
        return [Markdown("**Accuracy chart:** no data (no benchmark was evaluated).")]
    state = series_state(pd.concat([benches[m] for m in models], ignore_index=True))
    if state:
        return [Markdown(f"**Accuracy chart:** not drawn, {state}: every model scored 0 on every benchmark"
                         if state == "all zero" else "**Accuracy chart:** no data: every benchmark failed to score.")]
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(min(9.0, max(5.0, 1.3 * len(benches) * max(1, len(models)) / 2)), 3.2))
    width = 0.8 / len(models)
    xs = range(len(benches))
    by_bench = {r["benchmark"]: r for r in intervals or []}
    for j, m in enumerate(models):
        values = benches[m].fillna(0.0)
        err = None
        if m in ("base", "trained") and by_bench:  # the Wilson interval as an asymmetric error bar (0 if unknown)
            rows = [by_bench.get(str(b)) for b in benches["benchmark"]]
            err = [[v - r[f"{m}_low"] if r else 0.0 for v, r in zip(values, rows)],
                   [r[f"{m}_high"] - v if r else 0.0 for v, r in zip(values, rows)]]
        ax.bar([x + j * width for x in xs], values, width, label=m, yerr=err, capsize=3 if err else 0)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in xs])
    ax.set_xticklabels(benches["benchmark"], rotation=20, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    what = "Accuracy per benchmark, one bar per model" + (
        "; the lines on the base and trained bars are their 95% intervals." if by_bench else ".")
    return [say(what), Image(figure_png(fig), label="accuracy by benchmark")]


def interval_components(intervals: list[Mapping[str, Any]]) -> list:
    """Base vs trained per benchmark: a table of each accuracy and the difference with 95% intervals, a
    sentence per benchmark saying whether the difference's interval excludes 0, and what the intervals are."""
    from ptdpo.study.stats import fmt_interval

    out: list = [Markdown("### Base vs trained, with 95% intervals")]
    out.append(say("Accuracy of the base policy (before RL) and of the trained policy on the same held-out items; "
                   "each with its 95% interval, the range that the accuracy on many more items of the same kind "
                   "would fall in 95 times out of 100. If the interval of trained minus base lies wholly above 0, "
                   "the run shows that training improved the policy; if it includes 0, this number of items "
                   "cannot tell an improvement from chance."))
    out.append(Table([[r["benchmark"], r["n_trained"], fmt_interval(r["base"], r["base_low"], r["base_high"]),
                       fmt_interval(r["trained"], r["trained_low"], r["trained_high"]),
                       fmt_interval(r["delta"], r["delta_low"], r["delta_high"]),
                       "yes" if r["delta_excludes_0"] else "no", r.get("delta_method", "independent")]
                      for r in intervals],
                     headers=["benchmark", "items", "base", "trained", "trained - base", "excludes 0", "interval"]))
    out.extend(Markdown(f"**{r['benchmark']}:** {r['sentence']}") for r in intervals)
    methods = {r.get("delta_method", "independent") for r in intervals}
    how = ["Wilson intervals for each accuracy."]
    if "paired" in methods:
        how.append("Paired: Newcombe's square-and-add interval for paired data, from the items both models got "
                   "right, only one got right, or neither; it uses that the two models were scored on the same "
                   "items.")
    if "independent" in methods:
        how.append("Independent: Newcombe's interval for two independent samples (no per-item scores, or several "
                   "samples per item); the models were scored on the same items, so the true interval is "
                   "narrower: the statement is conservative.")
    out.append(say(" ".join(how)))
    return out


def sample_components(samples: pd.DataFrame | None, images: Mapping[tuple, bytes] | None) -> list:
    """A few predictions per benchmark and model: the image, the question, the raw output, the answer read
    from it and its score."""
    out: list = [Markdown("## Sample predictions")]
    if samples is None or not len(samples):
        return out + [Markdown("_No predictions were recorded._")]
    out.append(say("The first items of each benchmark as each model answered them: the image (small), the "
                   "question and gold answer, the model's raw output, the answer read from it and whether it "
                   "scored."))
    rows = []
    for _, r in samples.iterrows():
        thumb = (images or {}).get((r["benchmark"], r["item_id"]))
        score = ("correct" if float(r["correct"]) >= 1 else "wrong") + f" ({r.get('reason', '')})"
        if bool(r.get("truncated")):
            score += f"; cut at {r.get('response_tokens')} tokens"
        rows.append([Image(thumb, label=None) if thumb else "(no image)",
                     fmt(f"{r['benchmark']} / {r['model']}: {r['question']} (gold: {r['gold']})"),
                     fmt(r["raw_output"]), fmt(r["extracted"]) if r["extracted"] is not None else "(none)", score])
    out.append(Table(rows, headers=["image", "question", "raw output", "extracted", "score"]))
    return out


def results_components(summary: Mapping[str, Any], comparison: pd.DataFrame, eval_results: pd.DataFrame,
                       train_metrics: pd.DataFrame | None = None, samples: pd.DataFrame | None = None,
                       images: Mapping[tuple, bytes] | None = None, notes: list[str] | None = None,
                       config: Mapping[str, Any] | None = None) -> list:
    """The report: results with a sentence per table, notes (e.g. why accuracy is 0), the accuracy chart
    (or why there is none), sample predictions, the training curves, every evaluation metric per benchmark
    and model, the glossary, the run's data, hint generator and config."""
    from ptdpo.eval.metrics import metric_meaning
    from ptdpo.metrics import glossary
    from steps.report import CURVES, relative_cell

    out: list = [Markdown(f"# ptdpo run: {summary.get('name')}")]
    out.append(Markdown("## Results (accuracy) and deltas against the base model"))
    out.append(say("Accuracy per benchmark (fraction of items answered correctly, 0 to 1) for each model; "
                   "Δabs is a model minus the base model, Δrel% the same relative to the base. The two overall "
                   "rows are the mean accuracy and the mean per-benchmark change."))
    models = [c for c in comparison.columns if c != "benchmark" and "Δ" not in c]
    rel_cols = {c: (lambda v, row: relative_cell(v, row)) for c in comparison.columns if "Δrel%" in c}
    out.extend(tables(comparison, key="benchmark", cells=rel_cols))
    intervals = summary.get("accuracy_intervals") or []
    if intervals:
        out.extend(interval_components(intervals))
    for n in notes or []:
        out.append(Markdown(f"**Why:** {n}"))
    out.extend(accuracy_chart(comparison, models, intervals))
    if summary.get("eval_errors"):
        out.append(Markdown(f"**Benchmarks that failed to evaluate:** {', '.join(summary['eval_errors'])}"))
    out.extend(sample_components(samples, images))
    if train_metrics is not None and len(train_metrics):
        out.extend(training_components(train_metrics, title="Training", with_glossary=False)[1:])
    out.append(Markdown("## All evaluation metrics"))
    out.append(say("Every evaluation metric, one row per benchmark and model (column groups split to fit)."))
    wide = eval_results.pivot_table(index=["benchmark", "model"], columns="metric", values="value",
                                    aggfunc="first", sort=False).reset_index() if len(eval_results) else eval_results
    if len(eval_results):
        wide.insert(0, "benchmark / model", wide["benchmark"].astype(str) + " / " + wide["model"].astype(str))
        wide = wide.drop(columns=["benchmark", "model"])
        wide.columns = [str(c) for c in wide.columns]
    out.extend(tables(wide))
    eval_names = [c for c in (list(wide.columns[1:]) if len(eval_results) else []) if metric_meaning(c)]
    entries = [(n, metric_meaning(n)) for n in eval_names + ["Δabs", "Δrel%"]]
    entries += [(f"{n} (training)", meaning) for n, meaning in glossary([c for c, _ in CURVES] + ["truncated_frac"])]
    out.extend(glossary_table(entries))
    out.extend(about_run(summary, config))
    if summary.get("train_config"):
        out.append(Markdown("## Training config (resolved)"))
        out.append(say("The training options this run used, algorithm defaults filled in."))
        out.append(config_table(summary["train_config"]))
    return out
