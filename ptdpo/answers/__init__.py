"""Answers, in one place: the words they are made of, finding them in a model output, normalising them,
which option they name, and whether two of them are equal (math-verify, with a deadline).

Used alike by the reward (``ptdpo.rewards``), evaluation (``ptdpo.eval``), the spoiler audit
(``ptdpo.hints.audit``), item loading and validation (``ptdpo.data``) and the prompts.

- :mod:`~ptdpo.answers.words`: ``CHOICE_LETTERS`` and the number-word tables;
- :mod:`~ptdpo.answers.extract`: the final answer in a model output;
- :mod:`~ptdpo.answers.normalize`: free-text and light math normalisation, number words;
- :mod:`~ptdpo.answers.choices`: which option(s) an answer names (letter, letter set, index, option text);
- :mod:`~ptdpo.answers.judge`: math-verify in killable worker processes, ``math_equal`` / ``math_value``;
- :mod:`~ptdpo.answers.match`: ``match_answer``, math-aware matching of a prediction and a gold answer.
"""

from ptdpo.answers.choices import (
    ANSWER_FORMATS,
    choice_letter,
    gold_choice,
    letter_choice,
    option_hits,
    predicted_choice,
    text_choice,
)
from ptdpo.answers.extract import clean_answer, extract, extract_answer, strip_special_tokens
from ptdpo.answers.judge import (
    DEFAULT_TIMEOUT_S,
    evaluate,
    math_equal,
    math_value,
    set_math_backend,
    shutdown_math_workers,
)
from ptdpo.answers.match import ANSWER_TYPES, answers_match, match_answer
from ptdpo.answers.normalize import as_text, light_normalize, looks_mathy, normalize_text, number_word
from ptdpo.answers.words import (
    CHOICE_LETTERS,
    DENOMINATORS,
    NUMBER_WORDS,
    QUANTITY_WORDS,
    SCALES,
    TENS,
    UNITS,
)

__all__ = [
    "ANSWER_FORMATS",
    "ANSWER_TYPES",
    "CHOICE_LETTERS",
    "DEFAULT_TIMEOUT_S",
    "DENOMINATORS",
    "NUMBER_WORDS",
    "QUANTITY_WORDS",
    "SCALES",
    "TENS",
    "UNITS",
    "answers_match",
    "as_text",
    "choice_letter",
    "clean_answer",
    "evaluate",
    "extract",
    "extract_answer",
    "gold_choice",
    "letter_choice",
    "light_normalize",
    "looks_mathy",
    "match_answer",
    "math_equal",
    "math_value",
    "normalize_text",
    "number_word",
    "option_hits",
    "predicted_choice",
    "set_math_backend",
    "shutdown_math_workers",
    "strip_special_tokens",
    "text_choice",
]
