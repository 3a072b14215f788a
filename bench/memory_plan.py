"""Per-GPU memory plan of the 2B / 4B / 8B recipes on 8 x 80 GB, from CPU measurements on tiny models.

What is measured (CPU, tracked tensor bytes, bf16 compute as under the FSDP2 bf16 policy), on the tiny
Qwen3-VL sizes, for a text sequence of T tokens through the decoder:

- activation bytes per token of a training forward + backward, with and without gradient checkpointing;
- the teacher: bytes per token of its kept hidden states, and the transient peak of its no-grad forward.

Per-token figures are separated from any T^2 part (attention matrices; none with the fused kernels on
GPUs) by measuring at T and 2T, then fitted as L (a H + b I) bytes per token (L layers, hidden H, MLP
width I; with checkpointing (c L + e) H kept, plus one layer recomputed during the backward) and
extrapolated to the real sizes. Weights, gradients and Adam are counted exactly from the parameter
counts (models built on the meta device).

    python bench/memory_plan.py                     # prints the measurements, the fit and the plan
    python bench/memory_plan.py --json plan.json    # also writes them
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
# Decoder dimensions of the recipes' models (their Qwen3 text backbones) and vision towers.
REAL = {
    "2B": dict(hidden=2048, layers=28, inter=6144, heads=16, tied=True, vdepth=24, vhidden=1024, vinter=4096,
               deepstack=[5, 11, 17], config="configs/qwen3vl-2b.json"),
    "4B": dict(hidden=2560, layers=36, inter=9728, heads=32, tied=True, vdepth=24, vhidden=1024, vinter=4096,
               deepstack=[5, 11, 17], config="configs/qwen3vl-4b.json"),
    "8B": dict(hidden=4096, layers=36, inter=12288, heads=32, tied=False, vdepth=27, vhidden=1152, vinter=4304,
               deepstack=[8, 16, 24], config="configs/qwen3vl-8b.json"),
}
VOCAB = 151936
GPUS, GPU_GB = 8, 80


def _activation_bytes(snapshot) -> int:
    total = 0
    for dev, cats in snapshot.items():
        if torch.device(dev).type == "cpu":
            total += sum(v for k, v in cats.items() if getattr(k, "value", None) in ("Activation", "Temp"))
    return total


def _saved_for_backward(model, ids) -> int:
    """Bytes of activations alive between the forward and the backward (what the backward needs)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        loss = _final_hidden(model, ids).float().pow(2).mean()
        saved = _activation_bytes(tracker.get_tracker_snapshot("current"))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return saved


def _peak_no_grad(fn) -> int:
    """Peak bytes of activations and temporaries while ``fn`` runs (no gradients exist then)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return _activation_bytes(tracker.get_tracker_snapshot("peak"))


def _final_hidden(model, ids):
    captured = []
    norm = model.model.language_model.norm
    handle = norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def measure_size(size: str, t: int) -> dict[str, float]:
    """Bytes at sequence length t (one sequence) for one tiny size, bf16 weights (the FSDP2 compute dtype)."""
    from ptdpo.models.tiny import build_tiny_qwen3vl

    model = build_tiny_qwen3vl(size, seed=0)[0].to(torch.bfloat16)
    ids = torch.randint(10, 2000, (1, t))
    model.train()
    out = {"act": _saved_for_backward(model, ids)}
    model.gradient_checkpointing_enable()
    out["act_ckpt"] = _saved_for_backward(model, ids)
    model.gradient_checkpointing_disable()

    def teacher():
        model.eval()
        with torch.no_grad():
            _final_hidden(model, ids)

    out["teacher_forward"] = _peak_no_grad(teacher)
    with torch.no_grad():
        model.eval()
        out["teacher_kept"] = _final_hidden(model, ids)[0].nbytes  # [T, H] bf16: what streaming avoids keeping
    return out


def per_token(sizes: list[str], t: int) -> list[dict]:
    from ptdpo.models.tiny import TINY_SIZES

    rows = []
    for size in sizes:
        a, b = measure_size(size, t), measure_size(size, 2 * t)
        spec = TINY_SIZES[size]
        # a(T) = l T + q T^2 with the two lengths T and 2T: l = (4 a(T) - a(2T)) / (2 T)
        row = {"size": size, "hidden": spec.hidden_size, "layers": spec.num_hidden_layers,
               "inter": spec.intermediate_size}
        for key in ("act", "act_ckpt", "teacher_forward"):
            row[key] = (4 * a[key] - b[key]) / (2 * t)
        row["teacher_kept"] = b["teacher_kept"] / (2 * t)
        rows.append(row)
    return rows


def fit(rows: list[dict]) -> dict[str, float]:
    """Least-squares coefficients of the per-token laws (bytes per token): kept for the backward,
    L (a H + b I) without checkpointing, (c L + e) H with it (layer inputs, embeddings, rotary tables);
    the teacher's no-grad forward peaks at d (a H + b I), about one layer's worth."""
    L = torch.tensor([r["layers"] for r in rows], dtype=torch.float64)
    H = torch.tensor([r["hidden"] for r in rows], dtype=torch.float64)
    inter = torch.tensor([r["inter"] for r in rows], dtype=torch.float64)

    def col(key):
        return torch.tensor([r[key] for r in rows], dtype=torch.float64)

    def lstsq(features, target):  # relative least squares: every size counts alike
        scaled = torch.stack(features, 1) / target[:, None]
        return torch.linalg.lstsq(scaled, torch.ones_like(target)[:, None]).solution[:, 0].tolist()

    a, b = lstsq([L * H, L * inter], col("act"))
    per_layer = a * H + b * inter
    c, e = lstsq([L * H, H], col("act_ckpt"))
    (d,) = lstsq([per_layer], col("teacher_forward"))
    pred = {"act": L * per_layer, "act_ckpt": (c * L + e) * H, "teacher_forward": d * per_layer}
    errors = {k: round(float(((pred[k] - col(k)) / col(k)).abs().max()), 4) for k in pred}
    return {"a": a, "b": b, "c": c, "e": e, "d": d, "max_rel_error": errors}


def param_counts(spec: dict) -> dict[str, int]:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig(
        text_config=dict(hidden_size=spec["hidden"], num_hidden_layers=spec["layers"], intermediate_size=spec["inter"],
                         num_attention_heads=spec["heads"], num_key_value_heads=8, head_dim=128, vocab_size=VOCAB,
                         tie_word_embeddings=spec["tied"],
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=spec["vdepth"], hidden_size=spec["vhidden"], intermediate_size=spec["vinter"],
                           num_heads=16, out_hidden_size=spec["hidden"], deepstack_visual_indexes=spec["deepstack"],
                           num_position_embeddings=2304),
        tie_word_embeddings=spec["tied"])
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    head = model.get_output_embeddings().weight
    root = head.numel() * (1 if spec["tied"] else 2)  # the root unit: embeddings and the LM head
    return {"params": sum(p.numel() for p in model.parameters()), "root": root,
            "layer": sum(p.numel() for p in model.model.language_model.layers[0].parameters())}


def plan(coef: dict[str, float]) -> list[dict]:
    from ptdpo.run_config import load_run_config

    rows = []
    for name, spec in REAL.items():
        train = load_run_config(ROOT / spec["config"]).train
        n = param_counts(spec)
        P = n["params"]
        tokens = train.micro_batch_rollouts * (train.max_prompt_length + train.max_response_length)
        H, L, inter = spec["hidden"], spec["layers"], spec["inter"]
        per_layer = coef["a"] * H + coef["b"] * inter
        # with checkpointing: the kept layer inputs plus one layer recomputed during the backward
        ckpt = (coef["c"] * L + coef["e"]) * H + per_layer
        act = ckpt if train.gradient_checkpointing else L * per_layer
        act_other = L * per_layer if train.gradient_checkpointing else ckpt
        ptd_tokens = train.micro_batch_rollouts * train.max_response_length
        per_rank_rollouts = train.prompts_per_step * train.group_size // GPUS
        vllm = (getattr(train.vllm, "gpu_memory_utilization", None) or 0.0) * GPU_GB * GB
        row = {
            "model": name, "params_B": P / 1e9,
            "masters_fp32": 4 * P / GPUS, "grads_fp32": 4 * P / GPUS, "adam_fp32": 8 * P / GPUS,
            "reference_fp32": 4 * P / GPUS,
            "gathered_bf16": 2 * (n["root"] + 2 * n["layer"]),  # root unit + a layer and its prefetched neighbour
            "tokens_per_micro_batch": tokens,
            "activations": act * tokens, "activations_other_setting": act_other * tokens,
            "gradient_checkpointing": train.gradient_checkpointing,
            "chunked_loss": 2 * train.ptd.chunk_size * VOCAB * 4,  # student + teacher logits of one chunk
            "teacher_stream": coef["d"] * per_layer * tokens + ptd_tokens * H * 2,
            "teacher_kept_before": per_rank_rollouts * train.max_response_length * H * 2,
            "vllm_rollout": vllm, "vllm_asleep": 1.5 * GB,
        }
        static = row["masters_fp32"] + row["adam_fp32"] + row["reference_fp32"]
        row["rollout_phase"] = static + vllm
        row["update_phase"] = (static + row["grads_fp32"] + row["gathered_bf16"] + row["activations"]
                               + row["chunked_loss"] + row["teacher_stream"] + row["vllm_asleep"])
        rows.append(row)
    return rows


def _gb(x: float) -> str:
    return f"{x / GB:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.5m,1m,10m,50m")
    parser.add_argument("--tokens", type=int, default=128, help="T (and 2T) of the measured sequences")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = per_token(args.sizes.split(","), args.tokens)
    print("measured bytes per token (bf16 compute, decoder, CPU tracked tensors):")
    print("| tiny | H | L | I | train fwd+bwd | with checkpointing | teacher forward (transient) | teacher kept |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['hidden']} | {r['layers']} | {r['inter']} | {r['act']:.0f} | {r['act_ckpt']:.0f} "
              f"| {r['teacher_forward']:.0f} | {r['teacher_kept']:.0f} |")
    coef = fit(rows)
    print(f"\nfit (bytes/token): kept for backward L (a H + b I), a = {coef['a']:.1f}, b = {coef['b']:.1f}; with "
          f"checkpointing (c L + e) H, c = {coef['c']:.2f}, e = {coef['e']:.2f}; teacher forward peak "
          f"d (a H + b I), d = {coef['d']:.2f}; largest relative error of the fit on the tiny sizes: "
          f"{json.dumps(coef['max_rel_error'])}")
    table = plan(coef)
    keys = ["params_B", "masters_fp32", "grads_fp32", "adam_fp32", "reference_fp32", "gathered_bf16",
            "tokens_per_micro_batch", "activations", "activations_other_setting", "chunked_loss", "teacher_stream",
            "teacher_kept_before", "vllm_rollout", "vllm_asleep", "rollout_phase", "update_phase"]
    print("\nper GPU (GB; 8 GPUs, FSDP2, bf16 compute over float32 masters):")
    print("| | " + " | ".join(r["model"] for r in table) + " |\n|---|" + "---|" * len(table))
    for k in keys:
        cells = [f"{r[k]:.2f}" if k == "params_B" else str(r[k]) if k == "tokens_per_micro_batch" else _gb(r[k])
                 for r in table]
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": rows, "fit": coef, "plan": table}, indent=1))


if __name__ == "__main__":
    main()
