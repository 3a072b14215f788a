"""Finding the final answer in a model output.

:func:`extract_answer`: the first rule that finds something wins:

1. the last complete ``<answer>...</answer>`` block (if it holds a ``\\boxed{}``, the last box inside it);
   an ``<answer>`` left open at the end of the text (a truncated output) is used when no block is complete;
2. the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) anywhere in the text, nested braces included;
3. the last line of the form ``Answer: ...`` / ``Final answer: ...`` (markdown emphasis allowed);
4. with ``allow_bare=True`` (the default): what follows the last ``</think>`` (or the whole text when there
   is no think block), when it is one short line without tags (a model answering just ``B`` or ``12``;
   EasyR1's r1v reward likewise grades the whole response when it has no answer tags).

Trailing chat special tokens (``<|im_end|>``, ``<|endoftext|>``...) are stripped first, and only the last
``MAX_TEXT_CHARS`` of a longer output are searched. Nothing here raises on model output.

:func:`extract_boxed` is the strict rule of the paper's ``boxed`` prompt (EasyR1's and PAPO-Eval's
accuracy, ``mathruler``'s ``extract_boxed_content``): the content of the LAST ``\\boxed{`` in the text,
wherever it is (inside the think block too), or nothing when that box is not closed; no other rule.
"""

from __future__ import annotations

import re
from typing import Any

from ptdpo.answers.normalize import as_text

__all__ = ["MAX_BARE_CHARS", "MAX_TEXT_CHARS", "SPECIAL_TOKENS", "clean_answer", "extract", "extract_answer",
           "extract_boxed", "strip_special_tokens"]

MAX_TEXT_CHARS = 200_000  # longer outputs: only the tail is searched for an answer
MAX_BARE_CHARS = 64  # rule 4: a bare answer is one line at most this long
SPECIAL_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def _matching_braces(text: str) -> dict[int, int]:
    """Map each '{' index to its matching '}' index, in one linear pass; ``\\{`` and ``\\}`` are literals."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` (and ``\\boxed 5``), in text order."""
    out: list[str] = []
    pairs: dict[int, int] | None = None
    for m in _BOXED_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            if pairs is None:
                pairs = _matching_braces(text)
            j = pairs.get(i)
            if j is not None:
                out.append(text[i + 1 : j])
        elif m.group(0).endswith((" ", "\t")):
            tok = re.match(r"[^\s$\\{}]+", text[i:])
            if tok:
                out.append(tok.group(0))
    return out


def _last_answer_block(text: str) -> tuple[str | None, bool]:
    """(content of the last complete <answer> block, or of a trailing unclosed one; closed?)"""
    low = text.lower()
    close = low.rfind("</answer>")
    if close >= 0:
        open_ = low.rfind("<answer>", 0, close)
        if open_ >= 0:
            return text[open_ + len("<answer>") : close], True
    open_ = low.rfind("<answer>")
    if open_ >= 0 and open_ > close:
        return text[open_ + len("<answer>") :], False
    return None, False


_ANSWER_LINE_RE = re.compile(
    r"^[\s>#*_\-]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[*_]*\s*[:：]\s*[*_]*\s*(?P<ans>.*?)\s*$",
    re.IGNORECASE,
)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`"))


def clean_answer(s: str | None) -> str | None:
    """Strip math delimiters, markdown emphasis, a trailing full stop and an 'Answer:' prefix."""
    if s is None:
        return None
    s = s.strip()
    for _ in range(3):
        before = s
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        m = _ANSWER_LINE_RE.match(s) if "\n" not in s else None
        if m and m.group("ans"):
            s = m.group("ans").strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        if s == before:
            break
    return s or None


def _after_think(text: str) -> str:
    k = text.rfind("</think>")
    return text[k + len("</think>") :] if k >= 0 else text


def strip_special_tokens(text: str) -> str:
    """The text without trailing chat special tokens (``<|im_end|>``...) and trailing whitespace."""
    t = text.rstrip()
    changed = True
    while changed:
        changed = False
        for tok in SPECIAL_TOKENS:
            if t.endswith(tok):
                t = t[: -len(tok)].rstrip()
                changed = True
    return t


def extract_answer(text: Any, allow_bare: bool = True) -> str | None:
    """The final answer in a model output, or None (see the module docstring for the rules)."""
    try:
        return extract(text, allow_bare)[0]
    except Exception:  # noqa: BLE001 - never raise on model output
        return None


def extract(text: Any, allow_bare: bool = True) -> tuple[str | None, str]:
    """(answer, how) where how is answer_tag | answer_tag_unclosed | boxed | answer_line | bare | none."""
    t = strip_special_tokens(as_text(text))
    if len(t) > MAX_TEXT_CHARS:
        t = t[-MAX_TEXT_CHARS:]
    if not t.strip():
        return None, "none"
    block, closed = _last_answer_block(t)
    if block is not None:
        boxes = _boxed_contents(block)
        ans = clean_answer(boxes[-1] if boxes else block)
        if ans is not None:
            return ans, "answer_tag" if closed else "answer_tag_unclosed"
    boxes = _boxed_contents(t)
    for b in reversed(boxes):
        ans = clean_answer(b)
        if ans is not None:
            return ans, "boxed"
    lines = t.splitlines()
    for line in reversed(lines[-200:]):
        if len(line) > 2000:
            continue
        m = _ANSWER_LINE_RE.match(line)
        if m:
            ans = clean_answer(m.group("ans"))
            if ans is not None:
                return ans, "answer_line"
    if allow_bare:
        tail = _after_think(t).strip()
        bare_ok = (
            "\n" not in tail and len(tail) <= MAX_BARE_CHARS and "<" not in tail and "\\boxed" not in tail
        )
        if tail and bare_ok:
            ans = clean_answer(tail)
            if ans is not None:
                return ans, "bare"
    return None, "none"


_BOX_OPEN = "\\boxed{"


def extract_boxed(text: Any) -> tuple[str | None, str]:
    """(answer, how) by the paper's rule: the last ``\\boxed{...}`` of the output (how = ``boxed``), or
    (None, ``unclosed_box``) when the last box never closes, or (None, ``none``) without a box. An earlier
    complete box does not stand in for an unclosed last one (as in EasyR1 / PAPO-Eval); escaped braces
    ``\\{ \\}`` inside the box are literals."""
    t = strip_special_tokens(as_text(text))
    if len(t) > MAX_TEXT_CHARS:
        t = t[-MAX_TEXT_CHARS:]
    start = t.rfind(_BOX_OPEN)
    if start < 0:
        return None, "none"
    open_brace = start + len(_BOX_OPEN) - 1
    close = _matching_braces(t[open_brace:]).get(0)
    if close is None:
        return None, "unclosed_box"
    ans = clean_answer(t[open_brace + 1 : open_brace + close])
    return (ans, "boxed") if ans is not None else (None, "empty_box")
