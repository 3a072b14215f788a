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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import load_average, machine_line, write_section  # noqa: E402

SECTION = "## Train step: ptdpo vs TRL GRPOTrainer"
ARMS = ("trl", "ptdpo", "ptdpo_ptd")
LABELS = {"trl": "TRL GRPOTrainer (GRPO)", "ptdpo": "ptdpo GRPO", "ptdpo_ptd": "ptdpo GRPO+PTD (half fail)"}


def prepare(workdir: Path, args) -> tuple[Path, Path]:
    """The saved policy folder and the prompt set (chats + PNG images) both sides read."""
    from ptdpo.data.schema import item_images
    from ptdpo.data.synthetic import generate_synthetic
    from ptdpo.models import load_policy, save_policy
    from ptdpo.prompts import build_messages

    model, processor = load_policy(f"tiny:{args.size}", dtype="float32")
    policy = save_policy(model, processor, workdir / "policy", metadata={"purpose": "bench/vs_trl.py"})
    items = generate_synthetic(args.prompts, seed=0, families=["count_attr"], image_size=args.image_size)
    records = []
    for i, it in enumerate(items):
        (image,) = item_images(it)
        image.save(workdir / f"image_{i}.png")
        records.append({"id": it.id, "messages": build_messages(it, template="boxed"), "image": f"image_{i}.png"})
    data = workdir / "prompts.json"
    data.write_text(json.dumps(records, indent=1))
    return policy, data


class Worker:
    """One arm's process: started, then stepped on demand (module docstring)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self.info = self._read("ready")
        self.steps: list[dict] = []

    def _read(self, tag: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(f"@{tag} "):
                return json.loads(line[len(tag) + 2 :])
        err = self.proc.stderr.read()
        raise RuntimeError(f"worker {self.name} ended before '@{tag}' (exit {self.proc.wait()}):\n{err[-4000:]}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        out = self._read("step")
        self.steps.append(out)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
                                            "--steps", str(steps)], env)
        workers["ptdpo"] = Worker("ptdpo", ptdpo, env)
        workers["ptdpo_ptd"] = Worker("ptdpo_ptd", [*ptdpo, "--ptd"], env)
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


def spread(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


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


def render(summary: dict, workers: dict[str, Worker], args, loads: tuple[str, str], date: str) -> str:
    names = list(summary["time"])
    cmd = "python bench/vs_trl.py" + ("" if args.pairs == 7 else f" --pairs {args.pairs}") + (
        " --quick" if args.quick else "") + (" --no-trl" if args.no_trl else "")
    versions = "; ".join(
        f"{n}: " + ", ".join(f"{k} {workers[n].info[k]}" for k in ("trl", "transformers", "torch") if k in workers[n].info)
        for n in names if n != "ptdpo_ptd")
    lines = [
        SECTION, "",
        f"Command: `bash bench/setup_trl.sh && {cmd}` (model `tiny:{args.size}` saved once with `save_policy` and "
        f"loaded by both, {args.prompts} prompts x G={args.group_size} rollouts per optimizer step in micro-batches of "
        f"{args.micro_batch}, at most {args.response_length} new tokens stopping at eos, temperature 1, KL 0.01 with a "
        f"reference forward, one update per batch, float32, {args.threads} torch thread(s) per process).",
        "",
        f"Machine: {machine_line()}. Measured {date}; 1/5/15-min load average {loads[0]} at the start, {loads[1]} "
        f"at the end. Versions: {versions}.",
        "",
        "Method: three long-lived processes (TRL's `GRPOTrainer` in `.venv-trl`, ptdpo's `Trainer` for GRPO and for "
        "GRPO+PTD in `.venv`) run one optimizer step at a time, in turn, the order rotating each round; a process "
        "that is not stepping waits on its stdin. Startup and one warm-up step per process are not timed; a step is "
        "timed inside its process (TRL: from the go to `on_step_end`, i.e. generation, rewards, reference forward, "
        "forward and backward of every micro-batch, clipping, AdamW; ptdpo: `Trainer.train_step()`). Ratios are "
        f"per round (same load), {len(workers[names[0]].steps) - 1} rounds; min / median / max shown.",
        "",
        "| arm | step s (min / median / max) | vs TRL (min / median / max) | rollouts | prompt tokens | "
        "completion tokens | policy forwards (calls / rows) | reference forwards (calls / rows) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        t, w = summary["time"][n], summary["work"][n]
        ratio = summary.get("ratio", {}).get(n)
        rtxt = "1" if n == "trl" else ("not run" if ratio is None else "{:.2f} / **{:.2f}** / {:.2f}".format(*ratio))
        lines.append(
            f"| {LABELS[n]} | {t[0]:.2f} / **{t[1]:.2f}** / {t[2]:.2f} | {rtxt} | {w['rollouts']:.0f} | "
            f"{w['prompt_tokens']:.0f} | {w['completion_tokens']:.0f} | {w['policy']['calls']} / {w['policy']['rows']} | "
            f"{w['reference']['calls']} / {w['reference']['rows']} |")
    if summary["phases"]:
        lines += ["", "ptdpo's phases (median seconds): " + "; ".join(
            f"{LABELS[n]}: " + ", ".join(f"{k.removeprefix('time_')} {v:.2f}" for k, v in ph.items())
            for n, ph in summary["phases"].items())]
    lines += ["", "Forward counts include generation (one call per decoding step over all rollouts); the GRPO+PTD "
              "reference count includes the teacher, which is the reference model re-scoring the failed rollouts "
              "with the hint.", ""]
    lines += target_lines(summary)
    return "\n".join(lines) + "\n"


def target_lines(summary: dict) -> list[str]:
    ratio = summary.get("ratio")
    if not ratio:
        return ["Targets: not evaluated (TRL not run)."]
    grpo, ptd = ratio["ptdpo"][1], ratio["ptdpo_ptd"][1]
    return [
        f"- Target ptdpo GRPO step <= 0.9x TRL's: **{'met' if grpo <= 0.9 else 'not met'}**, median ratio {grpo:.2f} "
        f"(min {ratio['ptdpo'][0]:.2f}, max {ratio['ptdpo'][2]:.2f}).",
        f"- Target GRPO+PTD at half failed rollouts <= 1.1x TRL's GRPO step: **{'met' if ptd <= 1.1 else 'not met'}**, "
        f"median ratio {ptd:.2f} (min {ratio['ptdpo_ptd'][0]:.2f}, max {ratio['ptdpo_ptd'][2]:.2f}).",
    ]


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
    if args.quick:
        args.size, args.prompts, args.group_size, args.micro_batch, args.response_length, args.pairs = "1m", 2, 4, 4, 8, 1
    loads = [load_average()]
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="ptdpo-vs-trl-") as tmp:
        policy, data = prepare(Path(tmp), args)
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
