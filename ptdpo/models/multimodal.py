"""Multimodal batching, sampling and the completion forward used by the trainer and evaluation.

A prompt batch is a plain dict (see ``encode_prompts``):

- ``input_ids`` [B, P] long, LEFT-padded with the pad id; ``attention_mask`` [B, P] (0 on padding);
- ``mm_token_type_ids`` [B, P] (1 on image tokens, 0 elsewhere): Qwen3-VL needs it to build its 3D
  M-RoPE positions;
- ``pixel_values`` [N_patches, 3*2*16*16] float: the patches of every image of the batch concatenated in
  batch order (sample 0's images, then sample 1's, ...), or None when the batch has no image;
- ``image_grid_thw`` [N_images, 3] long, one row per image in the same order, or None;
- ``images_per_sample``: list[int], how many images each row owns (rows map back to image blocks).

Image rows have variable patch counts (grid_t*grid_h*grid_w each): selecting or repeating prompts must
move whole per-image blocks of ``pixel_values`` (``select_prompts``, ``repeat_interleave_prompts``), never
index ``pixel_values`` by prompt row.

Completions are RIGHT-padded: ``ids`` [B, T] with the pad id after each completion, ``mask`` [B, T]
1 on real completion tokens (the eos token included when generated).

``completion_hidden_states`` runs one forward over prompt + completion and returns the final hidden
states (after the final norm, the LM head's input) at the positions that predict each completion
token, so ``get_lm_head(model)(h)[:, t]`` are the logits of completion token ``t``. Student and teacher
may use different prompt batches (x and x^h) with the same completion ids: the output is aligned on
the completion tokens in both cases.

Wrappers: every function accepts the bare model, DDP, or an FSDP2 (``fully_shard``) model. Checked with
world sizes 1 (tests) and 2 (gloo): gradients equal the single-process ones. Under DDP/FSDP every rank
must run the vision tower in every step (a rank whose micro-batch has no image leaves the vision
parameters without gradient: FSDP2 then fails in reduce-scatter, DDP needs find_unused_parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptdpo.models.tokenizer import IMAGE_TOKEN, vision_special_token_ids

PROMPT_TENSOR_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
IMAGE_KEYS = ("pixel_values", "image_grid_thw")


# --------------------------------------------------------------------------------------------------
# model accessors


def unwrap_model(model) -> nn.Module:
    """The transformers model inside DDP / DataParallel / torch.compile wrappers (FSDP2 keeps the class)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def get_lm_head(model) -> nn.Linear:
    """The LM head (``hidden -> vocab`` linear) of a causal/image-text-to-text model."""
    head = unwrap_model(model).get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"{type(model).__name__}.get_output_embeddings() is {type(head).__name__}, not nn.Linear"
        )
    return head


def get_base_model(model) -> nn.Module:
    """The multimodal backbone that returns hidden states (``Qwen3VLModel`` for Qwen3-VL)."""
    base = getattr(unwrap_model(model), "model", None)
    if base is None:
        raise TypeError(f"{type(model).__name__} has no .model backbone")
    return base


def get_final_norm(model) -> nn.Module:
    """The text decoder's final norm: its output is the LM head's input."""
    decoder = unwrap_model(model).get_decoder()
    norm = getattr(decoder, "norm", None)
    if not isinstance(norm, nn.Module):
        raise TypeError(f"cannot find the final norm of {type(decoder).__name__}")
    return norm


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# prompt batches


def render_prompts(
    processor, messages_list: Sequence[list[dict]], enable_thinking: bool = False
) -> list[str]:
    """Chat-templated prompt strings (one ``<|image_pad|>`` per image), with the generation prompt."""
    return [
        processor.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
        for messages in messages_list
    ]


def encode_prompts(
    processor,
    messages_list: Sequence[list[dict]],
    images_list: Sequence[Sequence[Any]] | None = None,
    enable_thinking: bool = False,
) -> dict[str, Any]:
    """Chat-template, tokenize and image-process a batch of prompts (see the module docstring).

    ``messages_list[i]`` are chat messages (``ptdpo.prompts.build_messages``) whose ``{"type": "image"}``
    parts are placeholders for ``images_list[i]`` (PIL images, in order); a sample may have 0 images.
    Returns CPU tensors, left-padded whatever the tokenizer's own padding side.
    """
    n = len(messages_list)
    images_list = [[] for _ in range(n)] if images_list is None else [list(x) for x in images_list]
    if len(images_list) != n:
        raise ValueError(f"{n} message lists but {len(images_list)} image lists")
    texts = render_prompts(processor, messages_list, enable_thinking=enable_thinking)
    image_token = getattr(processor, "image_token", IMAGE_TOKEN)
    for i, (text, imgs) in enumerate(zip(texts, images_list)):
        k = text.count(image_token)
        if k != len(imgs):
            raise ValueError(
                f"prompt {i}: the messages hold {k} image placeholders but {len(imgs)} images were given"
            )
    flat = [img for imgs in images_list for img in imgs]
    out = processor(
        text=texts,
        images=flat or None,
        return_tensors="pt",
        padding=True,
        padding_side="left",
        return_mm_token_type_ids=True,
    )
    batch: dict[str, Any] = {
        "input_ids": out["input_ids"],
        "attention_mask": out["attention_mask"],
        "mm_token_type_ids": out.get("mm_token_type_ids"),
        "pixel_values": out.get("pixel_values") if flat else None,
        "image_grid_thw": out.get("image_grid_thw") if flat else None,
        "images_per_sample": [len(imgs) for imgs in images_list],
        "texts": texts,  # the chat-template strings (vLLM takes these, with the images)
    }
    if batch["mm_token_type_ids"] is None:
        batch["mm_token_type_ids"] = make_mm_token_type_ids(batch["input_ids"], processor)
    if batch["attention_mask"][:, -1].min() < 1:
        raise RuntimeError("prompt batch is not left-padded")
    return batch


def make_mm_token_type_ids(input_ids: torch.Tensor, processor_or_config) -> torch.Tensor:
    """1 where ``input_ids`` is the image token, 2 for the video token, 0 elsewhere."""
    image_id = getattr(processor_or_config, "image_token_id", None)
    video_id = getattr(processor_or_config, "video_token_id", None)
    out = torch.zeros_like(input_ids)
    if image_id is not None:
        out[input_ids == image_id] = 1
    if video_id is not None:
        out[input_ids == video_id] = 2
    return out


def image_patch_counts(batch: dict[str, Any]) -> list[int]:
    """Rows of ``pixel_values`` each image owns (grid_t * grid_h * grid_w)."""
    grid = batch.get("image_grid_thw")
    return [] if grid is None else grid.prod(-1).tolist()


def infer_images_per_sample(batch: dict[str, Any]) -> list[int]:
    """Images per prompt row, counted as runs of image tokens in ``mm_token_type_ids`` (for batches
    collated without ``images_per_sample``; the image tokens of two images are never adjacent)."""
    mm = batch.get("mm_token_type_ids")
    if mm is None:
        if batch.get("image_grid_thw") is not None:
            raise ValueError("cannot map image rows to prompts: no images_per_sample nor mm_token_type_ids")
        return [0] * batch["input_ids"].shape[0]
    is_img = (mm == 1).long()
    starts = is_img[:, 1:] > is_img[:, :-1]
    return (starts.sum(1) + is_img[:, 0]).tolist()


def select_prompts(batch: dict[str, Any], indices: Sequence[int] | torch.Tensor) -> dict[str, Any]:
    """The prompts ``indices`` (any order, repeats allowed), moving each prompt's image blocks with it."""
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    per_sample = batch.get("images_per_sample")
    per_sample = infer_images_per_sample(batch) if per_sample is None else list(per_sample)
    B = batch["input_ids"].shape[0]
    if len(per_sample) != B:
        raise ValueError(f"images_per_sample has {len(per_sample)} entries for {B} prompts")
    out: dict[str, Any] = {}
    index_t = torch.tensor(idx, dtype=torch.long, device=batch["input_ids"].device)
    for k in PROMPT_TENSOR_KEYS:
        if batch.get(k) is not None:
            out[k] = batch[k].index_select(0, index_t)
    out["images_per_sample"] = [per_sample[i] for i in idx]
    if batch.get("texts") is not None:
        out["texts"] = [batch["texts"][i] for i in idx]
    grid = batch.get("image_grid_thw")
    if grid is None or sum(out["images_per_sample"]) == 0:
        out["pixel_values"] = None
        out["image_grid_thw"] = None
    else:
        pix = batch["pixel_values"]
        counts = image_patch_counts(batch)
        if sum(counts) != pix.shape[0]:
            raise ValueError(f"pixel_values has {pix.shape[0]} rows, image_grid_thw says {sum(counts)}")
        first_image = [0]
        for c in per_sample:
            first_image.append(first_image[-1] + c)
        first_row = [0]
        for c in counts:
            first_row.append(first_row[-1] + c)
        img_order = [j for i in idx for j in range(first_image[i], first_image[i + 1])]
        rows = [r for j in img_order for r in range(first_row[j], first_row[j + 1])]
        out["pixel_values"] = pix.index_select(0, torch.tensor(rows, dtype=torch.long, device=pix.device))
        out["image_grid_thw"] = grid.index_select(
            0, torch.tensor(img_order, dtype=torch.long, device=grid.device)
        )
    for k, v in batch.items():  # carry anything else that is per-batch metadata untouched
        if k not in out:
            out[k] = v
    return out


def repeat_interleave_prompts(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """Each prompt repeated ``n`` times in place (0,0,..,1,1,..), e.g. for G rollouts per prompt."""
    B = batch["input_ids"].shape[0]
    return select_prompts(batch, [i for i in range(B) for _ in range(n)])


def batch_to(batch: dict[str, Any], device=None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors moved to ``device``; ``pixel_values`` also cast to ``dtype`` when given."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device) if device is not None else v
            if k == "pixel_values" and dtype is not None:
                v = v.to(dtype)
        out[k] = v
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a prompt batch that the model's forward/generate take."""
    keys = PROMPT_TENSOR_KEYS + IMAGE_KEYS
    return {k: batch[k] for k in keys if batch.get(k) is not None}


# --------------------------------------------------------------------------------------------------
# sampling


@dataclass
class Completions:
    """Sampled completions, right-padded.

    ids: [B, T] long, pad id after each completion; mask: [B, T] long, 1 on real tokens (eos included);
    lengths: [B] long = mask.sum(1); truncated: [B] bool, hit max_new_tokens without an eos;
    texts: decoded with skip_special_tokens=True (``<think>`` tags are kept: they are not special);
    logits: [B, T, V] raw (unprocessed, not temperature-scaled) next-token logits of each step, only
    when ``generate_completions(..., output_logits=True)``; logprobs: [B, T] raw log pi of each completion
    token (0 on padding), only with ``output_logprobs=True``.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]
    logits: torch.Tensor | None = field(default=None, repr=False)
    logprobs: torch.Tensor | None = field(default=None, repr=False)


def eos_token_ids(model, processor) -> list[int]:
    """Tokens that end a completion: the tokenizer's eos plus the model's generation-config eos ids."""
    ids: list[int] = []
    gc_eos = getattr(getattr(unwrap_model(model), "generation_config", None), "eos_token_id", None)
    for i in [processor.tokenizer.eos_token_id] + (gc_eos if isinstance(gc_eos, list) else [gc_eos]):
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def pad_token_id(processor) -> int:
    tok = processor.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


@contextlib.contextmanager
def _fsdp_root_unsharded(model):
    """FSDP2: generate() runs the vision encoder outside the root forward (image features are computed
    once before decoding), so the root group's parameters (e.g. the patch embedding) must be gathered."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        FSDPModule = ()  # noqa: N806
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _is_sharded_multi_rank(model) -> bool:
    """FSDP on several ranks: every rank must keep stepping until all finish (``synced_gpus``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, (FSDPModule, FullyShardedDataParallel)) or bool(
        getattr(model, "_is_fsdp_managed_module", False)
    )


@torch.no_grad()
def generate_completions(
    model,
    processor,
    batch: dict[str, Any],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
    suppress_token_ids: Sequence[int] | None = None,
    output_logits: bool = False,
    row_seeds: Sequence[int] | None = None,
    output_logprobs: bool = False,
    rows: Sequence[int] | None = None,
) -> Completions:
    """One completion per prompt row, in one batched ``model.generate`` call (KV cache).

    The sampling distribution is exactly softmax(logits / temperature) restricted by ``top_p``: the
    model's own generation config (real checkpoints ship top_k=20, top_p=0.8, ...) and transformers'
    global defaults (top_k=50) are NOT applied. The vision special tokens (``<|image_pad|>``,
    ``<|vision_start|>``, ...) and any ``suppress_token_ids`` get probability 0.

    Every row draws from its own random stream (``ptdpo.models.sampling.RowSampler``), seeded with
    ``row_seeds[r]``, or with ``mix_seed(seed, r)`` when only ``seed`` is given, or from seeds drawn
    from the global RNG (which advances) when neither is; with a seed the global RNG is untouched. A
    row's completion depends on its prompt, its seed and the model only, not on the other rows.
    ``output_logprobs``: ``Completions.logprobs``, the raw log pi of each completion token.

    ``rows``: the batch holds distinct prompts and output row ``r`` completes prompt ``rows[r]`` (e.g. G
    rollouts of each prompt): each prompt's forward runs once and its KV cache is copied to its rows
    (``ptdpo.models.shared_prompt``); the rows' samples are the same as with the prompts repeated.
    """
    from transformers import GenerationConfig

    from ptdpo.models.sampling import RowSampler, mix_seed

    if rows is not None and output_logits:  # the first step's logits are not kept by the shared prefill
        batch, rows = select_prompts(batch, rows), None

    device = model_device(model)
    eos = eos_token_ids(model, processor)
    pad = pad_token_id(processor)
    suppress = sorted(set(vision_special_token_ids(processor.tokenizer)) | set(suppress_token_ids or []))
    B = batch["input_ids"].shape[0] if rows is None else len(rows)
    seeds = None
    if do_sample:
        if row_seeds is not None:
            seeds = [int(s) for s in row_seeds]
            if len(seeds) != B:
                raise ValueError(f"{len(seeds)} row seeds for {B} prompt rows")
        elif seed is not None:
            seeds = [mix_seed(seed, r) for r in range(B)]
        else:
            seeds = torch.randint(0, 2**62, (B,)).tolist()
    sampler = RowSampler(seeds, max_new_tokens, temperature, top_p, suppress, record_logprobs=output_logprobs)
    # Greedy decoding picks the one token the RowSampler leaves: the sampler is the only processor.
    gen_config = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=bool(output_logits),
    )
    inputs = model_inputs(batch_to(batch, device))
    if "mm_token_type_ids" not in inputs:
        inputs["mm_token_type_ids"] = make_mm_token_type_ids(inputs["input_ids"], unwrap_model(model).config)
    prompt_len = inputs["input_ids"].shape[1]
    gm = unwrap_model(model)
    saved = gm.generation_config
    # generate() fills every None field of the passed config from model.generation_config: swap in a
    # clean one so a checkpoint's sampling defaults cannot leak into the rollout distribution.
    gm.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    try:
        with _fsdp_root_unsharded(gm):
            if rows is None:
                out = gm.generate(**inputs, generation_config=gen_config, logits_processor=[sampler],
                                  synced_gpus=_is_sharded_multi_rank(gm))
                generated = out.sequences[:, prompt_len:]
            else:
                inputs, first = prefill_shared_prompts(gm, inputs, rows, sampler)
                generated = first[:, None]
                if max_new_tokens > 1:
                    gen_config.max_new_tokens = int(max_new_tokens) - 1
                    out = gm.generate(**inputs, generation_config=gen_config, logits_processor=[sampler],
                                      synced_gpus=_is_sharded_multi_rank(gm))
                    generated = out.sequences[:, prompt_len:]
    finally:
        gm.generation_config = saved
    ids, mask, lengths, truncated = trim_completions(generated, eos, pad)
    texts = processor.tokenizer.batch_decode(
        [row[: int(n)].tolist() for row, n in zip(ids, lengths)], skip_special_tokens=True
    )
    logits = None
    if output_logits:
        logits = torch.stack(out.logits, dim=1)[:, : ids.shape[1]]
    logprobs = None
    if output_logprobs:
        logprobs = sampler.logprobs()[:, : ids.shape[1]].to(ids.device) * mask
    return Completions(ids=ids, mask=mask, lengths=lengths, truncated=truncated, texts=texts, logits=logits,
                       logprobs=logprobs)


def prefill_shared_prompts(gm, inputs: dict[str, Any], rows: Sequence[int], logits_processor
                           ) -> tuple[dict[str, Any], torch.Tensor]:
    """generate()'s first step when output row ``r`` completes prompt ``rows[r]`` of the distinct prompts in
    ``inputs``: their forward, its cache copied to the rows, each row's first token picked by
    ``logits_processor``. Returns the ``generate`` arguments that continue from there, and those tokens."""
    index = torch.as_tensor(list(rows), dtype=torch.long, device=inputs["input_ids"].device)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= inputs["input_ids"].shape[0]:
        raise ValueError(f"rows must index the {inputs['input_ids'].shape[0]} prompts of the batch, got {list(rows)}")
    positions, following = prompt_positions(gm, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["mm_token_type_ids"], inputs.get("image_grid_thw"))
    out = gm(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    ids, mask = inputs["input_ids"][index], inputs["attention_mask"][index]
    first = logits_processor(ids, out.logits[:, -1][index]).argmax(-1)
    cache = out.past_key_values
    cache.batch_select_indices(index)
    # generate() puts a new token at (its count of real tokens before it) + rope_deltas
    get_base_model(gm).rope_deltas = (following - inputs["attention_mask"].sum(-1))[index][:, None]
    return {"input_ids": torch.cat([ids, first[:, None]], 1), "past_key_values": cache,
            "attention_mask": torch.cat([mask, torch.ones_like(first)[:, None]], 1)}, first


def trim_completions(
    generated: torch.Tensor, eos_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, lengths, truncated) from raw generated tokens [B, T]: each row is cut after its first
    eos (kept, mask 1), the rest set to ``pad_id`` (mask 0); columns past the longest row are dropped."""
    B, T = generated.shape
    is_eos = torch.zeros_like(generated, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= generated == e
    has_eos = is_eos.any(dim=1)
    full = torch.full((B,), T, dtype=torch.long, device=generated.device)
    lengths = torch.where(has_eos, is_eos.long().argmax(dim=1) + 1, full)
    mask = (torch.arange(T, device=generated.device).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), generated, torch.full_like(generated, pad_id))
    tmax = int(lengths.max()) if B else 0
    return ids[:, :tmax].contiguous(), mask[:, :tmax].contiguous(), lengths, ~has_eos


# --------------------------------------------------------------------------------------------------
# completion forward


def rope_position_ids(
    model, input_ids, attention_mask, mm_token_type_ids, image_grid_thw=None
) -> torch.Tensor:
    """3D M-RoPE positions [3, B, L] computed over real tokens only (pads get 0).

    Computed explicitly because Qwen3VLModel.forward only builds them itself when images are present:
    for a text-only batch it falls back to ``arange(L)``, which is wrong for left-padded rows.
    """
    base = get_base_model(model)
    position_ids, _ = base.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=image_grid_thw,
        video_grid_thw=None,
        attention_mask=attention_mask,
    )
    return position_ids


def prompt_positions(model, input_ids, attention_mask, mm_token_type_ids, image_grid_thw=None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M-RoPE positions [3, B, P] of left-padded prompts, the position of each prompt's next token [B]:
    text after the prompt continues from its largest position + 1 in all three sections)."""
    positions = rope_position_ids(model, input_ids, attention_mask, mm_token_type_ids, image_grid_thw)
    real = attention_mask.bool()[None].expand_as(positions)
    return positions, positions.masked_fill(~real, -1).amax(dim=(0, 2)) + 1


def completion_hidden_states(
    model,
    batch: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions predicting each completion token.

    One forward over ``[left-padded prompt | right-padded completion]`` with attention mask = prompt mask
    followed by ``completion_mask`` (attention never covers padding), ``mm_token_type_ids`` extended
    with zeros over the completion, explicit M-RoPE positions and ``use_cache=False``. The hidden state
    at sequence position P-1+t (P = padded prompt length) predicts completion token t. Rows where
    ``completion_mask`` is 0 hold values that must be ignored. Runs with gradients unless the caller
    disables them (teacher: ``torch.no_grad()``); gradients reach the vision tower through the image
    features. The LM head is not applied: full-vocabulary logits are never built here.

    The call goes through ``model(...)`` (so DDP/FSDP wrappers run their hooks) with
    ``logits_to_keep=1``; the hidden states are read from the final norm with a forward hook.
    """
    device = model_device(model)
    prompt_ids = batch["input_ids"].to(device)
    prompt_mask = batch["attention_mask"].to(device)
    completion_ids = completion_ids.to(device)
    completion_mask = completion_mask.to(device=device, dtype=prompt_mask.dtype)
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    if completion_ids.shape[0] != B or completion_mask.shape != completion_ids.shape:
        raise ValueError(
            f"prompt batch of {B} rows but completion ids {tuple(completion_ids.shape)} / "
            f"mask {tuple(completion_mask.shape)}"
        )
    if prompt_mask[:, -1].min() < 1:
        raise ValueError("the prompt batch must be left-padded (last prompt column all real tokens)")
    mm = batch.get("mm_token_type_ids")
    mm = make_mm_token_type_ids(prompt_ids, unwrap_model(model).config) if mm is None else mm.to(device)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    mm_token_type_ids = torch.cat([mm, torch.zeros_like(completion_ids, dtype=mm.dtype)], dim=1)
    grid = batch.get("image_grid_thw")
    grid = grid.to(device) if grid is not None else None
    pixel_values = batch.get("pixel_values")
    pixel_values = pixel_values.to(device) if pixel_values is not None else None
    position_ids = rope_position_ids(model, input_ids, attention_mask, mm_token_type_ids, grid)
    # Go through the top-level forward (so DDP/FSDP wrappers run their hooks) and read the final norm's
    # output with a hook; logits_to_keep=1 makes the LM head cost one position instead of B*L*V.
    captured: list[torch.Tensor] = []
    handle = get_final_norm(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
            logits_to_keep=1,
        )
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one call of the final norm, saw {len(captured)}")
    hidden = captured[0][:, P - 1 : P - 1 + T]
    return hidden


def completion_logits(
    model, batch, completion_ids, completion_mask, temperature: float = 1.0
) -> torch.Tensor:
    """``lm_head(completion_hidden_states(...)) / temperature``: [B, T, V] (small batches/tests only)."""
    h = completion_hidden_states(model, batch, completion_ids, completion_mask)
    logits = get_lm_head(model)(h)
    return logits / temperature if temperature != 1.0 else logits


def completion_logprobs(
    model, batch, completion_ids, completion_mask, temperature: float = 1.0
) -> torch.Tensor:
    """log pi(token_t | prefix) of each completion token at ``temperature``: [B, T], 0 where mask is 0."""
    logits = completion_logits(model, batch, completion_ids, completion_mask, temperature).float()
    lp = logits.log_softmax(-1).gather(-1, completion_ids.to(logits.device).unsqueeze(-1)).squeeze(-1)
    return lp * completion_mask.to(lp.device, lp.dtype)
