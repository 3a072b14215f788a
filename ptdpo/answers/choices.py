"""Which option an answer names: one resolution for loaders, item fields, rewards, the audit and benchmarks.

Options are numbered from 0; the letter of option ``i`` is ``CHOICE_LETTERS[i]``. An answer names an option
(or a set of options) in one of these forms:

- a letter: ``B``, ``(B)``, ``B.``, ``B)``, ``Option B``, ``answer: B``, ``\\text{B}``;
- a letter with the option's text after it: ``B) cube``, ``(B) cube``, ``B. cube``, ``Option B cube``;
- a set of letters: ``A, C``, ``A and C``, ``(A) (C)``;
- the option's text, exactly or up to case, articles and punctuation: ``cube``, ``The cube``, ``Cube.``;
- an index (0-based), only when a dataset says its answers are indices (``answer_format="index"``).

:func:`gold_choice` reads a gold answer, :func:`predicted_choice` a model's answer (which may also be a
value math-equal to exactly one option's text, ``0.5`` for ``\\frac{1}{2}``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ptdpo.answers.judge import DEFAULT_TIMEOUT_S, math_equal
from ptdpo.answers.normalize import ANSWER_PREFIX_RE, as_text, looks_mathy, normalize_text, strip_latex_text
from ptdpo.answers.words import CHOICE_LETTERS

__all__ = [
    "ANSWER_FORMATS",
    "choice_letter",
    "gold_choice",
    "letter_choice",
    "option_hits",
    "predicted_choice",
    "text_choice",
]

# How a dataset gives the answer of a multiple-choice row (``DatasetSpec.answer_format``).
ANSWER_FORMATS = ("auto", "letter", "text", "index")

_BARE_FORMS = (
    re.compile(r"^\(?([A-Za-z])\)?[.:)]?$"),  # B, (B), B., B)
    re.compile(r"^(?:option|choice|answer)\s*[:.]?\s*\(?([A-Za-z])\)?[.:)]?$", re.IGNORECASE),  # Option B
)
_LABELLED_FORMS = (
    re.compile(r"^\(([A-Za-z])\)\s*.+$"),  # (B) cube
    re.compile(r"^([A-Z])[.:)]\s+.+$"),  # B) cube, B. cube
    re.compile(r"^(?:option|choice)\s*\(?([A-Za-z])\)?[.:)]?\s+.+$", re.IGNORECASE),  # Option B cube
)
_LETTER_SET_RE = re.compile(r"^\(?[A-Z]\)?(?:\s*(?:,|;|&|and|\s)\s*\(?[A-Z]\)?)+$")


def choice_letter(index: int) -> str:
    """The letter of option ``index`` (0 -> ``A``)."""
    if not 0 <= index < len(CHOICE_LETTERS):
        raise ValueError(f"option index must lie in 0..{len(CHOICE_LETTERS) - 1}, got {index}")
    return CHOICE_LETTERS[index]


def letter_choice(
    text: Any, n_choices: int | None = None, *, strict_case: bool = False, labelled: bool = True
) -> frozenset[int] | None:
    """The option(s) a letter form names, as indices, or None. ``strict_case`` refuses a bare lower-case
    letter (``a`` is more likely a word than option A); ``labelled=False`` refuses a letter followed by
    text (``B) cube``). Letters past ``n_choices`` name nothing."""
    s = ANSWER_PREFIX_RE.sub("", strip_latex_text(as_text(text))).strip().rstrip(".").strip()
    if not s:
        return None
    valid = CHOICE_LETTERS[:n_choices] if n_choices else CHOICE_LETTERS
    forms = _BARE_FORMS + _LABELLED_FORMS if labelled else _BARE_FORMS
    for i, form in enumerate(forms):
        m = form.match(s)
        if m:
            letter = m.group(1)
            if strict_case and i == 0 and letter.islower():
                return None
            letter = letter.upper()
            return frozenset({valid.index(letter)}) if letter in valid else None
    if _LETTER_SET_RE.match(s):
        letters = set(re.findall(r"[A-Z]", s.replace("and", " ")))
        if letters and all(c in valid for c in letters):
            return frozenset(valid.index(c) for c in letters)
    return None


def option_hits(text: Any, choices: Sequence[Any]) -> list[int]:
    """Indices of the options whose text is ``text``: exact matches if any, else matches up to case, else
    matches after :func:`normalize_text` (articles, punctuation, LaTeX text wrappers)."""
    t = as_text(text).strip()
    opts = [as_text(c).strip() for c in choices]
    if not t:
        return []
    for same in (lambda a, b: a == b, lambda a, b: a.casefold() == b.casefold()):
        hits = [i for i, c in enumerate(opts) if same(c, t)]
        if hits:
            return hits
    norm = normalize_text(t)
    return [i for i, c in enumerate(opts) if norm and normalize_text(c) == norm]


def text_choice(text: Any, choices: Sequence[Any]) -> int | None:
    """The one option whose text ``text`` is (see :func:`option_hits`), or None (none or several)."""
    hits = option_hits(text, choices)
    return hits[0] if len(hits) == 1 else None


def _index_choice(answer: str, n_choices: int) -> frozenset[int] | None:
    try:
        x = float(answer)
    except ValueError:
        return None
    if not math.isfinite(x) or not x.is_integer() or not 0 <= x < n_choices:
        return None
    return frozenset({int(x)})


def gold_choice(answer: Any, choices: Sequence[Any] | None, answer_format: str = "auto") -> frozenset[int] | None:
    """The option(s) a gold answer names, as indices, or None when it names none.

    ``auto``: a bare upper-case letter form (``B``, ``(B)``, ``Option B``, ``A, C``) first, then an
    option's text (``cube``, ``The cube``), then a letter form that is neither (``b``, ``B) cube``).
    Without ``choices`` only upper-case letter forms count (``a`` stays a word). ``letter``, ``text`` and
    ``index`` accept only that form."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    s = as_text(answer).strip()
    if not choices:
        return letter_choice(s, None, strict_case=True) if answer_format in ("auto", "letter") else None
    n = len(choices)
    if answer_format == "index":
        return _index_choice(s, n)
    if answer_format == "letter":
        return letter_choice(s, n)
    if answer_format == "auto":
        bare = letter_choice(s, n, strict_case=True, labelled=False)
        if bare is not None:
            return bare
    idx = text_choice(s, choices)
    if idx is not None:
        return frozenset({idx})
    return letter_choice(s, n) if answer_format == "auto" else None


def predicted_choice(
    pred: Any, choices: Sequence[Any] | None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[frozenset[int] | None, str]:
    """(the option(s) a model's answer names, how): how is ``choice_letter`` (a letter form, any case),
    ``choice_text`` (an option's text) or ``choice_math`` (a value math-equal to exactly one option's
    text); (None, ``choice_unresolved``) otherwise. Without ``choices`` only letters count."""
    s = as_text(pred).strip()
    n = len(choices) if choices else None
    bare = letter_choice(s, n, labelled=False)
    if bare is not None:
        return bare, "choice_letter"
    if choices:
        idx = text_choice(s, choices)
        if idx is not None:
            return frozenset({idx}), "choice_text"
    labelled = letter_choice(s, n)
    if labelled is not None:
        return labelled, "choice_letter"
    if choices:
        idx = _math_choice(s, choices, timeout_s)
        if idx is not None:
            return frozenset({idx}), "choice_math"
    return None, "choice_unresolved"


def _math_choice(text: str, choices: Sequence[Any], timeout_s: float) -> int | None:
    """The one option whose (mathematical) text is math-equal to ``text``."""
    mathy = [i for i, c in enumerate(choices) if looks_mathy(as_text(c))]
    if not mathy or not looks_mathy(text):
        return None
    hits = [i for i in mathy if math_equal(as_text(choices[i]), text, None, timeout_s)[0] is True]
    return hits[0] if len(hits) == 1 else None
