"""Build the warm-started base model of the default run (configs/tiny.json) and check it.

    python scripts/build_base.py                 # writes models/grid-base-0.5m (about 20 s on one core)
    python scripts/build_base.py --check         # rebuilds it in a temporary folder and compares

The default run must show learning, so it cannot start from a random model (nothing to improve on the
answer with 8 rollouts per prompt and a few minutes of CPU). This script warm-starts the tiny 0.5M
Qwen3-VL (head size 32, a size vLLM serves) on ``grid_color`` items (``ptdpo.data.synthetic.grid``: "What
colour is the square with the white dot?", 25 possible colours; 64-px scenes) in the default run's prompt
format (``boxed``), with a supervised budget that stops it part of the way: it has learned the format and
that the answer is the colour of one of the squares, and has begun to find the white dot. Measured here,
held-out greedy accuracy after 200 / 300 / 400 / 600 SFT steps: 0.17 / 0.42 / 0.74 / 0.97; 300 steps put
the base on the steep part of that curve, where its sampled answers are right often enough for RL's
groups to carry signal, and RL then has something to learn that the held-out accuracy shows.

The weights are committed (``models/grid-base-0.5m``, about 2 MB) with ``build_manifest.json``: the
recipe, the fingerprint of the weights and the held-out accuracy measured here. The build is deterministic
on one thread (fixed seeds, fixed data); ``--check`` rebuilds and compares the weights with the committed
ones (tests/test_main_job.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "models" / "grid-base-0.5m"
MANIFEST = "build_manifest.json"
# the recipe: data and warm start (ptdpo.study.base_model.DataSpec / WarmStartSpec fields)
# 64-px scenes: at 96 px (more image tokens) the 0.5M model stayed on a constant answer for 1200 SFT steps
DATA = {"families": ["grid_color"], "difficulty": [1, 1], "image_size": 64, "seed": 7}
WARM = {"size": "0.5m", "model_seed": 0, "n_items": 2048, "hint_frac": 0.0, "answer_frac": 0.0, "steps": 300,
        "lr": 0.003, "batch_size": 16, "reasoning": "look", "dots": "keep", "template": "boxed",
        "eval_items": 128, "eval_max_new_tokens": 16}
# the weights of two builds on this machine agree to the bit; elsewhere float rounding may differ a little
CHECK_ATOL = 1e-4


def build(out_dir: Path) -> dict:
    """Warm-start the base, save it with ``save_policy`` to ``out_dir`` and return its manifest."""
    import torch

    from ptdpo.models import save_policy
    from ptdpo.study.base_model import DataSpec, WarmStartSpec, build_base_model, greedy_responses

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec, data = WarmStartSpec(**WARM), DataSpec(**DATA)
    t0 = time.perf_counter()
    model, processor, report = build_base_model(spec, data, measure=False)
    build_s = time.perf_counter() - t0
    held = data.generate(spec.eval_items, split="val")
    _, correct = greedy_responses(model, processor, held, None, spec.eval_max_new_tokens, template=spec.template)
    path = save_policy(model, processor, out_dir, metadata={"built_by": "scripts/build_base.py", "recipe": WARM,
                                                            "data": DATA})
    meta = json.loads((Path(path) / "ptdpo_policy.json").read_text())
    manifest = {
        "recipe": {"warm_start": asdict(spec), "data": asdict(data)},
        "fingerprint": meta.get("fingerprint"),
        "sft_loss_first": report["sft_loss_first"], "sft_loss_last": report["sft_loss_last"],
        "heldout_greedy_accuracy": sum(correct) / len(correct), "heldout_items": len(correct),
        "build_seconds_here": round(build_s, 1), "torch_threads": 1,
    }
    (Path(path) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def compare(a: Path, b: Path, atol: float = CHECK_ATOL) -> dict:
    """The largest absolute difference between the weights of two saved policies (same tensor names)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if set(wa) != set(wb):
        raise SystemExit(f"the two models have different tensors: {sorted(set(wa) ^ set(wb))[:5]}")
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return {"max_abs_diff": worst, "atol": atol, "same": worst <= atol}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the model folder")
    p.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with --out")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.check:
        committed = json.loads((args.out / MANIFEST).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build(Path(tmp) / "base")
            result = compare(args.out, Path(tmp) / "base")
        result.update(fingerprint_committed=committed["fingerprint"], fingerprint_rebuilt=manifest["fingerprint"],
                      accuracy_committed=committed["heldout_greedy_accuracy"],
                      accuracy_rebuilt=manifest["heldout_greedy_accuracy"])
        print(json.dumps(result, indent=1))
        return 0 if result["same"] else 1
    manifest = build(args.out)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
