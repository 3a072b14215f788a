"""One loader for every policy: tiny random models, saved folders and hub ids.

``load_policy(spec)`` accepts

- ``tiny:<size>`` or ``tiny:<size>@<seed>`` (sizes: ``ptdpo.models.tiny.TINY_SIZES``): a random-weight
  Qwen3-VL built locally (default seed 0);
- a local directory: one written by ``save_policy``, or a real Qwen3-VL / Qwen2.5-VL checkpoint folder;
- anything else is a hub id (``Qwen/Qwen3-VL-2B-Thinking``), passed to ``from_pretrained``; with no
  network (``HF_HUB_OFFLINE=1``) this raises ``PolicyLoadError`` naming the id.

The model comes from ``AutoModelForImageTextToText`` and the processor from ``AutoProcessor``. Where the
stock processor cannot be built (Qwen3-VL's needs a video processor, i.e. torchvision) the loader falls
back to ``Qwen3VLImageProcessor`` made of the folder's tokenizer and image processor.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ptdpo.models.processor import Qwen3VLImageProcessor, set_pixel_limits

POLICY_META_FILE = "ptdpo_policy.json"
VIDEO_CONFIG_FILE = "video_preprocessor_config.json"


class PolicyLoadError(RuntimeError):
    """A policy spec could not be loaded; the message names the spec and the reason."""


def parse_tiny_spec(spec: str) -> tuple[str, int]:
    """``tiny:<size>[@<seed>]`` -> (size, seed)."""
    body = spec[len("tiny:") :]
    size, _, seed = body.partition("@")
    try:
        return size, int(seed) if seed else 0
    except ValueError as e:
        raise PolicyLoadError(f"bad tiny policy spec {spec!r}: seed {seed!r} is not an integer") from e


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    name = str(dtype).removeprefix("torch.")
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    name = aliases.get(name, name)
    resolved = getattr(torch, name, None)
    if not isinstance(resolved, torch.dtype):
        raise PolicyLoadError(f"unknown dtype {dtype!r}")
    return resolved


def _is_local(spec: str) -> bool:
    return os.path.isdir(os.path.expanduser(spec))


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.startswith(os.sep) or spec.count("/") > 1


def load_processor(source: str, **kwargs):
    """``AutoProcessor.from_pretrained(source)``, falling back to the image-only Qwen3-VL processor.

    The fallback covers Qwen3-VL folders on machines without torchvision (the stock processor needs a
    video processor) and any folder where AutoProcessor returns only a tokenizer.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        if hasattr(processor, "image_processor") and hasattr(processor, "tokenizer"):
            return processor
        reason = f"AutoProcessor returned a {type(processor).__name__} without an image processor"
    except (ImportError, ValueError, TypeError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with both reasons
        raise PolicyLoadError(
            f"cannot build a processor for {source!r}: {reason}; fallback failed: {e}"
        ) from e
    return Qwen3VLImageProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def load_policy(
    spec: str,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    attn_implementation: str | None = None,
):
    """(model, processor) for a policy spec (see the module docstring).

    ``dtype``: torch dtype or name ("bfloat16", "float32", "auto"); None keeps float32 for tiny models and
    the checkpoint's saved dtype for folders/hub ids. ``device``: where to move the model. ``min_pixels``
    / ``max_pixels`` override the processor's image resize limits (use one processor configuration
    for training, rollouts and evaluation). The model is returned in eval mode.
    """
    dtype = _resolve_dtype(dtype)
    if spec.startswith("tiny:"):
        from ptdpo.models.tiny import TINY_SIZES, build_tiny_qwen3vl

        size, seed = parse_tiny_spec(spec)
        if size not in TINY_SIZES:
            raise PolicyLoadError(f"unknown tiny size in {spec!r}; known: {sorted(TINY_SIZES)}")
        model, processor = build_tiny_qwen3vl(
            size,
            seed=seed,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            dtype=None if dtype == "auto" else dtype,
        )
    else:
        source = _source(spec)
        model = _load_model(source, dtype=dtype, attn_implementation=attn_implementation)
        processor = _processor(spec, source, min_pixels, max_pixels)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, processor


def load_policy_processor(spec: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """The processor ``load_policy(spec, min_pixels=..., max_pixels=...)`` returns, without loading any
    weights (for work that only tokenizes, such as counting prompt lengths when the data is prepared)."""
    if spec.startswith("tiny:"):
        from ptdpo.models.processor import build_processor
        from ptdpo.models.tiny import TINY_SIZES

        size, _ = parse_tiny_spec(spec)
        if size not in TINY_SIZES:
            raise PolicyLoadError(f"unknown tiny size in {spec!r}; known: {sorted(TINY_SIZES)}")
        return build_processor(min_pixels=min_pixels, max_pixels=max_pixels)
    return _processor(spec, _source(spec), min_pixels, max_pixels)


def _source(spec: str) -> str:
    """What ``from_pretrained`` reads for a non-tiny spec: a local folder, else a hub id."""
    if _is_local(spec):
        return os.path.expanduser(spec)
    if _looks_like_path(spec):
        raise PolicyLoadError(f"policy directory {spec!r} does not exist")
    return spec


def _processor(spec: str, source: str, min_pixels: int | None, max_pixels: int | None):
    try:
        processor = load_processor(source)
    except OSError as e:
        raise PolicyLoadError(f"cannot load the processor of policy {spec!r}: {e}") from e
    if min_pixels is not None or max_pixels is not None:
        set_pixel_limits(processor, min_pixels, max_pixels)
    return processor


def _load_model(source: str, dtype=None, attn_implementation: str | None = None):
    from transformers import AutoModelForImageTextToText

    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except OSError as e:
        where = "local folder" if os.path.isdir(source) else "hub id"
        offline = (
            " (HF_HUB_OFFLINE is set: no download attempted)" if os.environ.get("HF_HUB_OFFLINE") else ""
        )
        raise PolicyLoadError(f"cannot load policy {source!r} ({where}){offline}: {e}") from e


def save_policy(model, processor, path: str | Path, metadata: dict | None = None) -> Path:
    """Save model (safetensors), generation config and processor to ``path`` (created), plus a small
    ``ptdpo_policy.json`` (weights fingerprint + ``metadata``). ``load_policy(path)`` reloads it, and so
    does vLLM: a processor without a video part gets the ``video_preprocessor_config.json`` vLLM's
    Qwen3-VL processor needs (:func:`video_processor_config`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    video = path / VIDEO_CONFIG_FILE
    if getattr(processor, "video_processor", None) is None and not video.exists():
        video.write_text(json.dumps(video_processor_config(processor.image_processor), indent=2) + "\n")
    meta = {
        "fingerprint": policy_fingerprint(model),
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        **(metadata or {}),
    }
    (path / POLICY_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def video_processor_config(image_processor) -> dict:
    """A Qwen3-VL video processor config with the image processor's own resize limits, patching and
    normalisation (vLLM builds the stock processor, video part included, from a model folder). Plain
    JSON: writing it needs no torchvision."""
    size = dict(image_processor.size)
    return {
        "size": {"longest_edge": int(size["longest_edge"]), "shortest_edge": int(size["shortest_edge"])},
        "patch_size": int(image_processor.patch_size),
        "temporal_patch_size": int(image_processor.temporal_patch_size),
        "merge_size": int(image_processor.merge_size),
        "image_mean": [float(x) for x in image_processor.image_mean],
        "image_std": [float(x) for x in image_processor.image_std],
        "video_processor_type": "Qwen3VLVideoProcessor",
    }


def policy_fingerprint(model, length: int = 16) -> str:
    """Short sha256 over parameter/buffer names, dtypes, shapes and bytes of ``model.state_dict()``.

    Sharded (FSDP2 DTensor) weights are gathered first: call it on every rank.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]
