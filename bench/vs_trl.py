"""Step time of ptdpo against TRL's ``GRPOTrainer``, side by side on the same saved model and prompts.

Three long-lived worker processes, each in its own environment, take turns: TRL's GRPO
(bench/trl_worker.py in ``.venv-trl``, built by ``bench/setup_trl.sh``), ptdpo's GRPO and ptdpo's
GRPO+PTD at half failed rollouts (bench/ptdpo_worker.py in this interpreter's environment). Only one
worker runs at a time (the others wait on their stdin), so each repetition ("pair": one step of every
arm, in a rotating order) meets the same load; startup and a warm-up step per worker are not timed.

The work is the same on both sides, and the workers report what they did so that the table can show
it: one saved ``tiny:<size>`` Qwen3-VL folder (``save_policy``) loaded in float32 by both; the same
prompts and images (ptdpo's synthetic ``count_attr`` items, chats from ``build_messages``, the images
as PNG files); G rollouts of P prompts per optimizer step in micro-batches of M; at most T new tokens,
stopping at the tokenizer's eos; temperature 1, no top-p/top-k; a KL term (coefficient 0.01) with a
forward of a frozen reference model in both; one update per batch (TRL ``num_iterations=1`` reuses the
detached log-probs, ptdpo does the same); no activation checkpointing, no bf16, no logging; AdamW with
the same learning rate, weight decay and clipping; one torch thread each. The reward fails the first
half of every group on all arms, so advantages are non-zero and GRPO+PTD distills half the rollouts.

    bash bench/setup_trl.sh                         # once: .venv-trl with trl==1.16.0
    python bench/vs_trl.py --pairs 7                # writes its section of docs/benchmarks.md
    python bench/vs_trl.py --quick --no-trl --markdown /tmp/x.md   # smoke run without TRL (the test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.inputs import save_inputs  # noqa: E402
from bench.report import load_average, machine_line, write_section  # noqa: E402
from bench.worker_protocol import Worker, spread  # noqa: E402

SECTION = "## Train step: ptdpo vs TRL GRPOTrainer"
ARMS = ("trl", "ptdpo", "ptdpo_ptd")
LABELS = {"trl": "TRL GRPOTrainer (GRPO)", "ptdpo": "ptdpo GRPO", "ptdpo_ptd": "ptdpo GRPO+PTD (half fail)"}


def start_workers(args, policy: Path, data: Path) -> dict[str, Worker]:
    common = ["--policy", str(policy), "--data", str(data), "--group-size", str(args.group_size),
              "--prompts", str(args.prompts), "--micro-batch", str(args.micro_batch),
              "--response-length", str(args.response_length), "--kl", str(args.kl), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    ptdpo = [sys.executable, str(ROOT / "bench" / "ptdpo_worker.py"), *common, "--items", str(args.prompts),
             "--image-size", str(args.image_size)]
    workers: dict[str, Worker] = {}
    try:
        if not args.no_trl:
            trl_python = Path(args.trl_python)
            if not trl_python.exists():
                raise SystemExit(f"{trl_python} is missing: run `bash bench/setup_trl.sh` (or pass --no-trl)")
            steps = 1 + args.pairs  # TRL's loop runs max_steps; the warm-up step is the first
            workers["trl"] = Worker("trl", [str(trl_python), str(ROOT / "bench" / "trl_worker.py"), *common,
                                            "--steps", str(steps)], env, ROOT)
        workers["ptdpo"] = Worker("ptdpo", ptdpo, env, ROOT)
        workers["ptdpo_ptd"] = Worker("ptdpo_ptd", [*ptdpo, "--ptd"], env, ROOT)
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


def run(workers: dict[str, Worker], pairs: int) -> list[dict[str, dict]]:
    """A warm-up step per worker, then ``pairs`` rounds of one step each, the order rotating per round."""
    names = [a for a in ARMS if a in workers]
    for name in names:
        workers[name].step()
    rounds = []
    for i in range(pairs):
        order = names[i % len(names) :] + names[: i % len(names)]
        rounds.append({name: workers[name].step() for name in order})
        print(f"pair {i + 1}/{pairs}: " + ", ".join(
            f"{n} {rounds[-1][n]['seconds']:.2f}s (cpu {rounds[-1][n]['cpu_seconds']:.2f}s)" for n in names), flush=True)
    return rounds


def summarize(rounds: list[dict[str, dict]]) -> dict:
    names = list(rounds[0])
    out: dict = {"time": {n: spread([r[n]["seconds"] for r in rounds]) for n in names},
                 "cpu": {n: spread([r[n]["cpu_seconds"] for r in rounds]) for n in names}}
    if "trl" in names:
        out["ratio"] = {n: spread([r[n]["seconds"] / r["trl"]["seconds"] for r in rounds]) for n in names if n != "trl"}
        out["cpu_ratio"] = {n: spread([r[n]["cpu_seconds"] / r["trl"]["cpu_seconds"] for r in rounds])
                            for n in names if n != "trl"}
    out["work"] = {n: {
        "rollouts": statistics.median(r[n]["rollouts"] for r in rounds),
        "prompt_tokens": statistics.median(r[n]["prompt_tokens"] for r in rounds),
        "completion_tokens": statistics.median(r[n]["completion_tokens"] for r in rounds),
        "policy": rounds[-1][n]["forwards"]["policy"], "reference": rounds[-1][n]["forwards"]["reference"],
    } for n in names}
    out["phases"] = {n: {k: statistics.median(r[n]["phases"][k] for r in rounds) for k in rounds[0][n]["phases"]}
                     for n in names if "phases" in rounds[0][n]}
    return out


def _fmt(x: tuple[float, float, float] | None) -> str:
    return "not run" if x is None else "{:.2f} / **{:.2f}** / {:.2f}".format(*x)


def _forwards(f: dict) -> str:
    return f"{f['calls']} / {f['rows']} / {f['tokens']}"


def render(summary: dict, workers: dict[str, Worker], args, loads: tuple[str, str], date: str) -> str:
    names = list(summary["time"])
    rounds = len(workers[names[0]].steps) - 1
    versions = "; ".join(
        f"{side} side: " + ", ".join(f"{k} {workers[n].info[k]}" for k in ("trl", "transformers", "torch")
                                     if k in workers[n].info) + f", {workers[n].info['threads']} torch thread"
        for n, side in (("trl", "TRL"), ("ptdpo", "ptdpo")) if n in workers)
    lines = [
        SECTION, "",
        f"Command: `{args.command}` (`bash bench/setup_trl.sh` first builds `.venv-trl`). Model `tiny:{args.size}` "
        f"saved once with `save_policy` and loaded by both sides in float32; {args.prompts} prompts x G={args.group_size} "
        f"rollouts per optimizer step, micro-batches of {args.micro_batch}; at most {args.response_length} new tokens, "
        f"stopping at eos; temperature 1; KL coefficient {args.kl} with a reference-model forward; one update per "
        f"batch; {args.threads} torch thread per process.",
        "",
        f"Machine: {machine_line()}. Measured {date}; 1/5/15-min load average {loads[0]} at the start, {loads[1]} "
        f"at the end (a shared machine: other jobs ran). Versions: {versions}.",
        "",
        "Method: three long-lived processes (TRL's `GRPOTrainer` in `.venv-trl`; ptdpo's `Trainer` for GRPO and for "
        "GRPO+PTD in `.venv`) run one optimizer step at a time, in turn, the order rotating each round; a process "
        "that is not stepping waits on its stdin. Startup and one warm-up step per process are not timed. A step is "
        "timed inside its process: TRL from the go to `on_step_end` (generation, rewards, reference forward, forward "
        "and backward of every micro-batch, clipping, AdamW, scheduler), ptdpo `Trainer.train_step()` (the same, plus "
        "the teacher for GRPO+PTD, and its metrics). Wall time is what the targets use; CPU time (the process's user + "
        "system time) is shown beside it because it moves much less when other jobs compete for the cores. Ratios "
        f"are per round (the same load for the three steps): {rounds} rounds, min / median / max.",
        "",
        "| arm | step wall s | wall vs TRL | step CPU s | CPU vs TRL |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        ratio = "1" if n == "trl" else _fmt(summary.get("ratio", {}).get(n))
        cpu_ratio = "1" if n == "trl" else _fmt(summary.get("cpu_ratio", {}).get(n))
        lines.append(f"| {LABELS[n]} | {_fmt(summary['time'][n])} | {ratio} | {_fmt(summary['cpu'][n])} | {cpu_ratio} |")
    lines += [
        "",
        "The work of one step (median over the rounds; forwards of the last round: calls / rows / token positions "
        "run, padding included):",
        "",
        "| arm | rollouts | prompt tokens | completion tokens | policy forwards | reference forwards |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        w = summary["work"][n]
        lines.append(f"| {LABELS[n]} | {w['rollouts']:.0f} | {w['prompt_tokens']:.0f} | {w['completion_tokens']:.0f} | "
                     f"{_forwards(w['policy'])} | {_forwards(w['reference'])} |")
    lines += [
        "",
        "Both sides sample the same number of rollouts from the same prompts (same token count: the same chat "
        "template and image processing) with the same limit and stopping; completion lengths differ only by where "
        "each side's random draws hit eos. Policy forwards: one per decoding step, plus the forward (and backward) "
        "of each micro-batch; reference forwards: the KL term's log-probs of every rollout (and, for GRPO+PTD, the "
        "teacher: the reference model re-scoring the failed half with the hint). ptdpo runs the same forwards with "
        "each distinct prompt computed once for the rollouts that share it (`ptdpo.models.shared_prompt`): sampling "
        "prefills each prompt once and copies its KV cache to its G rows, and the no-gradient scoring forwards run "
        "the prompts, then the completions on the copied cache, hence more calls over fewer token positions; the "
        "results equal full-sequence forwards up to float rounding. TRL with `num_iterations=1` reuses the "
        "detached log-probs as the old policy's, and so does ptdpo (no old-policy forward on either side). Small "
        "differences remain: TRL suppresses only the image-pad token while sampling (ptdpo every vision special "
        "token), and TRL runs its image processor on every rollout's copy of a prompt (for generation and again for "
        "the forwards), ptdpo once per prompt.",
    ]
    if summary["phases"]:
        lines += ["", "ptdpo's phases (median wall seconds): " + "; ".join(
            f"{LABELS[n]}: " + ", ".join(f"{k.removeprefix('time_')} {v:.2f}" for k, v in ph.items())
            for n, ph in summary["phases"].items()) + "."]
    lines += [""] + target_lines(summary)
    return "\n".join(lines) + "\n"


def target_lines(summary: dict) -> list[str]:
    ratio, cpu = summary.get("ratio"), summary.get("cpu_ratio")
    if not ratio:
        return ["Targets: not evaluated (TRL was not run)."]
    out = []
    for arm, bound, what in (("ptdpo", 0.9, "ptdpo's GRPO step <= 0.9x TRL's `GRPOTrainer` step"),
                             ("ptdpo_ptd", 1.1, "GRPO+PTD at half failed rollouts <= 1.1x TRL's GRPO step")):
        lo, med, hi = ratio[arm]
        out.append(f"- Target {what}: **{'met' if med <= bound else 'not met'}**, median wall ratio {med:.2f} "
                   f"(min {lo:.2f}, max {hi:.2f}; CPU-time ratio median {cpu[arm][1]:.2f}).")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=7, help="timed rounds (one step of every arm each)")
    p.add_argument("--size", default="10m")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--kl", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    p.add_argument("--no-trl", action="store_true", help="ptdpo's arms only (no TRL environment needed)")
    p.add_argument("--quick", action="store_true", help="tiny:1m, 2 prompts x 4 rollouts, 8 tokens, 1 round")
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="file to write the section into")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.command = "python " + " ".join(["bench/vs_trl.py", *sys.argv[1:]])
    if args.quick:
        args.size, args.prompts, args.group_size, args.micro_batch, args.response_length, args.pairs = "1m", 2, 4, 4, 8, 1
    loads = [load_average()]
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="ptdpo-vs-trl-") as tmp:
        policy, data = save_inputs(Path(tmp), args.size, args.prompts, args.image_size, "bench/vs_trl.py")
        workers = start_workers(args, policy, data)
        try:
            rounds = run(workers, args.pairs)
        finally:
            for w in workers.values():
                w.close()
    loads.append(load_average())
    summary = summarize(rounds)
    table = render(summary, workers, args, tuple(loads), date)
    print(table)
    if not args.no_write:
        write_section(Path(args.markdown), SECTION, table)


if __name__ == "__main__":
    main()
