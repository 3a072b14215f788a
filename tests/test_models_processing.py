"""Tokenizer, chat template, image processor and processor of the tiny Qwen3-VL policies."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ptdpo.data.schema import Item
from ptdpo.models.tokenizer import (
    ADDED_TOKENS,
    CORPUS_PATH,
    SPECIAL_TOKENS,
    build_tokenizer,
    tokenizer_json,
    train_bpe_json,
)
from ptdpo.prompts import build_messages

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def _corpus_builder():
    """scripts/build_corpus.py, loaded from its path (the builder is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_the_generator_output():
    builder = _corpus_builder()
    assert builder.CORPUS_PATH == CORPUS_PATH.resolve()
    text = CORPUS_PATH.read_text(encoding="utf-8")
    assert text == builder.generate_corpus()
    assert 100_000 < len(text.encode()) < 500_000
    for needle in ("\\frac{", "\\boxed{", "<think>", "</think>", "<answer>", "How many", "left of"):
        assert needle in text


def test_tokenizer_build_is_byte_identical():
    a = build_tokenizer(use_cache=False)
    b = build_tokenizer(use_cache=False)
    assert tokenizer_json(a) == tokenizer_json(b)
    assert a.chat_template == b.chat_template


def test_bpe_training_is_identical_across_processes():
    # a fresh interpreter has other hash seeds: catches order-dependent training
    code = (
        "import hashlib; from ptdpo.models.tokenizer import train_bpe_json; "
        "print(hashlib.sha256(train_bpe_json().encode()).hexdigest())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == hashlib.sha256(train_bpe_json().encode()).hexdigest()


def test_tokenizer_vocab_and_special_tokens():
    tok = build_tokenizer()
    assert 2000 <= len(tok) <= 4000
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS + ADDED_TOKENS)
    assert ids == list(range(len(tok) - len(ids), len(tok)))  # after the learned vocab, in Qwen's order
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left"
    text = f"<|im_start|>user\n{VISION}How many red cubes? <think>\n\\frac{{1}}{{2}}</think><|im_end|>"
    enc = tok(text)["input_ids"]
    for t in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<think>", "</think>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(t) in enc
    # special tokens vanish with skip_special_tokens, <think> tags (added, non-special) stay
    assert (
        tok.decode(enc, skip_special_tokens=True) == "user\nHow many red cubes? <think>\n\\frac{1}{2}</think>"
    )
    assert tok.decode(enc) == text


def test_chat_template_formats():
    tok = build_tokenizer()
    item = Item(id="x", images=[b"a", b"b"], question="How many cubes?", answer="3", choices=["2", "3"])
    msgs = build_messages(item, context_block="Hint: look left.")
    s = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert s.startswith(
        "<|im_start|>system\nYou are a careful visual reasoner.<|im_end|>\n<|im_start|>user\n"
    )
    assert s.count(VISION) == 2 and s.index(VISION) < s.index("How many cubes?")
    assert "Options:\nA. 2\nB. 3\n\nHint: look left." in s
    assert s.endswith("</answer> tags.<|im_end|>\n<|im_start|>assistant\n")
    thinking = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking == s + "<think>\n"
    plain = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_image_token_counts(tiny_processor, make_image):
    p = tiny_processor
    assert p.num_image_tokens(64, 64) == 4
    assert p.num_image_tokens(112, 112) == 16
    text = [f"{VISION}a", f"b{VISION}c"]
    out = p(text=text, images=[make_image(64, 64), make_image(112, 112)], return_tensors="pt", padding=True)
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 8]]  # 112 -> 128 px = 8x8 patches of 16
    assert out["pixel_values"].shape == (16 + 64, 3 * 2 * 16 * 16)
    image_id = p.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (out["input_ids"] == image_id).sum(1).tolist() == [4, 16]
    assert out["mm_token_type_ids"].eq(1).equal(out["input_ids"].eq(image_id))


def test_auto_processor_returns_full_processor(tiny_processor, make_image, tmp_path):
    from transformers import AutoProcessor

    from ptdpo.models.processor import Qwen3VLImageProcessor

    tiny_processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, Qwen3VLImageProcessor)
    assert loaded.image_processor.patch_size == 16 and loaded.image_processor.merge_size == 2
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.chat_template == tiny_processor.chat_template
    kw = dict(text=[f"{VISION}hi"], images=[make_image(96, 64)], return_tensors="pt")
    a, b = tiny_processor(**kw), loaded(**kw)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


def test_pixel_limits_are_configurable(make_image):
    from ptdpo.models.processor import build_processor, pixel_limits, set_pixel_limits

    p = build_processor(min_pixels=64 * 64, max_pixels=64 * 64)
    assert pixel_limits(p) == (4096, 4096)
    out = p(text=[f"{VISION}x"], images=[make_image(112, 112)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    set_pixel_limits(p, max_pixels=256 * 256)
    out = p(text=[f"{VISION}x"], images=[make_image(256, 256)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 16, 16]]


def test_processor_rejects_videos(tiny_processor):
    with pytest.raises(ValueError, match="images only"):
        tiny_processor(text=["x"], videos=[[1]])


def test_stock_qwen3vl_folder_loads_without_torchvision(tiny_processor, make_image, tmp_path):
    """A folder naming the stock Qwen3VLProcessor (which needs a torchvision video processor) still
    gives a full processor: the stock one where torchvision exists, else the image-only fallback."""
    import json

    from ptdpo.models.loading import load_processor

    tiny_processor.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    cfg["processor_class"] = "Qwen3VLProcessor"
    cfg["video_processor"] = {"video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 16}
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tok_cfg["processor_class"] = "Qwen3VLProcessor"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    loaded = load_processor(str(tmp_path))
    assert loaded.image_processor.patch_size == 16 and loaded.tokenizer is not None
    out = loaded(text=[f"{VISION}x"], images=[make_image(64, 64)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
