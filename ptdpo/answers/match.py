"""Is a model's answer the gold answer? Math-aware matching, used by the reward and by evaluation.

:func:`match_answer`, in this order:

- multiple choice (``choices`` given, ``answer_type="choice"``, or a gold answer made of option letters
  such as ``B`` or ``A, C``): the gold answer is resolved to its option(s) by
  :func:`ptdpo.answers.choices.gold_choice` (a letter, or an option's text as in MathVista: ``cube``,
  ``The cube``); the prediction may be ``B``, ``(B)``, ``B.``, ``B) text``, ``Option B``, ``\\text{B}``,
  the option's text, or a value math-equivalent to exactly one option's text;
- normalised string equality (case, punctuation, articles, ``\\text{}`` wrappers, "the answer is" prefixes);
- for mathematical gold answers (``answer_type`` ``number``/``expression``, or an ``auto`` gold answer with
  a digit, a LaTeX command or an operator): math-verify equivalence (fractions vs decimals, ``\\frac``,
  ``\\dfrac``, ``\\sqrt``, percentages, thousands separators, ``^\\circ``, units such as ``cm``), then two
  rounding rules: with ``precision=p`` (MathVista's per-item field) both values agree to ``p`` decimals;
  a decimal prediction with d >= 2 places matches an exact gold value that rounds to it (``1.41`` for
  ``\\sqrt{2}``, ``0.33`` for ``1/3``), and an exact prediction matches a gold decimal with d >= 2 places
  it rounds to (``\\pi`` for ``3.14``); a decimal prediction against a decimal gold gets no tolerance
  (``1.414`` is not ``1.41`` unless the item gives ``precision=2``);
- VQA (``answer_type="vqa"``): short word answers said in a sentence ("Yes, there is." for ``yes``, "It
  is a circle." for ``circle``), plurals, a few synonyms (:mod:`ptdpo.answers.vqa`);
- free text (``answer_type="text"`` or a non-mathematical gold such as ``yes`` or ``red``): the normalised
  string equality above only (plus number words: ``three`` matches ``3``). Words never go through
  math-verify, where ``red`` and ``der`` parse to the same product of symbols.

The math comparison runs in :mod:`ptdpo.answers.judge` (worker processes, a deadline per comparison).
Nothing here raises on model output: garbage does not match, with a reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ptdpo.answers.choices import gold_choice, predicted_choice
from ptdpo.answers.extract import clean_answer
from ptdpo.answers.judge import DEFAULT_TIMEOUT_S, math_equal
from ptdpo.answers.normalize import as_text, light_normalize, looks_mathy, normalize_text, number_word
from ptdpo.answers.vqa import vqa_match

__all__ = ["ANSWER_TYPES", "answers_match", "match_answer"]

ANSWER_TYPES = ("auto", "number", "expression", "choice", "text", "vqa")


def match_answer(
    pred: Any,
    gold: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[bool, str]:
    """(correct?, reason). Reasons for a match: exact, math_equal, rounded, rounded_to_precision,
    choice_letter, choice_text, choice_math, number_word, vqa_yes_no, vqa_exact, vqa_normalised; otherwise: no_answer, empty_gold, mismatch,
    wrong_choice, choice_unresolved, unparsable, gold_unparsable, unsafe_expression, answer_too_long,
    timeout, worker_crashed, error:<type>."""
    try:
        return _match(pred, gold, choices, answer_type, precision, timeout_s)
    except Exception as e:  # noqa: BLE001 - never raise on model output
        return False, f"error:{type(e).__name__}"


def answers_match(
    pred: Any,
    gold: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Is the extracted answer ``pred`` equivalent to the gold answer? See :func:`match_answer`."""
    return match_answer(
        pred, gold, choices, answer_type=answer_type, precision=precision, timeout_s=timeout_s
    )[0]


def _precision(precision: Any) -> int | None:
    if precision is None or (isinstance(precision, float) and math.isnan(precision)):
        return None
    try:
        return int(precision)
    except (TypeError, ValueError):
        return None


def _match(pred, gold, choices, answer_type, precision, timeout_s) -> tuple[bool, str]:
    answer_type = (answer_type or "auto").lower()
    if answer_type not in ANSWER_TYPES:
        answer_type = "auto"
    pred_s = clean_answer(as_text(pred)) if pred is not None else None
    if pred_s is None:
        return False, "no_answer"
    gold_s = as_text(gold).strip()
    if not gold_s:
        return False, "empty_gold"
    choices = [as_text(c) for c in choices] if choices else None
    precision = _precision(precision)

    # multiple choice
    if answer_type == "choice" or choices or (answer_type == "auto" and gold_choice(gold_s, None)):
        gold_options = gold_choice(gold_s, choices)
        if gold_options:
            pred_options, how = predicted_choice(pred_s, choices, timeout_s)
            if pred_options is None:
                return False, how
            return (True, how) if pred_options == gold_options else (False, "wrong_choice")
        if answer_type == "choice":
            return False, "choice_unresolved"

    if answer_type == "vqa":
        return vqa_match(pred_s, gold_s)
    # free text: normalised strings only
    if re.fullmatch(r"-?\d+", gold_s):
        w = number_word(pred_s)
        if w is not None:
            return (True, "number_word") if w == int(gold_s) else (False, "mismatch")
    if answer_type == "text" or (answer_type in ("auto", "choice") and not looks_mathy(gold_s)):
        np_ = normalize_text(pred_s)
        return (True, "exact") if np_ and np_ == normalize_text(gold_s) else (False, "mismatch")

    # mathematics
    if light_normalize(pred_s) == light_normalize(gold_s):
        return True, "exact"
    numeric_gold = re.search(r"\d", gold_s) and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", gold_s))
    if numeric_gold and not re.search(r"[\d\\π∞]", pred_s):
        return False, "mismatch"  # a gold without variables; a prediction without digits, commands, constants
    eq, how = math_equal(gold_s, pred_s, precision, timeout_s)
    if eq is None:
        return False, "timeout"
    return bool(eq), how
