"""The words answers are made of, defined once: option letters and number words.

Everything that reads or writes an option letter (prompts, item validation, rewards, the spoiler audit,
benchmark transforms, synthetic scenes) and everything that reads a number word (answer matching, the
audit's number finder, the synthetic generator's "no number in a trap" check) uses these tables.
"""

from __future__ import annotations

CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
DENOMINATORS = {
    "half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fourths": 4,
    "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8,
    "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10, "twelfth": 12, "twelfths": 12,
    "hundredth": 100, "hundredths": 100,
}
# Single words that are a whole number by themselves ("seven", "forty").
NUMBER_WORDS = {**UNITS, **TENS}
# Words that state a quantity without being a number word ("twice", "a pair", "none").
QUANTITY_WORDS = ("once", "twice", "single", "double", "pair", "couple", "dozen", "none")
