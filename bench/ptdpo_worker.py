"""The ptdpo side of bench/vs_trl.py: ptdpo's ``Trainer`` on the saved policy folder and prompt set that the
driver wrote, one optimizer step each time the driver asks for one (GRPO, or GRPO+PTD with ``--ptd``).

Started by the driver (same protocol as bench/trl_worker.py): ``@ready {...}`` once set up, then, per
``step`` line on stdin, ``@step {...}`` after one ``Trainer.train_step()``, timed whole: rollouts (the
transformers engine), rewards, the reference forward, the teacher (PTD), the update and the metrics.

Every rollout is rewarded by its place in its group (the first ``fail_fraction * G`` fail), as in
bench/train_step.py and in the TRL worker, so both sides do the same work whatever the model writes and
GRPO+PTD distills exactly the failed half of every group.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.worker_protocol import ForwardCounter, emit  # noqa: E402


def fixed_fail_reward(fail_fraction: float, group_size: int):
    """Rollout j of each group is correct iff j >= round(fail_fraction * G) (rollouts come group by group)."""
    n_fail = round(fail_fraction * group_size)
    counter = {"i": 0}

    def reward(texts, items):
        out = []
        for _ in texts:
            out.append((float(counter["i"] % group_size >= n_fail), 1.0))
            counter["i"] += 1
        return out

    return reward


def check_same_prompts(items, data: Path, template: str) -> None:
    """The items' chats and pixels are the ones the driver wrote for TRL."""
    import numpy as np
    from PIL import Image

    from ptdpo.data.schema import item_images
    from ptdpo.prompts import build_messages

    records = json.loads(data.read_text())
    if [r["id"] for r in records] != [it.id for it in items]:
        raise SystemExit("the prompt set differs from the driver's (item ids)")
    for r, it in zip(records, items):
        if build_messages(it, template=template) != r["messages"]:
            raise SystemExit(f"item {it.id}: the chat differs from the driver's")
        saved = np.asarray(Image.open(data.parent / r["image"]).convert("RGB"))
        if not np.array_equal(saved, np.asarray(item_images(it)[0].convert("RGB"))):
            raise SystemExit(f"item {it.id}: the image differs from the driver's")


def main() -> None:
    p = argparse.ArgumentParser(description="ptdpo Trainer worker of bench/vs_trl.py")
    p.add_argument("--policy", required=True, help="saved policy folder")
    p.add_argument("--data", required=True, help="prompts.json written by the driver")
    p.add_argument("--items", type=int, default=4, help="synthetic items (the driver's prompt set)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ptd", action="store_true", help="GRPO+PTD instead of GRPO")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--kl", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fail-fraction", type=float, default=0.5)
    args = p.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from ptdpo.config import PTDConfig, TrainConfig
    from ptdpo.data.synthetic import generate_synthetic
    from ptdpo.hints import OracleGenerator, run_generation
    from ptdpo.models import load_policy
    from ptdpo.trainer import Trainer

    items = generate_synthetic(args.items, seed=0, families=["count_attr"], image_size=args.image_size)
    cfg = TrainConfig(
        policy=args.policy, group_size=args.group_size, prompts_per_step=args.prompts,
        micro_batch_rollouts=args.micro_batch, max_response_length=args.response_length, lr=args.lr,
        kl_coef=args.kl, seed=0, ptd=PTDConfig(enabled=args.ptd, lambda_ptd=0.05, k=args.k),
    ).resolved()
    check_same_prompts(items, Path(args.data), cfg.prompt_template)
    hints = {r.item_id: r.hint for r in run_generation(OracleGenerator(), items) if r.ok and r.hint is not None}
    model, processor = load_policy(args.policy, dtype="float32")
    trainer = Trainer(cfg, model, processor, items, hints=hints,
                      reward_fn=fixed_fail_reward(args.fail_fraction, args.group_size))
    counters = {"policy": ForwardCounter(trainer.policy), "reference": ForwardCounter(trainer.reference)}
    emit("ready", {
        "side": "ptdpo", "arm": "GRPO+PTD" if args.ptd else "GRPO", "transformers": transformers.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "settings": {"micro_batch_rollouts": cfg.micro_batch_rollouts, "group_size": cfg.group_size,
                     "prompts_per_step": cfg.prompts_per_step, "kl_coef": cfg.kl_coef,
                     "max_response_length": cfg.max_response_length, "precision": cfg.precision,
                     "gradient_checkpointing": cfg.gradient_checkpointing, "engine": trainer.engine.name},
    })
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start, cpu = time.perf_counter(), time.process_time()
        result = trainer.train_step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rollouts = result.rollouts
        emit("step", {
            "seconds": seconds, "cpu_seconds": cpu, "rollouts": len(rollouts),
            "completion_tokens": sum(r.completion.numel() for r in rollouts),
            "prompt_tokens": sum(r.prompt.input_ids.numel() for r in rollouts),
            "ptd_rollout_frac": result.metrics.get("ptd_rollout_frac", 0.0),
            "phases": {k: result.metrics[k] for k in ("time_rollout", "time_reward", "time_ref", "time_teacher",
                                                      "time_update")},
            "forwards": {k: c.take() for k, c in counters.items()},
        })


if __name__ == "__main__":
    main()
