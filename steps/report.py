"""Step body of ``report``: the run's summary and the results table against the base model (and against
baseline runs, when the config names some).

Plain functions (no Metaflow). The flow renders the cards from what these return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ptdpo.metrics import curves as metric_curves

# Training-curve metrics shown in the cards and summarised here: (column, label) from the registry.
CURVES = metric_curves(
    "reward", "accuracy", "ptd_loss", "ptd_loss_weighted", "student_entropy", "informative_groups", "response_length",
)


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def baseline_rows(label: str, eval_results: pd.DataFrame, model: str = "trained") -> pd.DataFrame:
    """A baseline run's ``eval_results`` rows of ``model``, relabelled as ``label`` (e.g. ``grpo``)."""
    df = eval_results[eval_results["model"] == model].copy()
    df["model"] = label
    return df


def results_with_baselines(eval_results: pd.DataFrame, baselines: Mapping[str, pd.DataFrame] | None) -> pd.DataFrame:
    frames = [eval_results] + [baseline_rows(k, v) for k, v in (baselines or {}).items()]
    return pd.concat(frames, ignore_index=True)


def comparison_table(eval_results: pd.DataFrame, baselines: Mapping[str, pd.DataFrame] | None = None,
                     metric: str = "accuracy") -> pd.DataFrame:
    """Benchmarks x models (base, trained, baselines...) with deltas against ``base``."""
    from steps.evaluate import compare_results

    rows = results_with_baselines(eval_results, baselines)
    models = list(dict.fromkeys(rows["model"]))
    if "base" in models:
        models = ["base"] + [m for m in models if m != "base"]
    return compare_results(rows, baseline=models[0] if models else None, metric=metric, models=models)


def item_scores(predictions: list[pd.DataFrame]) -> pd.DataFrame:
    """Each item's score per (benchmark, model): the mean of ``correct`` over its samples (0 or 1 with one
    greedy sample). The ``eval_item_scores`` artifact: what a paired interval of trained - base needs."""
    frames = [df[["benchmark", "model", "item_id", "correct"]] for df in predictions if df is not None and len(df)]
    if not frames:
        return pd.DataFrame(columns=ITEM_SCORE_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    out = df.groupby(["benchmark", "model", "item_id"], sort=False)["correct"].mean().reset_index()
    return out.rename(columns={"correct": "score"})[ITEM_SCORE_COLUMNS]


ITEM_SCORE_COLUMNS = ["benchmark", "model", "item_id", "score"]


def _paired_table(scores: pd.DataFrame | None, bench: str, base: str, trained: str) -> tuple[int, int, int, int] | None:
    """The paired 2x2 table of base vs trained on ``bench`` (``paired_counts``), or None where no paired
    interval applies: no per-item scores, different item sets, or scores that are not 0/1 (k > 1 samples)."""
    from ptdpo.study.stats import paired_counts

    if scores is None or not len(scores):
        return None
    g = scores[scores["benchmark"] == bench]
    by_model = {m: dict(zip(x["item_id"], x["score"].astype(float))) for m, x in g.groupby("model", sort=False)}
    if base not in by_model or trained not in by_model or set(by_model[base]) != set(by_model[trained]):
        return None
    ids = list(by_model[base])
    values = [by_model[m][i] for m in (base, trained) for i in ids]
    if not ids or any(v not in (0.0, 1.0) for v in values):
        return None
    return paired_counts([by_model[base][i] for i in ids], [by_model[trained][i] for i in ids])


def accuracy_intervals(eval_results: pd.DataFrame, scores: pd.DataFrame | None = None, base: str = "base",
                       trained: str = "trained", metric: str = "accuracy") -> list[dict[str, Any]]:
    """Per benchmark evaluated for both models: each accuracy with its 95% Wilson interval over the ``n``
    items, the difference trained - base with a 95% interval, whether that interval excludes 0, and a
    sentence saying so in words.

    The difference's interval is PAIRED (Newcombe's square-and-add for paired data) where ``scores`` (the
    ``eval_item_scores`` artifact) hold both models' 0/1 scores on the same items: the two models agree on
    most items, and the paired interval uses that. Otherwise (no per-item scores, k > 1 samples) it is
    Newcombe's interval for independent samples, wider than needed for the same items: conservative.
    ``method`` says which."""
    from ptdpo.study.stats import (
        binomial_interval,
        difference_interval,
        fmt_interval,
        paired_difference_interval,
    )

    if eval_results is None or not len(eval_results):
        return []
    df = eval_results[eval_results["metric"] == metric]
    out = []
    for bench, g in df.groupby("benchmark", sort=False):
        rows = {m: r for m, r in zip(g["model"], g.itertuples(index=False))}
        if base not in rows or trained not in rows:
            continue
        (pb, nb), (pt, nt) = ((float(rows[m].value), int(rows[m].n)) for m in (base, trained))
        if math.isnan(pb) or math.isnan(pt) or nb <= 0 or nt <= 0:
            continue
        ib, it = binomial_interval(pb * nb, nb), binomial_interval(pt * nt, nt)
        table = _paired_table(scores, str(bench), base, trained)
        if table is not None and sum(table) == nb == nt:
            d, method = paired_difference_interval(*table), "paired"
        else:
            d, method = difference_interval(pb, nb, pt, nt), "independent"
        side = "above 0" if d[1] > 0 else "below 0" if d[2] < 0 else "includes 0"
        verdict = {"above 0": "the interval of trained minus base excludes 0, so training raised the accuracy "
                              "(more than the chance of which items were drawn explains)",
                   "below 0": "the interval of trained minus base excludes 0, so training lowered the accuracy",
                   "includes 0": "the interval of trained minus base includes 0, so at this number of items the "
                                 "run does not show that training changed the accuracy"}[side]
        row: dict[str, Any] = {
            "benchmark": str(bench), "n_base": nb, "n_trained": nt,
            "base": pb, "base_low": ib[1], "base_high": ib[2], "trained": pt, "trained_low": it[1], "trained_high": it[2],
            "delta": d[0], "delta_low": d[1], "delta_high": d[2], "delta_excludes_0": side != "includes 0",
            "delta_method": method,
            "sentence": (f"On {bench} ({nt} held-out items), base accuracy {fmt_interval(pb, *ib[1:])} and trained "
                         f"accuracy {fmt_interval(pt, *it[1:])}; trained minus base {fmt_interval(*d)} "
                         f"(95% intervals): {verdict}."),
        }
        if table is not None:
            row.update(both_right=table[0], base_only=table[1], trained_only=table[2], both_wrong=table[3])
        out.append(row)
    return out


def training_summary(train_metrics: pd.DataFrame, last: int = 5) -> dict[str, Any]:
    """First/last values of the curves (last = mean over the final ``last`` steps)."""
    if train_metrics is None or len(train_metrics) == 0:
        return {"steps": 0}
    df = train_metrics.sort_values("step")
    out: dict[str, Any] = {"steps": int(df["step"].max()), "first_step_logged": int(df["step"].min())}
    for col, _ in CURVES:
        if col in df:
            out[f"{col}_first"] = _f(df[col].iloc[0])
            out[f"{col}_last{last}"] = _f(df[col].tail(last).mean())
    return out


def hint_generator(config: Mapping[str, Any], resolved_train: Mapping[str, Any]) -> str:
    """Which hint generator the run used, in words (without secrets: the generator's name, model, URL)."""
    from ptdpo.config import train_config_from_dict

    if resolved_train and not train_config_from_dict(dict(resolved_train)).ptd.uses_hints:
        return "none: this run uses no hints (train.ptd.enabled is false, or the teacher sees no hint)"
    gen = (config.get("hints") or {}).get("generator") or {}
    parts = [str(gen.get("name", "?"))]
    for key in ("model", "base_url"):
        if gen.get(key):
            parts.append(f"{key} {gen[key]}")
    return ", ".join(parts)


def resolved_train_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config["train"]`` typed and resolved (``TrainConfig.resolved().to_dict()``); {} without it."""
    from ptdpo.config import train_config_from_dict

    train = config.get("train")
    return train_config_from_dict(dict(train)).to_dict() if train else {}


def build_summary(
    config: Mapping[str, Any],
    data_manifest: Mapping[str, Any],
    audit_report: Mapping[str, Any] | None,
    train_metrics: pd.DataFrame,
    eval_results: pd.DataFrame,
    comparison: pd.DataFrame,
    train_info: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    item_scores: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The ``summary`` artifact: a small JSON-able dict a script or a dashboard can read.

    ``train_config`` is the resolved training config (the flow's ``train_config`` artifact:
    ``TrainConfig.resolved().to_dict()``, algorithm defaults filled in); without it, ``config["train"]``
    is resolved here. The summary reports that, never the raw JSON section."""
    train_info = dict(train_info or {})
    resolved = dict(train_config) if train_config is not None else resolved_train_config(config)
    bench = {}
    for _, row in comparison.iterrows():
        entry = {k: _f(v) for k, v in row.items() if k != "benchmark"}
        bench[str(row["benchmark"])] = {k: v for k, v in entry.items() if v is not None}
    errors = sorted(set(eval_results.loc[eval_results["metric"] == "error", "benchmark"])) if len(eval_results) else []
    audit = dict(audit_report or {})
    return {
        "name": config.get("name"),
        "data_source": (data_manifest.get("train") or {}).get("spec"),
        "hint_generator": hint_generator(config, resolved),
        "policy": resolved.get("policy"),
        "algorithm": resolved.get("algorithm"),
        "ptd": resolved.get("ptd", {}),
        "train_config": resolved,
        "train_items": (data_manifest.get("train") or {}).get("count"),
        "train_data_hash": (data_manifest.get("train") or {}).get("content_hash"),
        "audit_pass_rate": audit.get("pass_rate"),
        "training": {**training_summary(train_metrics), **train_info},
        "results": bench,
        "accuracy_intervals": accuracy_intervals(eval_results, item_scores),
        "eval_errors": errors,
    }


# ---------------------------------------------------------------------------------- for the cards
SAMPLE_COLUMNS = ["benchmark", "model", "item_id", "question", "gold", "raw_output", "extracted", "correct",
                  "reason", "truncated", "response_tokens"]
TRUNCATION_NOTE_AT = 0.5  # a truncation rate at or above this gets a sentence on the report


def pick_samples(predictions: list[pd.DataFrame], per_branch: int = 3) -> pd.DataFrame:
    """A few predictions of every (benchmark, model) branch for the report card: the first ``per_branch``
    items (sample 0), so the base and the trained model show the same items."""
    frames = []
    for df in predictions:
        if df is None or len(df) == 0:
            continue
        first = df[df["sample"] == 0] if "sample" in df else df
        for _, branch in first.groupby(["benchmark", "model"], sort=False):
            frames.append(branch.head(per_branch))
    if not frames:
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in SAMPLE_COLUMNS if c in out.columns]].reset_index(drop=True)


def sample_images(samples: pd.DataFrame, benchmarks: list[dict[str, Any]], max_side: int = 96) -> dict[tuple, bytes]:
    """``{(benchmark, item_id): PNG thumbnail}`` of the first image of each sampled item. Only the first few
    items of each benchmark are loaded again (the samples are a benchmark's first items); a benchmark that
    cannot be loaded here just has no thumbnails."""
    import io

    from ptdpo.data.schema import open_image
    from ptdpo.eval.registry import load_benchmark

    out: dict[tuple, bytes] = {}
    specs = {b["name"]: b for b in benchmarks}
    for name, group in samples.groupby("benchmark", sort=False):
        if name not in specs:
            continue
        wanted = set(group["item_id"])
        try:
            items = load_benchmark(specs[name], limit=max(len(wanted), 1) + 2)
        except Exception as e:  # noqa: BLE001 - the report goes on without pictures
            print(f"[ptdpo] report: no thumbnails for {name} ({type(e).__name__}: {e})")
            continue
        for it in items:
            if it.id in wanted and it.images:
                img = open_image(it.images[0], it.id)
                img.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                out[(name, it.id)] = buf.getvalue()
    return out


def truncation_notes(eval_results: pd.DataFrame, max_new_tokens: int | None,
                     train_metrics: pd.DataFrame | None = None, max_response_length: int | None = None) -> list[str]:
    """Sentences for the report where most outputs hit the token limit (that is why accuracy is low)."""
    notes = []
    if eval_results is not None and len(eval_results):
        rows = eval_results[eval_results["metric"] == "truncation_rate"]
        acc = eval_results[eval_results["metric"] == "accuracy"].set_index(["benchmark", "model"])["value"]
        for _, r in rows.iterrows():
            if r["value"] >= TRUNCATION_NOTE_AT:
                a = acc.get((r["benchmark"], r["model"]), float("nan"))
                notes.append(
                    f"{r['value']:.0%} of the {r['model']} model's outputs on {r['benchmark']} hit the token limit "
                    f"(eval.generation.max_new_tokens = {max_new_tokens}) before they ended: a cut output holds no "
                    f"final answer and scores 0, which is why its accuracy is {_pct(a)}. Raise "
                    "eval.generation.max_new_tokens (and train.max_response_length) for a model that writes longer.")
    if train_metrics is not None and len(train_metrics) and "truncated_frac" in train_metrics:
        mean = float(pd.to_numeric(train_metrics["truncated_frac"], errors="coerce").mean())
        if mean >= TRUNCATION_NOTE_AT:
            notes.append(f"In training, {mean:.0%} of the rollouts were cut at train.max_response_length = "
                         f"{max_response_length} tokens: those score no accuracy reward, so the reward stays low.")
    return notes


def _pct(x: float) -> str:
    return "not measured" if x is None or math.isnan(x) else f"{x:.0%}"


def relative_cell(value: Any, row: Any, base_col: str = "base") -> str:
    """A Δrel% cell in words when it is not a number: never a bare dash."""
    v = _f(value)
    if v is not None:
        return f"{v:+.3g}%"
    base = _f(row.get(base_col)) if hasattr(row, "get") else None
    if base == 0:
        return "n/a: base accuracy is 0"
    if str(row.get("benchmark", "")).startswith("overall (mean relative"):
        return "n/a: no benchmark has a base accuracy above 0"
    return "n/a: not measured"


def end_of_run_lines(run_pathspec: str, summary: Mapping[str, Any]) -> list[str]:
    """What the run prints when it ends (``run_pathspec``: ``PTDPOFlow/<run id>``): base and trained accuracy
    with their intervals per benchmark and the verdict on trained - base (the card says the same at more
    length), then where to look."""
    from ptdpo.study.stats import fmt_interval

    overall = summary.get("results", {}).get("overall (mean accuracy)") or {}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if "Δ" not in k)  # the deltas follow per benchmark
    lines = [f"run {run_pathspec}: mean accuracy over the benchmarks: {shown or 'not measured'}"]
    for r in summary.get("accuracy_intervals") or []:
        excl = "excludes 0" if r["delta_excludes_0"] else "includes 0"
        lines.append(f"  {r['benchmark']} ({r['n_trained']} items): base {fmt_interval(r['base'], r['base_low'], r['base_high'])}"
                     f" -> trained {fmt_interval(r['trained'], r['trained_low'], r['trained_high'])}; trained - base "
                     f"{fmt_interval(r['delta'], r['delta_low'], r['delta_high'])} ({r['delta_method']} 95% interval, "
                     f"{excl})")
    run_id = run_pathspec.split("/")[-1]
    lines.append(f"the report card: python flows/ptdpo_flow.py card view {run_id}/report --id report  (or card get "
                 f"{run_id}/report --id report report.html)")
    return lines
