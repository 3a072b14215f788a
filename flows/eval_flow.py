"""Evaluate any model on the benchmark suite: one foreach branch per (benchmark, model), a card each.

    python flows/eval_flow.py run --model tiny:0.5m                                  # synthetic ID/OOD, CPU
    python flows/eval_flow.py run --model Qwen/Qwen3-VL-2B-Thinking --benchmarks paper \\
        --generation '{"backend": "vllm", "temperature": 1.0, "top_p": 0.99, "k": 8, "pass_k": [1, 8],
                       "max_new_tokens": 4096, "enable_thinking": true}'
    python flows/eval_flow.py run --model /ckpt/ptdpo --baseline /ckpt/grpo --benchmarks geometry3k,mathvista

``--benchmarks``: registry names separated by commas, ``paper`` (METHOD.md 5), or a JSON list of names
and spec objects (a user's own jsonl/parquet benchmark). The flow is wiring only: every step calls one
function of ``steps/evaluate.py``. A benchmark that fails (missing file, crash) leaves an ``error`` row in
``eval_results`` and its message in ``eval_errors``; the other branches are unaffected.

Artifacts: ``eval_results`` (benchmark, model, metric, value, n), ``eval_comparison`` (benchmarks x
models with deltas against the baseline; overall as mean accuracy and as mean relative improvement),
``predictions`` (one row per item and sample: raw output, extracted answer, why it scored),
``eval_errors``, ``benchmark_specs``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flows/_common.py when imported by a Runner

from _common import ensure_import_path  # noqa: E402
from metaflow import FlowSpec, JSONType, Parameter, card, current, package_sources, step  # noqa: E402

ensure_import_path()

DEFAULT_GENERATION = {"max_new_tokens": 16, "temperature": 0.0, "k": 1, "batch_size": 8, "show_progress": False}


@package_sources(["../ptdpo", "../steps"], suffixes=[".py", ".txt", ".json"])
class EvalFlow(FlowSpec):
    """Evaluate one model (and optionally a baseline) on registered or user benchmarks."""

    model = Parameter("model", default="tiny:0.5m", help="Policy: tiny:<size>, a folder or a hub id.")
    baseline = Parameter("baseline", default="", help="Optional second policy; deltas are against it.")
    benchmarks = Parameter(
        "benchmarks", default="synthetic_id,synthetic_ood",
        help="Comma-separated registry names, 'paper', or a JSON list of names / spec objects.",
    )
    generation = Parameter("generation", type=JSONType, default=json.dumps(DEFAULT_GENERATION),
                           help="GenerationConfig as JSON (ptdpo.eval.generation).")
    limit = Parameter("limit", default=0, type=int, help="Items per benchmark (0: all).")

    @step
    def start(self):
        """Resolve the benchmarks; one branch per (benchmark, model)."""
        from steps.evaluate import resolve_benchmarks

        refs = self.benchmarks.strip()
        self.benchmark_specs = resolve_benchmarks(json.loads(refs) if refs.startswith("[") else refs)
        models = [m for m in (self.baseline, self.model) if m]
        self.branches = [{"benchmark": b, "model": m} for b in self.benchmark_specs for m in models]
        self.next(self.evaluate, foreach="branches")

    @card(type="blank", id="branch")
    @step
    def evaluate(self):
        """Generate, score and summarise one benchmark for one model."""
        from metaflow.cards import Markdown, Table

        from steps.evaluate import evaluate_benchmark

        gen = dict(self.generation or {})
        if self.limit:
            gen["limit"] = self.limit
        self.branch = {"benchmark": self.input["benchmark"]["name"], "model": self.input["model"]}
        self.predictions, self.branch_results, self.branch_error = evaluate_benchmark(
            self.input["model"], self.input["benchmark"], gen
        )
        c = current.card["branch"]
        c.append(Markdown(f"# {self.branch['benchmark']} · {self.branch['model']}"))
        if self.branch_error:
            print(f"evaluation of {self.branch} failed: {self.branch_error}", file=sys.stderr)
            c.append(Markdown(f"**Failed:**\n\n```\n{self.branch_error[:4000]}\n```"))
        c.append(Table([[r["metric"], f"{r['value']:.4g}", r["n"]] for r in self.branch_results],
                       headers=["metric", "value", "n"]))
        if len(self.predictions):
            cols = ["item_id", "sample", "gold", "extracted", "correct", "format", "reason"]
            head = self.predictions[cols].head(20)
            c.append(Markdown("## First predictions"))
            c.append(Table([[str(v)[:80] for v in row] for row in head.itertuples(index=False)], headers=cols))
        self.next(self.join)

    @step
    def join(self, inputs):
        """The long results table and the predictions of every branch."""
        import pandas as pd

        from steps.evaluate import join_results

        self.eval_results = join_results([inp.branch_results for inp in inputs])
        self.eval_errors = {f"{i.branch['benchmark']}/{i.branch['model']}": i.branch_error
                            for i in inputs if i.branch_error}
        frames = [inp.predictions for inp in inputs if len(inp.predictions)]
        self.predictions = pd.concat(frames, ignore_index=True) if frames else inputs[0].predictions
        self.merge_artifacts(inputs, exclude=["branch", "predictions", "branch_results", "branch_error"])
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Comparison across models (deltas against the baseline), all metrics, failures."""
        from metaflow.cards import Markdown, Table

        from steps.evaluate import compare_results

        models = [m for m in (self.baseline, self.model) if m]
        self.eval_comparison = compare_results(self.eval_results, baseline=models[0], models=models)
        c = current.card["report"]
        c.append(Markdown(f"# Evaluation of {self.model}" + (f" against {self.baseline}" if self.baseline else "")))
        for title, df in (("Accuracy and deltas", self.eval_comparison), ("All metrics", self.eval_results)):
            c.append(Markdown(f"## {title}"))
            c.append(Table([[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
                            for row in df.itertuples(index=False)], headers=[str(h) for h in df.columns]))
        if self.eval_errors:
            c.append(Markdown("**Failed:** " + ", ".join(sorted(self.eval_errors))))
        self.next(self.end)

    @step
    def end(self):
        """Done: print the comparison."""
        print(self.eval_comparison.to_string(index=False))


if __name__ == "__main__":
    EvalFlow()
