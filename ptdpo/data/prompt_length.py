"""Prompt lengths of training items, counted as training encodes them, and the filter that drops the
over-long ones when the data is prepared (METHOD.md 5: "over-long prompts are filtered when the data is
prepared"; the trainer's own check in ``ptdpo.rollout.collect`` stays as a guard).

A prompt's length is what the trainer measures: the tokens of the chat-templated student prompt
(:func:`ptdpo.prompts.build_messages`, rendered by :func:`ptdpo.models.multimodal.render_prompts` with the
run's thinking mode) after the processor expands each image placeholder into that image's tokens.
:func:`count_prompt_tokens` gets the same number without decoding or resizing a single image: the text
is tokenized in batches and each image contributes the token count the processor derives from its size
(``_get_num_multimodal_tokens``, the rule the processor applies when it expands a placeholder), the size
being read from the image file's header. ``exact=True`` (and any processor without that method) runs the
full :func:`~ptdpo.models.multimodal.encode_prompts` instead; the tests check that both agree.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptdpo.data.schema import Item, ItemError, image_problem, item_images
from ptdpo.models.multimodal import encode_prompts, render_prompts
from ptdpo.models.tokenizer import IMAGE_TOKEN
from ptdpo.prompts import LIBRARY_TEMPLATE, build_messages

EXAMPLES = 10  # over-long items named in the manifest


def image_size(ref: bytes | str, item_id: str, index: int) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(ref) if isinstance(ref, bytes | bytearray) else Path(ref)
        with Image.open(src) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as e:
        raise ItemError(item_id, f"images[{index}]", f"cannot read the image's size ({image_problem(e, ref)})") from e
    return height, width


def _fast_counts(processor: Any, items: Sequence[Item], enable_thinking: bool, template: str) -> list[int]:
    texts = render_prompts(processor, [build_messages(it, template=template) for it in items],
                           enable_thinking=enable_thinking)
    token = getattr(processor, "image_token", IMAGE_TOKEN)
    sizes: list[tuple[int, int]] = []
    for it, text in zip(items, texts):
        if text.count(token) != len(it.images):
            raise ItemError(it.id, "question", f"the chat holds {text.count(token)} image placeholders for "
                                               f"{len(it.images)} images (does the question contain {token}?)")
        sizes.extend(image_size(ref, it.id, i) for i, ref in enumerate(it.images))
    ids = processor.tokenizer(texts)["input_ids"]
    per_image = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"] if sizes else []
    out, k = [], 0
    for it, row in zip(items, ids):
        n = len(it.images)
        # each placeholder is one token in ``row`` and becomes per_image[j] tokens
        out.append(len(row) + sum(per_image[k : k + n]) - n)
        k += n
    return out


def _exact_counts(processor: Any, items: Sequence[Item], enable_thinking: bool, template: str) -> list[int]:
    batch = encode_prompts(processor, [build_messages(it, template=template) for it in items],
                           [item_images(it) for it in items], enable_thinking=enable_thinking)
    return batch["attention_mask"].sum(1).tolist()


def count_prompt_tokens(
    processor: Any,
    items: Sequence[Item],
    enable_thinking: bool = False,
    batch_size: int = 256,
    exact: bool = False,
    template: str = LIBRARY_TEMPLATE,
) -> list[int]:
    """Tokens of each item's student prompt, images included, as the trainer encodes it (module
    docstring) in the run's prompt ``template``. ``exact`` runs the processor on the decoded images (slow;
    the reference)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = _exact_counts if exact or not hasattr(processor, "_get_num_multimodal_tokens") else _fast_counts
    out: list[int] = []
    for start in range(0, len(items), batch_size):
        out.extend(count(processor, items[start : start + batch_size], enable_thinking, template))
    return out


def filter_overlong(
    items: Sequence[Item],
    processor: Any,
    max_prompt_length: int,
    enable_thinking: bool = False,
    batch_size: int = 256,
    template: str = LIBRARY_TEMPLATE,
) -> tuple[list[Item], dict[str, Any]]:
    """(the items whose prompt fits ``max_prompt_length``, in order; a report for the manifest:
    ``filtered_overlong`` (how many were dropped), ``filtered_overlong_examples`` (the first few, id and
    tokens) and ``prompt_tokens`` (limit, longest and mean prompt kept))."""
    counts = count_prompt_tokens(processor, items, enable_thinking=enable_thinking, batch_size=batch_size,
                                 template=template)
    kept = [it for it, n in zip(items, counts) if n <= max_prompt_length]
    kept_counts = [n for n in counts if n <= max_prompt_length]
    over = [(it.id, n) for it, n in zip(items, counts) if n > max_prompt_length]
    report = {
        "filtered_overlong": len(over),
        "filtered_overlong_examples": [{"id": i, "tokens": n} for i, n in over[:EXAMPLES]],
        "prompt_tokens": {
            "limit": max_prompt_length,
            "max": max(kept_counts, default=0),
            "mean": round(sum(kept_counts) / len(kept_counts), 1) if kept_counts else 0.0,
            "longest_filtered": max((n for _, n in over), default=None),
        },
    }
    return kept, report
