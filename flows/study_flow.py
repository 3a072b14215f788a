"""The learning-signal study (issues #8 and #16): GRPO, PTD-PO and the controls that could fake its effect
(shuffled hints, GRPO at PTD-PO's KL to the reference, answer-conditioned distillation, unstructured
hints), from ONE warm-started base model and ONE dataset, several paired seeds each (docs/study.md).

    OMP_NUM_THREADS=1 python flows/study_flow.py run --max-workers 2                # configs/study.json, ~35 min
    python flows/study_flow.py --config config configs/study_smoke.json run          # four arms, one seed

DAG::

    start           check the study config; phase-1 branches                        -> study, branches
    prepare_data    train items + audited oracle hints; ID / OOD evaluation items   -> train_items, hints, eval_items
    build_base      @model: the warm start; hint ability; the gate; base on ID/OOD   -> base_model, base_report, base_eval
    train           foreach phase-1 branch (arm x seed + the KL sweep), @model      -> policy, train_metrics, groups, solvable
    evaluate        the branch's policy on ID / OOD (not the sweep's branches)      -> eval_rows
    join            phase 1's tables; the sweep's runs apart                        -> train_metrics, ..., kl_sweep_runs, phase1
    match_kl        the KL-matched coefficient; switch: sweep / none                -> kl_sweep_result, matched
    launch_matched  phase 2 fans out: the KL-matched arm x seeds
    train_matched, evaluate_matched, join_matched: as train / evaluate / join
    report          card "study": the gate, claims, intervals, curves               -> claims, accuracy_table, kl_match, summary
    end

The step bodies are in ``steps/study.py`` and ``ptdpo/study/``; this file is wiring only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flows/_common.py when imported by a Runner

from _common import REPO_ROOT, ensure_import_path  # noqa: E402
from metaflow import Config, FlowSpec, Parameter, card, current, model, package_sources, step  # noqa: E402

ensure_import_path()

DEFAULT_STUDY_CONFIG = REPO_ROOT / "configs" / "study.json"


def _parse(text: str):
    from ptdpo.study.arms import parse_study_config

    return parse_study_config(text)


@package_sources(["../ptdpo", "../steps"], suffixes=[".py", ".txt", ".json"])
class StudyFlow(FlowSpec):
    """Learning-signal study: several RL arms x seeds from one hint-sensitive base model."""

    config = Config("config", default=str(DEFAULT_STUDY_CONFIG), parser=_parse,
                    help="Study config (JSON); see configs/study.json and docs/study.md.")
    fail_branch = Parameter(
        "fail_branch", default="",
        help="TESTING ONLY: the branch 'arm/seed' whose train step raises once its training is done, unless the "
             "run is a resume (to exercise `resume`). Empty disables it.",
    )

    @step
    def start(self):
        """Check the config; one branch per (arm, seed)."""
        import time

        from ptdpo.study.arms import branches

        self.study = self.config.to_dict()
        self.branches = branches(self.study)
        self.started_at = time.time()  # the study's wall time runs from here (a resume keeps it)
        print(f"study {self.study.get('name')!r}: arms {list(self.study['arms'])}, seeds {self.study['seeds']}, "
              f"{len(self.branches)} branches")
        self.next(self.prepare_data)

    @step
    def prepare_data(self):
        """Training items with their audited oracle hints; held-out ID and OOD evaluation items."""
        from steps.study import prepare_study, set_threads

        set_threads()
        prepared = prepare_study(self.study)
        self.train_items = prepared["train_items"]
        self.hints = prepared["hints"]
        self.eval_items = prepared["eval_items"]
        self.data_manifest = prepared["manifest"]
        print(f"data: {self.data_manifest}")
        self.next(self.build_base)

    @model
    @step
    def build_base(self):
        """The hint-sensitive base model (a versioned ``@model`` artifact) and what it can do."""
        import tempfile

        from steps.study import build_base, evaluate_model, set_threads

        set_threads()
        with tempfile.TemporaryDirectory() as tmp:
            path, self.base_report = build_base(self.study, tmp)
            self.base_eval = evaluate_model(path, self.eval_items, self.study.get("eval"), labels={"arm": "base", "seed": -1},
                                            reasoning=(self.study.get("base") or {}).get("reasoning"))
            self.base_model = current.model.save(str(path), label="base_model",
                                                 metadata={"study": self.study.get("name"), **self.base_report["spec"]})
        print(f"base model: hint ability {self.base_report.get('hint_ability')}")
        self.next(self.train, foreach="branches")

    @model
    @step
    def train(self):
        """Phase 1, one (arm, seed) or one coefficient of the KL sweep: RL from the base model; the trained
        weights as ``@model``."""
        _train_branch(self)
        self.next(self.evaluate)

    @model
    @step
    def evaluate(self):
        """The branch's trained policy on the ID and OOD items (the KL sweep's branches are not evaluated)."""
        _evaluate_branch(self)
        self.next(self.join)

    @step
    def join(self, inputs):
        """Phase 1's metrics, group tables, solvable statistics, evaluations and model references."""
        from ptdpo.study.kl_sweep import SWEEP_ARM

        inputs = list(inputs)
        self.merge_artifacts(inputs, include=["study", "base_report", "base_model", "data_manifest", "started_at",
                                              "base_eval", "train_items", "hints", "eval_items"])
        _collect(self, [i for i in inputs if i.branch["arm"] != SWEEP_ARM], previous=None)
        self.phase1 = {name: getattr(self, name) for name in TABLES}
        self.kl_sweep_runs = [{"kl_coef": i.branch["kl_coef"], "seed": i.branch["seed"], "metrics": i.train_metrics,
                               "time_s": i.train_time_s}
                              for i in inputs if i.branch["arm"] == SWEEP_ARM]
        self.next(self.match_kl)

    @step
    def match_kl(self):
        """The KL coefficient of the KL-matched GRPO arm, from the sweep (``ptdpo.study.kl_sweep``); phase 2
        trains that arm over every seed. Without a ``kl_sweep`` in the config, straight to the report."""
        from ptdpo.study.arms import matched_branches
        from steps.study import kl_sweep_choice

        self.kl_sweep_result = kl_sweep_choice(self.study, self.train_metrics, self.kl_sweep_runs)
        self.matched = matched_branches(self.study, (self.kl_sweep_result or {}).get("kl_coef"))
        self.kl_phase = "sweep" if self.matched else "none"
        print(f"kl sweep: {self.kl_sweep_result}")
        self.next({"sweep": self.launch_matched, "none": self.report}, condition="kl_phase")

    @step
    def launch_matched(self):
        """Phase 2 fans out: the KL-matched arm, one branch per seed."""
        self.next(self.train_matched, foreach="matched")

    @model
    @step
    def train_matched(self):
        """Phase 2, one seed of the KL-matched arm: RL from the base model with the chosen KL coefficient."""
        _train_branch(self)
        self.next(self.evaluate_matched)

    @model
    @step
    def evaluate_matched(self):
        """The KL-matched branch's trained policy on the ID and OOD items."""
        _evaluate_branch(self)
        self.next(self.join_matched)

    @step
    def join_matched(self, inputs):
        """Phase 1's tables with phase 2's branches added."""
        inputs = list(inputs)
        self.merge_artifacts(inputs, include=["study", "base_report", "base_model", "data_manifest", "started_at",
                                              "phase1", "kl_sweep_runs", "kl_sweep_result"])
        _collect(self, inputs, previous=self.phase1)
        self.next(self.report)

    @card(type="blank", id="study")
    @step
    def report(self):
        """The study card and tables: the gate, held-out accuracy with 95% intervals over seeds, paired
        differences, KL to the reference over every rollout, entropy, solvable groups, the claims."""
        import time

        from ptdpo.study.report import final_table, headline, late_training_table, solvable_table
        from ptdpo.study.tables import (
            claims_table,
            interval_table,
            kl_match,
            paired_table,
            solvable_interval_table,
            training_table,
        )

        k = int((self.study.get("eval") or {}).get("k", 4))
        metric = f"avg@{k}"
        self.final_table = final_table(self.eval_results)
        self.late_table = late_training_table(self.train_metrics)
        self.solvable_summary = solvable_table(self.solvable)
        self.accuracy_table = {split: interval_table(self.eval_results, metric, split) for split in ("id", "ood")}
        ref = "grpo" if "grpo" in self.study["arms"] else next(iter(self.study["arms"]))
        self.paired_vs_reference = {split: paired_table(self.eval_results, metric, ref, split) for split in ("id", "ood")}
        self.training_summary = training_table(self.train_metrics)
        self.solvable_intervals = solvable_interval_table(self.solvable)
        sweep = self.study.get("kl_sweep") or {}
        self.kl_match = kl_match(self.train_metrics, **({"arm": sweep["arm"], "target": sweep["target"],
                                                          "tolerance": float(sweep.get("tolerance", 0.2))} if sweep else {}))
        self.kl_match["sweep"] = self.kl_sweep_result
        self.claims = claims_table(self.eval_results, self.train_metrics, metric=metric)
        self.wall_time_s = time.time() - self.started_at
        self.summary = {
            "study": self.study.get("name"), "run": f"{current.flow_name}/{current.run_id}", "seeds": self.study["seeds"],
            "arms": list(self.study["arms"]), "metric": metric,
            "gate": (self.base_report.get("gate") or {}).get("verdict"),
            "audit_pass_rate": (self.data_manifest.get("audit") or {}).get("pass_rate"),
            "delta_vs_" + ref: headline(self.eval_results, reference=ref, metric=metric),
            "kl_match": self.kl_match, "claims": dict(zip(self.claims["claim"], self.claims["verdict"])),
            "wall_time_s": round(self.wall_time_s), "train_time_s": round(sum(self.train_times_s.values())
                                                                     + sum(r["time_s"] for r in self.kl_sweep_runs)),
        }
        for c in _study_components(self):
            current.card["study"].append(c)
        print(self.summary)
        self.next(self.end)

    @step
    def end(self):
        print(f"run {current.pathspec}: {self.summary}")


def _train_branch(run) -> None:
    """The body of ``train`` and ``train_matched``: RL for ``run.input``, artifacts on ``run``."""
    import tempfile

    from steps.study import train_branch

    run.branch = run.input
    base_dir = current.model.load(run.base_model)
    label = f"{run.branch['arm']}_{run.branch.get('kl_coef', '')}_{run.branch['seed']}".replace("__", "_")
    with tempfile.TemporaryDirectory() as tmp:
        out = train_branch(run.branch, base_dir, run.train_items, run.hints, tmp)
        run.policy = current.model.save(str(out["model_dir"]), label=f"policy_{label}",
                                        metadata={"arm": run.branch["arm"], "seed": run.branch["seed"]})
    run.train_metrics = out["metrics"]
    run.groups = out["groups"].assign(arm=run.branch["arm"], seed=run.branch["seed"])
    run.solvable = {"arm": run.branch["arm"], "seed": run.branch["seed"], **out["solvable"]}
    run.train_time_s = out["time_s"]
    name = f"{run.branch['arm']}/{run.branch['seed']}"
    if run.fail_branch == name and not getattr(current, "origin_run_id", None):
        raise RuntimeError(f"injected failure in branch {name} (fail_branch); `resume` continues the run")
    last = run.train_metrics.tail(5)
    print(f"{name}: {len(run.train_metrics)} steps in {run.train_time_s:.0f}s, last-5 accuracy "
          f"{last['accuracy'].mean():.3f}; solvable {run.solvable}")


def _evaluate_branch(run) -> None:
    """The body of ``evaluate`` and ``evaluate_matched`` (the KL sweep's branches get no evaluation)."""
    from ptdpo.study.kl_sweep import SWEEP_ARM
    from steps.study import evaluate_model

    if run.branch["arm"] == SWEEP_ARM:
        run.eval_rows = []
        return
    path = current.model.load(run.policy)
    run.eval_rows = evaluate_model(path, run.eval_items, run.study.get("eval"),
                                   labels={"arm": run.branch["arm"], "seed": run.branch["seed"]},
                                   reasoning=(run.study.get("base") or {}).get("reasoning"))


TABLES = ("train_metrics", "groups", "solvable", "eval_results", "policies", "train_times_s")


def _collect(run, inputs: list, previous: dict | None) -> None:
    """Every branch's tables (``TABLES``) on ``run``; with ``previous`` (phase 1's tables), appended to them."""
    import pandas as pd

    prev = previous or {}

    def cat(name, frames):
        return pd.concat(([prev[name]] if name in prev else []) + frames, ignore_index=True)

    run.train_metrics = cat("train_metrics", [i.train_metrics for i in inputs])
    run.groups = cat("groups", [i.groups for i in inputs])
    run.solvable = cat("solvable", [pd.DataFrame([i.solvable for i in inputs])])
    rows = [r for i in inputs for r in i.eval_rows]
    run.eval_results = cat("eval_results", [pd.DataFrame(rows if prev else run.base_eval + rows)])
    run.policies = {**prev.get("policies", {}), **{f"{i.branch['arm']}/{i.branch['seed']}": i.policy for i in inputs}}
    run.train_times_s = {**prev.get("train_times_s", {}),
                         **{f"{i.branch['arm']}/{i.branch.get('kl_coef', '')}/{i.branch['seed']}": i.train_time_s
                            for i in inputs}}

def _kl_sweep_text(km: dict) -> str:
    """The KL sweep and the match, in words."""
    sweep = km.get("sweep")
    if not sweep:
        return f"KL match: `{km}` (no KL sweep in this study)"
    pts = ", ".join(f"{c:g} -> {k:.4f}" for c, k in sorted(sweep["sweep"].items()))
    got = (f"{km['arm']} measured {km.get(km['arm'], float('nan')):.4f} vs {km['target']} "
           f"{km.get(km['target'], float('nan')):.4f}, ratio {km.get('ratio', float('nan')):.2f}: "
           f"{'within' if km.get('matched') else 'NOT within'} {km.get('tolerance', 0.2):.0%}")
    return (f"**KL sweep** (GRPO's `kl_coef` -> mean KL to the reference over every rollout, seed "
            f"{sweep.get('seed', '')}): {pts}. Target ({sweep['target_arm']}, mean over seeds {sweep['target_seeds']}): "
            f"{sweep['target_kl']:.4f}; chosen `kl_coef` {sweep['kl_coef']:.4g} ({sweep['how']}). Over every seed, {got}.")


def _study_components(run) -> list:
    """Card components of the report step (tables and matplotlib figures)."""
    import json

    from metaflow.cards import Image, Markdown, Table

    from ptdpo.study.report import curves_figure, final_figure

    def table(df):
        df = df.round(4) if hasattr(df, "round") else df
        return Table([[str(v) for v in row] for row in df.itertuples(index=False)], headers=[str(c) for c in df.columns])

    s, summary = run.study, run.summary
    metric = summary["metric"]
    out = [Markdown(f"# Learning-signal study: {s.get('name')}"),
           Markdown(f"**run** `{summary['run']}`, **arms** {', '.join(s['arms'])}, **seeds** {s['seeds']}; wall time "
                    f"{summary['wall_time_s'] / 60:.0f} min (training {summary['train_time_s'] / 60:.0f} min of CPU "
                    f"over all branches)  \n**data**: {json.dumps(run.data_manifest.get('data'))}; audit pass rate "
                    f"{summary['audit_pass_rate']} (the project's default audit)")]
    gate = run.base_report.get("gate")
    if gate:
        m, g, v = gate["margins"], gate["groups"], gate["verdict"]
        out += [Markdown("## The gate: does the hinted teacher know more than the student, on the answer?"),
                Markdown(f"On {m['n']} held-out items, over {m['n_candidates']} candidate answers: answer margin "
                         f"(log p(gold) - max log p(wrong)) student **{m['margin_student']:.2f}**, hinted teacher "
                         f"**{m['margin_hint']:.2f}**, answer-conditioned teacher {m['margin_answer']:.2f} nats; "
                         f"p(gold) {m['p_gold_student']:.3f} / {m['p_gold_hint']:.3f} / {m['p_gold_answer']:.3f}. "
                         f"Gain {v['margin_gain_nats']:.2f} nats (target >= {v['margin_target']}). First groups of "
                         f"{g['group_size']} without the hint: {g['all_fail_frac']:.2f} all-fail (target >= "
                         f"{v['all_fail_target']}), rollout accuracy {g['rollout_accuracy']:.3f}. "
                         f"**Gate {'passed' if v['passed'] else 'NOT passed'}.**")]
    out += [Markdown("## The paper's claims"), table(run.claims),
            Markdown(f"## Held-out {metric} (ID), mean and 95% interval over seeds"), table(run.accuracy_table["id"]),
            Markdown("Paired differences against the reference arm (same seeds): "), table(run.paired_vs_reference["id"]),
            Markdown(f"## Held-out {metric} (OOD)"), table(run.accuracy_table["ood"]),
            Markdown("## Training: KL to the reference over every rollout, entropy, all-fail groups"),
            table(run.training_summary),
            Markdown(_kl_sweep_text(run.kl_match)),
            Markdown("## Items whose first group was all-fail: became solvable?"), table(run.solvable_intervals)]
    for m in [m for m in dict.fromkeys(run.eval_results["metric"]) if m == "greedy_accuracy" or m.startswith("avg@")]:
        out.append(Image.from_matplotlib(final_figure(run.eval_results, m)))
    out += [Markdown("## Training curves (mean over seeds, band = ±1 std)"),
            Image.from_matplotlib(curves_figure(run.train_metrics))]
    out += [Markdown("## All final metrics (mean ± std over seeds)"), table(run.final_table)]
    out += [Markdown("## Summary"), Markdown(f"```\n{json.dumps(run.summary, indent=1, default=str)}\n```")]
    return out


if __name__ == "__main__":
    StudyFlow()
