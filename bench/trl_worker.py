"""The TRL side of bench/vs_trl.py: TRL's ``GRPOTrainer`` on the saved policy folder and prompt set that the
driver wrote, one optimizer step each time the driver asks for one.

Runs in ``.venv-trl`` (``bench/setup_trl.sh``), started by the driver, never by hand. From ptdpo it takes
only the processor class that the saved folder names (``Qwen3VLImageProcessor``: the stock Qwen3-VL
processor without its video part, which needs torchvision), so that ``AutoProcessor`` loads the folder
as ptdpo does; everything else is TRL's own code path with TRL's defaults, except the settings that the
comparison fixes on both sides (module docstring of bench/vs_trl.py).

Protocol (stdout lines starting with ``@``, JSON after the tag): ``@ready {...}`` once set up, then, per
``step`` line on stdin, ``@step {...}`` after that optimizer step. TRL's own training loop runs the
steps; a callback holds it at the start of each step until the driver's ``step`` line arrives, so the
timed span (driver's go to ``on_step_end``) is one whole optimizer step: generation, rewards, the
reference forward, the micro-batches' forward and backward, clipping, AdamW, the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.worker_protocol import ForwardCounter, emit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="TRL GRPOTrainer worker of bench/vs_trl.py")
    p.add_argument("--policy", required=True, help="saved policy folder")
    p.add_argument("--data", required=True, help="prompts.json written by the driver")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps the driver will ask for")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--kl", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fail-fraction", type=float, default=0.5)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import ptdpo.models.processor  # noqa: F401  (registers the folder's processor class with AutoProcessor)

    records = json.loads(Path(args.data).read_text())
    base = Path(args.data).parent
    dataset = Dataset.from_dict({
        "prompt": [r["messages"] for r in records],
        "image": [Image.open(base / r["image"]).convert("RGB") for r in records],
    })
    rollouts = args.prompts * args.group_size
    if rollouts % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch} does not divide the {rollouts} rollouts of a step")
    n_fail = round(args.fail_fraction * args.group_size)

    def half_fail(prompts, completions, **_):
        # completions arrive group by group (G consecutive rollouts per prompt), as ptdpo's reward sees them
        return [float(i % args.group_size >= n_fail) for i in range(len(completions))]

    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    config = GRPOConfig(
        output_dir=out_dir,
        # the batch: G rollouts of `prompts` prompts per optimizer step, in micro-batches of `micro_batch`
        num_generations=args.group_size,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=rollouts // args.micro_batch,
        num_iterations=1,
        max_steps=args.steps,
        # sampling: softmax(logits / 1) over the whole vocabulary, stop at eos or the token limit
        max_completion_length=args.response_length,
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        chat_template_kwargs={"enable_thinking": False},
        # the loss and the optimizer as ptdpo's `grpo` defaults have them
        beta=args.kl, epsilon=0.2, epsilon_high=0.3, loss_type="dapo", scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        # float32 compute and no activation recomputation on both sides (TRL's defaults: bf16, checkpointing)
        bf16=False, fp16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32},
        # nothing beyond the step: no logging, evaluation, checkpoints or completion tables
        logging_steps=10**9, report_to="none", save_strategy="no", eval_strategy="no", log_completions=False,
        disable_tqdm=True, dataloader_num_workers=0, seed=0, use_cpu=True,
    )
    processor = AutoProcessor.from_pretrained(args.policy)
    trainer = GRPOTrainer(model=args.policy, reward_funcs=half_fail, args=config, train_dataset=dataset,
                          processing_class=processor)
    if trainer.ref_model is None:
        raise SystemExit("TRL built no reference model: the KL term would not run a reference forward")
    counters = {"policy": ForwardCounter(trainer.model), "reference": ForwardCounter(trainer.ref_model)}
    tokens: dict[str, int] = {}
    generate_and_score = trainer._generate_and_score_completions

    def counted(inputs):
        out = generate_and_score(inputs)
        tokens["completion"] = tokens.get("completion", 0) + int(out["completion_mask"].sum())
        tokens["prompt"] = tokens.get("prompt", 0) + int(out["prompt_mask"].sum())
        tokens["rollouts"] = tokens.get("rollouts", 0) + int(out["completion_mask"].shape[0])
        return out

    trainer._generate_and_score_completions = counted

    class Pace(TrainerCallback):
        """Holds each optimizer step until the driver's go, and reports the step when it ends."""

        def on_step_begin(self, args_, state, control, **kwargs):
            line = sys.stdin.readline().strip()
            if line != "step":
                os._exit(0)  # the driver is done (or gone)
            self.start = time.perf_counter()
            self.cpu = time.process_time()

        def on_step_end(self, args_, state, control, **kwargs):
            seconds = time.perf_counter() - self.start
            emit("step", {"seconds": seconds, "cpu_seconds": time.process_time() - self.cpu, "completion_tokens": tokens.pop("completion", 0),
                          "prompt_tokens": tokens.pop("prompt", 0), "rollouts": tokens.pop("rollouts", 0),
                          "forwards": {k: c.take() for k, c in counters.items()}})

    trainer.add_callback(Pace())
    emit("ready", {
        "side": "trl", "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "settings": {"per_device_train_batch_size": config.per_device_train_batch_size,
                     "gradient_accumulation_steps": config.gradient_accumulation_steps,
                     "steps_per_generation": config.steps_per_generation,
                     "generation_batch_size": config.generation_batch_size,
                     "num_generations": config.num_generations, "beta": config.beta,
                     "max_completion_length": config.max_completion_length,
                     "gradient_checkpointing": config.gradient_checkpointing, "bf16": config.bf16,
                     "eos_token_ids": list(trainer.eos_token_ids)},
    })
    trainer.train()
    os._exit(0)


if __name__ == "__main__":
    main()
