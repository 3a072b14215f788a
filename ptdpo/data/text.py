"""Question text as data sets write it and as the chat needs it.

Several sets mark where an image goes with a literal ``<image>`` (ViRL39K prefixes every question with
one; some benchmarks number them, ``<image 2>``). ptdpo puts images into the chat as image parts
(:func:`ptdpo.prompts.build_messages`), so a literal placeholder would reach the model as text: the
training loader (``strip_image_tokens`` in a dataset spec) and the benchmark transform of the same name
both remove it here.
"""

from __future__ import annotations

import re

IMAGE_TOKEN_RE = re.compile(r"<image(?:\s*_?\s*(\d+))?>", re.IGNORECASE)


def strip_image_tokens(text: str) -> str:
    """``text`` without ``<image>`` placeholders; a numbered one (``<image 3>``) becomes ``(image 3)`` so
    that a question naming several images stays readable. Text that is nothing but placeholders is
    returned as it was (an empty question would be worse than a stray token)."""
    out = IMAGE_TOKEN_RE.sub(lambda m: f"(image {m.group(1)})" if m.group(1) else "", text)
    out = re.sub(r"[ \t]{2,}", " ", out).strip()
    return out or text
