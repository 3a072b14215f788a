"""Forwards in which many rows share a prompt: each distinct prompt is run once, its KV cache copied to
its rows, and only the completions are run per row.

Sampling does the same inside ``generate_completions(..., rows=...)`` (``multimodal.prefill_shared_prompts``).

RL batches repeat every prompt G times (G rollouts of a group; the PTD teacher re-scores the failed
rollouts of a group with one hinted prompt). A prompt, its image tokens and the vision tower's work on
its images are the same in all G rows, so the prompt part of a forward is computed once per distinct
prompt (``U`` rows instead of ``B``), then copied (``DynamicCache.batch_select_indices``) to the rows
that use it. Prompts are most of a row's tokens in these batches (a tiny Qwen3-VL prompt with one image
is ~80 tokens against 48 completion tokens; real VQA prompts are hundreds), so sampling and the
no-gradient scoring forwards (reference, old policy, teacher) do a fraction of the work.

Positions are the model's own: the prompt's M-RoPE positions come from ``get_rope_index`` over its real
tokens (left padding), as in ``completion_hidden_states``, and the completion continues from the
prompt's largest position + 1 in all three sections, which is what Qwen2-VL/2.5-VL/3-VL give text after
the last image. ``rows`` maps each output row to its prompt (``rows[b] = u``); rows need not be grouped.

The results equal the full-sequence forwards up to float rounding (tests/test_shared_prompt.py: hidden
states within 1e-9 in float64 and 1e-5 in float32; on the float32 fixture the sampled tokens and their
log-probs are identical). With gradients enabled the shared forward also differentiates (the cache copies
are index_selects), but the trainer uses it only without: a sharded policy would see two forward calls
before one backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ptdpo.models.multimodal import (
    get_final_norm,
    make_mm_token_type_ids,
    model_device,
    prompt_positions,
    unwrap_model,
)


def _row_index(rows: Sequence[int], n_prompts: int, device) -> torch.Tensor:
    index = torch.as_tensor(list(rows), dtype=torch.long, device=device)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n_prompts:
        raise ValueError(f"rows must index the {n_prompts} prompts of the batch, got {list(rows)}")
    return index


def _prompt_tensors(model, batch: dict[str, Any], device) -> dict[str, Any]:
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    if mask[:, -1].min() < 1:
        raise ValueError("the prompt batch must be left-padded (last prompt column all real tokens)")
    mm = batch.get("mm_token_type_ids")
    mm = make_mm_token_type_ids(ids, unwrap_model(model).config) if mm is None else mm.to(device)
    grid = batch.get("image_grid_thw")
    pix = batch.get("pixel_values")
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm,
            "image_grid_thw": grid.to(device) if grid is not None else None,
            "pixel_values": pix.to(device) if pix is not None else None}


def shared_prompt_hidden_states(model, batch: dict[str, Any], rows: Sequence[int], completion_ids: torch.Tensor,
                                completion_mask: torch.Tensor) -> torch.Tensor:
    """``completion_hidden_states`` of rows whose prompts repeat: final hidden states [B, T, H] at the
    positions that predict each completion token of row ``b``, whose prompt is row ``rows[b]`` of the
    prompt ``batch`` (distinct prompts, left-padded). Two forward calls: the prompts (with a cache), then
    every row's completion on its prompt's copied cache."""
    device = model_device(model)
    p = _prompt_tensors(model, batch, device)
    index = _row_index(rows, p["input_ids"].shape[0], device)
    completion_ids = completion_ids.to(device)
    completion_mask = completion_mask.to(device=device, dtype=p["attention_mask"].dtype)
    B, T = completion_ids.shape
    if index.numel() != B or completion_mask.shape != completion_ids.shape:
        raise ValueError(f"{index.numel()} rows but completion ids {tuple(completion_ids.shape)} / "
                         f"mask {tuple(completion_mask.shape)}")
    positions, following = prompt_positions(model, p["input_ids"], p["attention_mask"], p["mm_token_type_ids"],
                                            p["image_grid_thw"])
    captured: list[torch.Tensor] = []
    handle = get_final_norm(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = model(**p, position_ids=positions, use_cache=True, logits_to_keep=1)
        last = captured[0][:, -1][index]  # predicts completion token 0
        if T > 1:
            cache = out.past_key_values
            cache.batch_select_indices(index)
            steps = torch.arange(T - 1, device=device)
            pos = (following[index][:, None] + steps[None]).unsqueeze(0).expand(3, -1, -1)
            model(input_ids=completion_ids[:, : T - 1],
                  attention_mask=torch.cat([p["attention_mask"][index], completion_mask[:, : T - 1]], dim=1),
                  position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != (2 if T > 1 else 1):
        raise RuntimeError(f"expected one call of the final norm per forward, saw {len(captured)}")
    return last[:, None] if T == 1 else torch.cat([last[:, None], captured[1]], dim=1)
