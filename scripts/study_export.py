"""Write a finished study run's plots and tables for docs/study.md.

    python scripts/study_export.py                      # the latest successful StudyFlow run
    python scripts/study_export.py --run 1795...        # one run by id
    python scripts/study_export.py --out docs/study     # where the PNGs go (default)

Reads the run's artifacts through the Metaflow client (the datastore of the current directory, as
``flows/study_flow.py`` wrote it), saves the figures as PNGs and prints the tables as Markdown, so that
every number in docs/study.md comes from one run whose id the output names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def markdown(df) -> str:
    """A DataFrame as a GitHub Markdown table (values as the card shows them)."""
    if df is None or not len(df):
        return "(empty)"
    df = df.round(4)
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def kl_sweep_figure(kl_match: dict):
    """GRPO's KL to the reference against its KL coefficient (the sweep), the target and the chosen point."""
    from ptdpo.study.report import _plt

    plt = _plt()
    sweep = (kl_match or {}).get("sweep") or {}
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    pts = sorted((float(c), float(k)) for c, k in (sweep.get("sweep") or {}).items())
    if pts:
        ax.plot([c for c, _ in pts], [k for _, k in pts], "o-", label="GRPO, sweep seed")
        ax.axhline(sweep["target_kl"], color="C1", linestyle="--", label=f"{sweep['target_arm']} (mean over seeds)")
        arm = kl_match.get("arm")
        if arm in kl_match:
            ax.plot([sweep["kl_coef"]], [kl_match[arm]], "s", color="C2", label=f"{arm} (mean over seeds)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("kl_coef", fontsize=8)
    ax.set_ylabel("KL(policy || ref), every rollout", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="StudyFlow run id (default: the latest successful run)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "study"), help="folder for the PNGs")
    args = ap.parse_args(argv)

    from metaflow import Flow, Run, namespace

    from ptdpo.study.report import curves_figure, final_figure

    namespace(None)
    run = Run(f"StudyFlow/{args.run}") if args.run else Flow("StudyFlow").latest_successful_run
    d = run.data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metric = d.summary["metric"]
    figs = {"curves.png": curves_figure(d.train_metrics), f"final_{metric.replace('@', 'at')}.png":
            final_figure(d.eval_results, metric), "final_greedy.png": final_figure(d.eval_results, "greedy_accuracy"),
            "kl_sweep.png": kl_sweep_figure(d.kl_match)}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
    print(f"# {run.pathspec} (created {run.created_at}, commit of the code: see docs/study.md)\n")
    gate = d.base_report.get("gate")
    if gate:
        print("## gate\n```\n" + json.dumps(gate, indent=1, default=float) + "\n```\n")
    print("## base hint ability\n```\n" + json.dumps(d.base_report.get("hint_ability"), indent=1, default=float)
          + "\n```\n")
    print("## claims\n" + markdown(d.claims) + "\n")
    for split in ("id", "ood"):
        print(f"## {metric} {split}\n" + markdown(d.accuracy_table[split]) + "\n")
        print(f"## paired vs reference {split}\n" + markdown(d.paired_vs_reference[split]) + "\n")
    print("## training\n" + markdown(d.training_summary) + "\n")
    print("## solvable\n" + markdown(d.solvable_intervals) + "\n")
    print("## final table\n" + markdown(d.final_table) + "\n")
    print("## kl match\n```\n" + json.dumps(d.kl_match, indent=1, default=float) + "\n```\n")
    print("## summary\n```\n" + json.dumps(d.summary, indent=1, default=str) + "\n```")
    print(f"\nfigures: {', '.join(str(out / n) for n in figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
