"""Answers, in one place: the words they are made of (option letters, number words)."""

from ptdpo.answers.words import (
    CHOICE_LETTERS,
    DENOMINATORS,
    NUMBER_WORDS,
    QUANTITY_WORDS,
    SCALES,
    TENS,
    UNITS,
)

__all__ = ["CHOICE_LETTERS", "DENOMINATORS", "NUMBER_WORDS", "QUANTITY_WORDS", "SCALES", "TENS", "UNITS"]
