"""One rank of the tensor-parallel check (run by test_distributed.py under torchrun): a colocated vLLM
engine with tensor_parallel_size 2 over 2 ranks (external_launcher), each rank with its own prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ptdpo.data.schema import item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.engines import TransformersEngine, VLLMEngine
from ptdpo.models import load_policy
from ptdpo.prompts import build_messages


def main(policy_dir: str, options: dict, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, processor = load_policy(policy_dir)
    engine = VLLMEngine(policy_dir, options, colocated=True, processor=processor)
    items = generate_synthetic(2 + rank, seed=10 * rank + 1, image_size=64)  # different prompts and counts
    msgs, imgs = [build_messages(it) for it in items], [item_images(it) for it in items]
    hf = TransformersEngine(model, processor)

    def both():
        got = engine.greedy(engine.encode(msgs, imgs), 12)
        want = hf.greedy(hf.encode(msgs, imgs), 12)
        return [g.completion.tolist() for g in got], [w.completion.tolist() for w in want]

    before = both()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (sum(p.pow(2).sum() for p in model.parameters()) * 1e-3).backward()
    opt.step()
    engine.sync_weights(model)
    after = both()
    result = {"rank": rank, "kwargs": {k: v for k, v in engine.engine_kwargs.items() if isinstance(v, str | int)},
              "tp_group": sorted(dist.get_process_group_ranks(engine.tp_group)), "before": before, "after": after}
    engine.close()
    result["group_alive"] = dist.is_initialized()
    dist.barrier()  # the trainer's process group still works after the engine is closed
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]))
