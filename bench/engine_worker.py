"""A generation engine for bench/rollout_throughput.py: the transformers engine (in ``.venv``) or the vLLM
engine (in ``.venv-vllm``) on the saved policy folder, sampling the driver's prompt set each time the
driver asks (protocol: bench/worker_protocol.py; ``@ready``, then ``@step`` per ``step`` line).

Each step samples G completions of every prompt (``engine.sample``, one call, seeds per group as in
training), timed whole: the engine's own batching, its image processing for the vLLM engine (it takes
the chat text and the images), the decoding. The prompts are encoded by the engine once, before the
first step, as the rollout collector does once per step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.worker_protocol import emit  # noqa: E402

# The vLLM engine's settings on a CPU (tests/vllm_engine/conftest.py): in-process, no thread pinning on a
# machine shared with other jobs, float32, eager, a 1 GiB KV cache (the engine adds whole-prompt prefill on
# CPUs: ptdpo.engines.vllm_args.engine_kwargs).
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "VLLM_LOGGING_LEVEL": "WARNING"}
VLLM_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "kv_cache_gib": 1}


def main() -> None:
    p = argparse.ArgumentParser(description="engine worker of bench/rollout_throughput.py")
    p.add_argument("--engine", choices=("transformers", "vllm"), required=True)
    p.add_argument("--policy", required=True, help="saved policy folder")
    p.add_argument("--data", required=True, help="prompts.json written by the driver")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    for k, v in VLLM_ENV.items():
        os.environ.setdefault(k, v)

    import torch
    import transformers
    from PIL import Image

    torch.set_num_threads(args.threads)
    from ptdpo.engines import SamplingConfig
    from ptdpo.models import load_policy

    records = json.loads(Path(args.data).read_text())
    images = [[Image.open(Path(args.data).parent / r["image"]).convert("RGB")] for r in records]
    model, processor = load_policy(args.policy, dtype="float32")
    info: dict = {"engine": args.engine, "transformers": transformers.__version__, "torch": torch.__version__}
    if args.engine == "transformers":
        from ptdpo.engines import TransformersEngine

        engine = TransformersEngine(model, processor)
    else:
        import vllm

        from ptdpo.engines import VLLMEngine

        engine = VLLMEngine(args.policy, VLLM_OPTIONS, processor=processor)
        info.update(vllm=vllm.__version__, options=VLLM_OPTIONS,
                    chunked_prefill=engine.engine_kwargs.get("enable_chunked_prefill", "vLLM's default"))
        del model
    prompts = engine.encode([r["messages"] for r in records], images)
    sampling = SamplingConfig(args.response_length, temperature=1.0, top_p=1.0)
    info["threads"] = torch.get_num_threads()
    emit("ready", info)
    for i, line in enumerate(sys.stdin):
        if line.strip() != "step":
            break
        seeds = [1000 * i + k for k in range(len(prompts))]
        start, cpu = time.perf_counter(), time.process_time()
        groups = engine.sample(prompts, args.group_size, sampling, seeds)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        emit("step", {"seconds": seconds, "cpu_seconds": cpu, "rollouts": sum(len(g) for g in groups),
                      "completion_tokens": sum(s.completion.numel() for g in groups for s in g),
                      "truncated": sum(s.truncated for g in groups for s in g)})
    engine.close()
    os._exit(0)  # vLLM's in-process engine can keep threads alive at exit


if __name__ == "__main__":
    main()
