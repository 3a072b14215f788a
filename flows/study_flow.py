"""The learning-signal study (issue #8): PTD-PO vs GRPO vs answer-conditioned distillation vs KL
masking alone, on the synthetic testbed, from ONE hint-sensitive base model and ONE dataset.

    OMP_NUM_THREADS=1 python flows/study_flow.py run --max-workers 2                # configs/study.json, ~50 min
    python flows/study_flow.py --config config configs/study_smoke.json run          # two arms, one seed

DAG::

    start         check the study config; the (arm x seed) branches               -> study, branches
    prepare_data  train items + audited oracle hints; ID / OOD evaluation items    -> train_items, hints, eval_items
    build_base    @model: warm start that teaches the tiny model to use hints;     -> base_model, base_report,
                  with-hint vs without-hint accuracy; base model on ID / OOD          base_eval
    train         foreach (arm x seed) @model: RL from the base model              -> policy, train_metrics, groups,
                                                                                      solvable
    evaluate      the branch's policy on ID / OOD (greedy, avg@k, pass@k, length)  -> eval_rows
    join          every branch's tables in one place                               -> train_metrics, eval_results,
                                                                                      solvable, policies
    report        card "study": curves with seed spread, final tables, headline   -> final_table, late_table,
                                                                                      solvable_summary, summary
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
        """One (arm, seed): RL from the base model; the trained weights as ``@model``."""
        import tempfile

        from steps.study import train_branch

        self.branch = self.input
        base_dir = current.model.load(self.base_model)
        with tempfile.TemporaryDirectory() as tmp:
            out = train_branch(self.branch, base_dir, self.train_items, self.hints, tmp)
            self.policy = current.model.save(str(out["model_dir"]), label=f"policy_{self.branch['arm']}_{self.branch['seed']}",
                                             metadata={"arm": self.branch["arm"], "seed": self.branch["seed"]})
        self.train_metrics = out["metrics"]
        self.groups = out["groups"].assign(arm=self.branch["arm"], seed=self.branch["seed"])
        self.solvable = {"arm": self.branch["arm"], "seed": self.branch["seed"], **out["solvable"]}
        self.train_time_s = out["time_s"]
        name = f"{self.branch['arm']}/{self.branch['seed']}"
        if self.fail_branch == name and not getattr(current, "origin_run_id", None):
            raise RuntimeError(f"injected failure in branch {name} (fail_branch); `resume` continues the run")
        last = self.train_metrics.tail(5)
        print(f"{self.branch['arm']}/{self.branch['seed']}: {len(self.train_metrics)} steps in {self.train_time_s:.0f}s, "
              f"last-5 accuracy {last['accuracy'].mean():.3f}; solvable {self.solvable}")
        self.next(self.evaluate)

    @model
    @step
    def evaluate(self):
        """The branch's trained policy on the ID and OOD items."""
        from steps.study import evaluate_model

        path = current.model.load(self.policy)
        self.eval_rows = evaluate_model(path, self.eval_items, self.study.get("eval"),
                                        labels={"arm": self.branch["arm"], "seed": self.branch["seed"]},
                                        reasoning=(self.study.get("base") or {}).get("reasoning"))
        self.next(self.join)

    @step
    def join(self, inputs):
        """Every branch's metrics, group tables, solvable statistics, evaluations and model references."""
        import pandas as pd

        inputs = list(inputs)
        self.study = inputs[0].study
        self.base_report = inputs[0].base_report
        self.base_model = inputs[0].base_model
        self.data_manifest = inputs[0].data_manifest
        self.started_at = inputs[0].started_at
        self.train_metrics = pd.concat([i.train_metrics for i in inputs], ignore_index=True)
        self.groups = pd.concat([i.groups for i in inputs], ignore_index=True)
        self.solvable = pd.DataFrame([i.solvable for i in inputs])
        self.eval_results = pd.DataFrame(inputs[0].base_eval + [r for i in inputs for r in i.eval_rows])
        self.policies = {f"{i.branch['arm']}/{i.branch['seed']}": i.policy for i in inputs}
        self.train_times_s = {f"{i.branch['arm']}/{i.branch['seed']}": i.train_time_s for i in inputs}
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
        self.kl_match = kl_match(self.train_metrics)
        self.claims = claims_table(self.eval_results, self.train_metrics, metric=metric)
        self.wall_time_s = time.time() - self.started_at
        self.summary = {
            "study": self.study.get("name"), "run": f"{current.flow_name}/{current.run_id}", "seeds": self.study["seeds"],
            "arms": list(self.study["arms"]), "metric": metric,
            "gate": (self.base_report.get("gate") or {}).get("verdict"),
            "audit_pass_rate": (self.data_manifest.get("audit") or {}).get("pass_rate"),
            "delta_vs_" + ref: headline(self.eval_results, reference=ref, metric=metric),
            "kl_match": self.kl_match, "claims": dict(zip(self.claims["claim"], self.claims["verdict"])),
            "wall_time_s": round(self.wall_time_s), "train_time_s": round(sum(self.train_times_s.values())),
        }
        for c in _study_components(self):
            current.card["study"].append(c)
        print(self.summary)
        self.next(self.end)

    @step
    def end(self):
        print(f"run {current.pathspec}: {self.summary}")


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
            Markdown(f"KL match of `grpo_kl_matched` to `ptd_structured`: `{json.dumps(run.kl_match)}`"),
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
