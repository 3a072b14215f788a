"""A small Qwen-style byte-level BPE tokenizer, trained locally on a fixed corpus.

``build_tokenizer()`` trains a byte-level BPE (the same normalizer, pre-tokenizer regex and decoder
as Qwen2/Qwen3) on ``assets/corpus.txt``, appends the Qwen special tokens after the learned vocab
(in Qwen's order, as Qwen does at ids 151643+), adds ``<think>``/``</think>`` as non-special added
tokens (as Qwen3 does, so ``skip_special_tokens=True`` keeps them), and wraps the result as a
transformers ``Qwen2Tokenizer`` with ``padding_side="left"``, pad ``<|endoftext|>``, eos
``<|im_end|>`` and a Qwen-VL style chat template.

Training is deterministic: two builds (also in two processes) serialize to byte-identical
``tokenizer.json`` text. Training only needs the ``tokenizers`` package; transformers is imported when
the wrapper is built.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

CORPUS_PATH = Path(__file__).parent / "assets" / "corpus.txt"
DEFAULT_VOCAB_SIZE = 3000  # BPE target; the fixed corpus yields about 2.5k learned tokens

# Qwen2/Qwen3 pre-tokenizer regex (same as transformers.models.qwen2.tokenization_qwen2).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"

# Special tokens in Qwen's order (ids follow the learned vocab, as Qwen's 151643.. do).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added, non-special tokens (kept by decode(skip_special_tokens=True)), as in Qwen3.
ADDED_TOKENS = ["<think>", "</think>"]
# Tokens a policy must never sample: they would make the next forward look for image features.
VISION_SPECIAL_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-VL style chat template. ``content`` is a string or a list of parts: {"type": "image"} (also
# {"image": ...} / {"image_url": ...}), {"type": "video"}, {"type": "text", "text": ...}. An image renders
# as <|vision_start|><|image_pad|><|vision_end|>; the processor expands <|image_pad|> to the image's
# token count. ``add_generation_prompt`` opens the assistant turn; ``enable_thinking=true`` then also
# opens "<think>\n" (Qwen3-VL-Thinking style). Default: no thinking prefix.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def train_bpe_json(corpus_path: str | Path = CORPUS_PATH, vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
    """Train the byte-level BPE on the corpus and return the serialized ``tokenizers`` JSON.

    Uncached and pure: the same corpus and vocab size give the same string in any process.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    text = Path(corpus_path).read_text(encoding="utf-8")
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=4)
def _cached_bpe_json(corpus_path: str, vocab_size: int) -> str:
    return train_bpe_json(corpus_path, vocab_size)


def build_tokenizer(
    corpus_path: str | Path = CORPUS_PATH,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    use_cache: bool = True,
) -> PreTrainedTokenizerBase:
    """The tiny Qwen-style tokenizer (a transformers ``Qwen2Tokenizer``), a fresh instance per call.

    ``use_cache`` reuses the trained BPE of an earlier call in this process (training takes ~0.3 s).
    """
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    raw = (
        _cached_bpe_json(str(corpus_path), vocab_size)
        if use_cache
        else train_bpe_json(corpus_path, vocab_size)
    )
    model = json.loads(raw)["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for tok in SPECIAL_TOKENS + ADDED_TOKENS:
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    # Qwen3VLProcessor reads these attributes when present.
    tokenizer.padding_side = "left"
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS + ADDED_TOKENS)
    expected = list(range(len(vocab) - len(ids), len(vocab)))
    if ids != expected or len(tokenizer) != len(vocab):
        raise RuntimeError(f"special token ids {ids} differ from the expected {expected}")
    return tokenizer


def tokenizer_json(tokenizer) -> str:
    """The serialized fast tokenizer (what ``tokenizer.json`` holds): the determinism fingerprint."""
    return tokenizer.backend_tokenizer.to_str()


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the multimodal/chat special tokens the model config must agree with."""
    return {
        "pad_token_id": tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        "eos_token_id": tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "video_token_id": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids(VISION_START_TOKEN),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids(VISION_END_TOKEN),
    }


def vision_special_token_ids(tokenizer) -> list[int]:
    """Ids to suppress during sampling (those the tokenizer knows)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for t in VISION_SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != unk and i is not None:
            ids.append(i)
    return ids
