"""Policies and processors: the tiny Qwen3-VL builder, the one loader, and the multimodal batch API.

Names are imported lazily (transformers takes seconds to import):

    from ptdpo.models import load_policy, encode_prompts, generate_completions, completion_hidden_states

Importing ``ptdpo.models.processor`` (done by any of the names below) registers
``Qwen3VLImageProcessor`` with ``AutoProcessor``.
"""

from __future__ import annotations

from ptdpo.lazy import lazy_exports

_EXPORTS = {
    "build_tokenizer": "tokenizer",
    "tokenizer_json": "tokenizer",
    "special_token_ids": "tokenizer",
    "vision_special_token_ids": "tokenizer",
    "CHAT_TEMPLATE": "tokenizer",
    "Qwen3VLImageProcessor": "processor",
    "build_processor": "processor",
    "build_image_processor": "processor",
    "set_pixel_limits": "processor",
    "pixel_limits": "processor",
    "TINY_SIZES": "tiny",
    "build_tiny_qwen3vl": "tiny",
    "tiny_config": "tiny",
    "count_parameters": "tiny",
    "load_policy": "loading",
    "load_processor": "loading",
    "load_policy_processor": "loading",
    "save_policy": "loading",
    "policy_fingerprint": "loading",
    "PolicyLoadError": "loading",
    "Completions": "multimodal",
    "render_prompts": "multimodal",
    "infer_images_per_sample": "multimodal",
    "trim_completions": "multimodal",
    "unwrap_model": "multimodal",
    "encode_prompts": "multimodal",
    "select_prompts": "multimodal",
    "repeat_interleave_prompts": "multimodal",
    "batch_to": "multimodal",
    "generate_completions": "multimodal",
    "completion_hidden_states": "multimodal",
    "completion_logits": "multimodal",
    "completion_logprobs": "multimodal",
    "get_lm_head": "multimodal",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
