"""Step time of GRPO and of GRPO+PTD at all-fail, half-fail and no-fail batches, split by phase.

Both arms run in this one process, side by side, from the same initial weights and the same
sampling seeds, on the tiny offline Qwen3-VL and synthetic items. The fail fraction is fixed by a
reward that marks a set share of each group correct, so the PTD mask selects exactly the failed
rollouts; the only extra work PTD does is the teacher forward on them and the Top-K JSD in the update.

    python bench/train_step.py                      # writes the table into docs/benchmarks.md
    python bench/train_step.py --quick --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import load_average, machine_line, write_section  # noqa: E402
from ptdpo.config import PTDConfig, TrainConfig  # noqa: E402
from ptdpo.data.synthetic import generate_synthetic  # noqa: E402
from ptdpo.hints import OracleGenerator, run_generation  # noqa: E402
from ptdpo.models.tiny import build_tiny_qwen3vl  # noqa: E402
from ptdpo.trainer import Trainer  # noqa: E402

PHASES = ["time_rollout", "time_reward", "time_ref", "time_teacher", "time_update", "time_step"]
SECTION = "## Train step: GRPO vs GRPO+PTD"


def fixed_fail_reward(fail_fraction: float, group_size: int):
    """Rollout j of each group is correct iff j >= round(fail_fraction * G)."""
    n_fail = round(fail_fraction * group_size)
    counter = {"i": 0}

    def reward(texts, items):
        out = []
        for _ in texts:
            j = counter["i"] % group_size
            counter["i"] += 1
            out.append((float(j >= n_fail), 1.0))
        return out

    return reward


def make_trainer(model, processor, items, hints, ptd: bool, fail_fraction: float, args) -> Trainer:
    cfg = TrainConfig(
        policy=f"tiny:{args.size}", group_size=args.group_size, prompts_per_step=args.prompts,
        micro_batch_rollouts=args.micro_batch, max_response_length=args.response_length, lr=1e-5,
        kl_coef=0.01, seed=0, ptd=PTDConfig(enabled=ptd, lambda_ptd=0.05, k=args.k),
    ).resolved()
    return Trainer(cfg, copy.deepcopy(model), processor, items, hints=hints,
                   reward_fn=fixed_fail_reward(fail_fraction, args.group_size))


def run_pair(model, processor, items, hints, fail_fraction: float, args) -> dict[bool, list[dict]]:
    """Steps of the two arms interleaved (GRPO, GRPO+PTD, GRPO, ...), so that load from other
    processes on a shared machine hits both arms alike."""
    trainers = {ptd: make_trainer(model, processor, items, hints, ptd, fail_fraction, args) for ptd in (False, True)}
    metrics: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.steps + 1):
        for ptd, trainer in trainers.items():
            metrics[ptd].append(trainer.train_step().metrics)
    return {ptd: m[1:] for ptd, m in metrics.items()}  # drop the warm-up step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="10m")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--steps", type=int, default=4, help="measured steps per arm (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="file to write the section into")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.size, args.steps, args.response_length, args.prompts, args.group_size = "0.5m", 1, 8, 2, 4
    args.loads, args.date = load_average(), time.strftime("%Y-%m-%d")
    torch.set_num_threads(args.threads)
    model, processor = build_tiny_qwen3vl(args.size, seed=0)
    items = generate_synthetic(32, seed=0, families=["count_attr"], image_size=64)
    hints = {r.item_id: r.hint for r in run_generation(OracleGenerator(), items) if r.ok and r.hint is not None}
    rows = []
    for fail_fraction, label in [(1.0, "all fail"), (0.5, "half fail"), (0.0, "no fail")]:
        per_arm = {}
        for ptd, measured in run_pair(model, processor, items, hints, fail_fraction, args).items():
            per_arm[ptd] = {ph: statistics.median(m[ph] for m in measured) for ph in PHASES}
            per_arm[ptd]["ptd_rollout_frac"] = statistics.mean(m["ptd_rollout_frac"] for m in measured)
        base, ptd = per_arm[False], per_arm[True]
        rows.append((label, base, ptd, ptd["time_step"] / base["time_step"] - 1.0))
        print(f"{label}: GRPO {base['time_step']:.2f}s, GRPO+PTD {ptd['time_step']:.2f}s, "
              f"overhead {100 * rows[-1][3]:+.1f}%", flush=True)
    args.loads = (args.loads, load_average())
    table = render(rows, args)
    print(table)
    if not args.no_write:
        write_section(Path(args.markdown), SECTION, table)


def render(rows, args) -> str:
    cmd = "python bench/train_step.py" + (" --quick" if args.quick else "")
    lines = [
        SECTION,
        "",
        f"Command: `{cmd}` (model `tiny:{args.size}`, G={args.group_size}, {args.prompts} prompts/step, "
        f"max response {args.response_length} tokens, K={args.k}, KL 0.01, median of {args.steps} "
        f"measured steps per arm after a warm-up step, the two arms' steps interleaved; {torch.get_num_threads()} "
        f"torch thread(s), torch {torch.__version__}). Machine: {machine_line()}. Measured {args.date}; 1/5/15-min "
        f"load average {args.loads[0]} at the start, {args.loads[1]} at the end (a shared machine). Times in "
        "seconds per step (wall); PTD overhead is (GRPO+PTD step) / (GRPO step) - 1 in the same batch regime.",
        "",
        "The teacher column is PTD's own extra forward (the reference model re-scoring the failed rollouts with the "
        "hint); the Top-K JSD adds to the update column. The two arms diverge after their first update, so their "
        "rollouts (and the rollout phase) differ; the no-fail row, where PTD does no extra work, shows that noise.",
        "",
        "| batch | arm | PTD rollouts | rollout | reward | ref | teacher | update | step | PTD overhead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, base, ptd, overhead in rows:
        for name, r, ov in (("GRPO", base, ""), ("GRPO+PTD", ptd, f"{100 * overhead:+.1f}%")):
            lines.append(
                f"| {label} | {name} | {r['ptd_rollout_frac']:.2f} | {r['time_rollout']:.2f} | {r['time_reward']:.2f} "
                f"| {r['time_ref']:.2f} | {r['time_teacher']:.2f} | {r['time_update']:.2f} | {r['time_step']:.2f} | {ov} |"
            )
    half = next(o for label, _, _, o in rows if label == "half fail")
    lines += ["", f"Target (PTD adds at most 35% when half the rollouts fail): "
                  f"**{'met' if half <= 0.35 else 'not met'}**, {100 * half:+.1f}%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
