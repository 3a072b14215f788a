"""Normalising answers before they are compared: free text, option text, light math clean-up, number words.

``normalize_text`` is for free text and option text (case, NFKC, LaTeX text wrappers, punctuation and
articles go; numbers such as ``-3.5`` are kept whole). ``light_normalize`` is for mathematical answers,
where case and punctuation carry meaning: only delimiters, text wrappers, spacing commands and spaces go.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ptdpo.answers.words import NUMBER_WORDS

__all__ = ["as_text", "light_normalize", "looks_mathy", "normalize_text", "number_word", "strip_latex_text"]

_ARTICLES = {"a", "an", "the"}
_PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)
# "the answer is ...", "final answer: ..." in front of an answer
ANSWER_PREFIX_RE = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|result)\s*(?:is|:)\s*", re.IGNORECASE)
_NUM_TOKEN_RE = re.compile(r"-?\d+(?:[.,/]\d+)*")
TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_MATHY_RE = re.compile(r"[\d\\+\-*/^=<>()\[\]{}√π∞°%]")


def as_text(text: Any) -> str:
    """Coerce anything a generator might hand over into a string (None, bytes, numbers); never raises."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray):
        return bytes(text).decode("utf-8", errors="replace")
    try:
        return str(text)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not crash the reward
        return ""


def strip_latex_text(s: str) -> str:
    """``\\text{cube}`` -> ``cube`` (nested up to three deep), stripped."""
    for _ in range(3):
        s2 = TEXT_CMD_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    return s.strip()


def normalize_text(s: Any) -> str:
    """Lower case, NFKC, no LaTeX text wrappers, no punctuation (numbers such as ``-3.5`` kept whole), no
    articles, single spaces. For free-text and option-text comparison."""
    s = strip_latex_text(unicodedata.normalize("NFKC", as_text(s)))
    s = ANSWER_PREFIX_RE.sub("", s.replace("$", " ").strip()).lower()
    parts: list[str] = []
    pos = 0
    for m in _NUM_TOKEN_RE.finditer(s):
        parts.append(_PUNCT_RE.sub(" ", s[pos : m.start()]))
        parts.append(" " + m.group(0) + " ")
        pos = m.end()
    parts.append(_PUNCT_RE.sub(" ", s[pos:]))
    return " ".join(w for w in "".join(parts).replace("_", " ").split() if w not in _ARTICLES)


def light_normalize(s: str) -> str:
    """For mathematical answers: only delimiters, text wrappers, spacing commands and spaces removed."""
    s = strip_latex_text(unicodedata.normalize("NFKC", s))
    s = re.sub(r"\\(?:left|right|displaystyle)|\\[,;!: ]|\$", "", s)
    return re.sub(r"\s+", "", s)


def looks_mathy(s: str) -> bool:
    """Does the answer hold a digit, a LaTeX command, an operator, a bracket or a math symbol?"""
    return bool(_MATHY_RE.search(s))


def number_word(s: Any) -> int | None:
    """The whole number a one-word answer spells (``"Three."`` -> 3, ``"forty"`` -> 40), else None."""
    words = normalize_text(s).split()
    if len(words) == 1 and words[0] in NUMBER_WORDS:
        return NUMBER_WORDS[words[0]]
    return None
