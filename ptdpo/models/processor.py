"""Image processor and processor for Qwen3-VL style policies, without a video processor.

Qwen3-VL uses vision patches of 16 px merged 2x2 into one LLM token, so images are resized to
multiples of 32 px within [min_pixels, max_pixels] (``smart_resize``): a 64x64 image is 4 image tokens,
112x112 becomes 128x128 and 16 tokens.

The stock ``Qwen3VLProcessor`` needs a video processor, which needs torchvision (not installed on
CPU here). ``Qwen3VLImageProcessor`` below is the same processor with the video part removed. It is
registered with ``AutoProcessor`` at import time, so ``AutoProcessor.from_pretrained(saved_dir)``
returns it (with its image processor) rather than quietly falling back to the tokenizer alone; the
folder records ``processor_class`` so importing ``ptdpo.models`` is all a loader needs.
"""

from __future__ import annotations

from transformers import AutoProcessor, PreTrainedConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from ptdpo.models.tokenizer import CHAT_TEMPLATE, build_tokenizer

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# Tiny defaults (real Qwen3-VL: 65536 .. 16777216; the paper trains with 256*28^2 .. 1280*28^2).
TINY_MIN_PIXELS = 32 * 32 * 4
TINY_MAX_PIXELS = 128 * 128
QWEN3VL_IMAGE_MEAN = [0.5, 0.5, 0.5]
QWEN3VL_IMAGE_STD = [0.5, 0.5, 0.5]


class Qwen3VLImageProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` for images and text only (no video processor, so no torchvision).

    Calling it with ``text`` (chat-templated strings holding one ``<|image_pad|>`` per image) and
    ``images`` expands each ``<|image_pad|>`` to ``grid_t*grid_h*grid_w / merge_size**2`` tokens and
    returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (1 on image tokens), and, when
    images are given, ``pixel_values`` [sum of patches, 3*2*16*16] and ``image_grid_thw`` [n_images, 3].
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images only; videos are not supported")
        return super().__call__(images=images, text=text, **kwargs)

    def num_image_tokens(self, height: int, width: int) -> int:
        """LLM tokens one image of this size becomes (after smart resize)."""
        return self._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0]


class _ProcessorRegistryKey(PreTrainedConfig):
    """Only a key: ``AutoProcessor`` finds custom processor classes by name among registered ones."""

    model_type = "ptdpo_qwen3vl_image_processor_key"


def register_processor() -> None:
    """Make ``AutoProcessor.from_pretrained`` resolve ``processor_class: Qwen3VLImageProcessor``.

    Registered under a private key config, so it never replaces the stock processor of real Qwen3-VL
    checkpoints (whose folders name ``Qwen3VLProcessor``). Idempotent.
    """
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    if _ProcessorRegistryKey not in PROCESSOR_MAPPING._extra_content:
        AutoProcessor.register(_ProcessorRegistryKey, Qwen3VLImageProcessor)


register_processor()


def build_image_processor(
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
) -> Qwen2VLImageProcessorPil:
    """The PIL-backed Qwen2-VL image processor with Qwen3-VL's patch 16 / merge 2 and 0.5 mean/std."""
    return Qwen2VLImageProcessorPil(
        min_pixels=TINY_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=TINY_MAX_PIXELS if max_pixels is None else max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        image_mean=QWEN3VL_IMAGE_MEAN,
        image_std=QWEN3VL_IMAGE_STD,
    )


def build_processor(
    tokenizer=None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Qwen3VLImageProcessor:
    """The tiny processor: the local tokenizer plus the image processor, with the chat template."""
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    return Qwen3VLImageProcessor(
        image_processor=build_image_processor(min_pixels, max_pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
    )


def set_pixel_limits(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Change the resize limits (``size.shortest_edge`` / ``size.longest_edge``, in pixels) of a processor's
    image processor in place; None keeps the current value."""
    from transformers.image_utils import SizeDict

    ip = processor.image_processor
    size = dict(ip.size) if ip.size is not None else {}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    size.pop("min_pixels", None)
    size.pop("max_pixels", None)
    ip.size = SizeDict(**size)
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and getattr(ip, name, None) is not None:
            setattr(ip, name, int(value))


def pixel_limits(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes images into."""
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])
