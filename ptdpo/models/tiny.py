"""Tiny random-weight Qwen3-VL policies for tests, demos and CPU runs.

``build_tiny_qwen3vl(size, seed)`` returns a real ``Qwen3VLForConditionalGeneration`` (same code path
as the 2B/4B/8B checkpoints: vision tower with deepstack mergers, interleaved M-RoPE, untied LM head)
with random weights, and the matching processor (local tokenizer + patch-16/merge-2 image processor).

Checked constraints (DESIGN.md section 5):
- ``mrope_section`` sums to head_dim / 2 (proportions of the real [24, 20, 20] for head_dim 128);
- every ``deepstack_visual_indexes`` entry is below the vision depth, and there are no more deepstack
  layers than text layers (extra ones would be ignored silently);
- ``vocab_size == len(tokenizer)`` and the config's image/video/vision_start/vision_end/pad/eos ids are the
  tokenizer's (checked after building);
- the vision ``out_hidden_size`` is the text hidden size; vision head_dim is a multiple of 4 (axial rope);
- the text head_dim is at least 32, the smallest vLLM's CPU attention serves, so every size also runs
  in the vLLM engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ptdpo.models.processor import (
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    build_processor,
)
from ptdpo.models.tokenizer import build_tokenizer, special_token_ids

MIN_VLLM_HEAD_DIM = 32


@dataclass(frozen=True)
class TinySpec:
    """Architecture of one named tiny size (text decoder + vision tower)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vision_depth: int
    vision_hidden_size: int
    vision_num_heads: int
    vision_intermediate_size: int
    deepstack_visual_indexes: tuple[int, ...]
    # learned vision position grid (side = sqrt): 16x16 covers images up to 256 px without interpolation
    vision_num_position_embeddings: int = 256
    nominal_params: int = 0


TINY_SIZES: dict[str, TinySpec] = {
    "0.5m": TinySpec(64, 2, 2, 1, 32, 128, 2, 32, 2, 64, (0,), nominal_params=500_000),
    "1m": TinySpec(128, 2, 4, 2, 32, 256, 2, 32, 2, 64, (0,), nominal_params=1_000_000),
    "10m": TinySpec(256, 8, 4, 2, 64, 896, 4, 128, 4, 256, (1, 2), nominal_params=10_000_000),
    "50m": TinySpec(640, 8, 10, 2, 64, 2048, 6, 192, 4, 384, (1, 3, 5), nominal_params=50_000_000),
}


def mrope_section(head_dim: int) -> list[int]:
    """[t, h, w] rotary sections summing to head_dim / 2, in the real model's 24:20:20 proportions."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    hw = max(1, half * 20 // 64)
    sec = [half - 2 * hw, hw, hw]
    # interleaved layout: H uses dims 1, 4, 7.. and W 2, 5, 8.. up to 3 * section
    if sec[0] < 1 or 3 * hw > half:
        raise ValueError(f"head_dim {head_dim} too small for interleaved M-RoPE")
    return sec


def tiny_config(size: str = "0.5m", tokenizer=None):
    """The ``Qwen3VLConfig`` of a named tiny size, with ids taken from ``tokenizer``."""
    from transformers import Qwen3VLConfig

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny size {size!r}; known: {sorted(TINY_SIZES)}")
    spec = TINY_SIZES[size]
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    ids = special_token_ids(tokenizer)
    if any(i >= spec.vision_depth for i in spec.deepstack_visual_indexes):
        raise ValueError(
            f"deepstack_visual_indexes {spec.deepstack_visual_indexes} must be < depth {spec.vision_depth}"
        )
    if len(spec.deepstack_visual_indexes) > spec.num_hidden_layers:
        raise ValueError("more deepstack layers than text layers")
    if spec.head_dim < MIN_VLLM_HEAD_DIM:
        raise ValueError(f"head_dim {spec.head_dim} is below {MIN_VLLM_HEAD_DIM}, which vLLM's CPU attention needs")
    vision_head_dim = spec.vision_hidden_size // spec.vision_num_heads
    if vision_head_dim % 4 or spec.vision_hidden_size % spec.vision_num_heads:
        raise ValueError(f"vision head_dim {vision_head_dim} must be a multiple of 4")
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": mrope_section(spec.head_dim),
            "mrope_interleaved": True,
        },
        pad_token_id=ids["pad_token_id"],
        bos_token_id=None,
        eos_token_id=ids["eos_token_id"],
        tie_word_embeddings=False,
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_num_heads,
        out_hidden_size=spec.hidden_size,
        deepstack_visual_indexes=list(spec.deepstack_visual_indexes),
        num_position_embeddings=spec.vision_num_position_embeddings,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        hidden_act="gelu_pytorch_tanh",
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen3vl(
    size: str = "0.5m",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    dtype: torch.dtype | None = None,
):
    """(Qwen3VLForConditionalGeneration with random weights, processor) for a named tiny size.

    Same ``size`` and ``seed`` give identical weights; the global torch RNG is left untouched. The
    model is returned in eval mode on CPU (float32 unless ``dtype``), with its generation config's
    pad/eos set from the tokenizer (eos: ``<|im_end|>`` and ``<|endoftext|>``, as Qwen's).
    """
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    config = tiny_config(size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    ids = special_token_ids(tokenizer)
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.generation_config.eos_token_id = [ids["eos_token_id"], ids["pad_token_id"]]
    model.generation_config.bos_token_id = None
    check_model_matches_processor(model, processor)
    model.eval()
    return model, processor


def check_model_matches_processor(model, processor) -> None:
    """Raise if the model's vocab or multimodal token ids disagree with the processor's tokenizer."""
    cfg = model.config
    tok = processor.tokenizer
    vocab = cfg.get_text_config().vocab_size
    if vocab < len(tok):
        raise ValueError(f"model vocab {vocab} is smaller than the tokenizer's {len(tok)} tokens")
    for name, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        want = getattr(cfg, name, None)
        got = tok.convert_tokens_to_ids(token)
        if want is not None and want != got:
            raise ValueError(f"config.{name}={want} but the tokenizer maps {token} to {got}")
    vcfg = getattr(cfg, "vision_config", None)
    ip = getattr(processor, "image_processor", None)
    if vcfg is not None and ip is not None:
        for a, b in (
            ("patch_size", "patch_size"),
            ("spatial_merge_size", "merge_size"),
            ("temporal_patch_size", "temporal_patch_size"),
        ):
            if (
                getattr(vcfg, a, None) is not None
                and getattr(ip, b, None) is not None
                and getattr(vcfg, a) != getattr(ip, b)
            ):
                raise ValueError(
                    f"vision_config.{a}={getattr(vcfg, a)} but image_processor.{b}={getattr(ip, b)}"
                )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_sizes_table() -> list[dict]:
    """Spec and exact parameter count of every named size (models built on the meta device)."""
    rows = []
    tokenizer = build_tokenizer()
    from transformers import Qwen3VLForConditionalGeneration

    for name, spec in TINY_SIZES.items():
        with torch.device("meta"):
            m = Qwen3VLForConditionalGeneration(tiny_config(name, tokenizer))
        rows.append(
            {
                "size": name,
                "params": count_parameters(m),
                "vision_params": count_parameters(m.model.visual),
                **asdict(spec),
            }
        )
    return rows
