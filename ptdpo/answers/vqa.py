"""VQA-style answer matching (``answer_type="vqa"``): short word answers said the way people say them.

A VQA gold answer is a word or two (``yes``, ``circle``, ``red``, ``2``); models answer in sentences.
:func:`vqa_match` accepts a prediction when, after :func:`vqa_words`, it says the gold answer and
nothing else:

- a yes/no gold answer matches a prediction that *starts* with that word ("Yes, there is." is ``yes``;
  "No, it is not." is ``no``); a prediction that starts with the other word, or with neither, does not;
- phrases that only frame the answer go ("it is", "there are", "this is", "the answer is", "I think" in
  front, "of them", "in the picture" behind), and articles and punctuation (``normalize_text``);
- plural and singular forms are one word ("circles" is "circle", "boxes" is "box", "berries" is
  "berry"); a short synonym table maps spellings and near-synonyms onto one word (``gray``/``grey``,
  ``sphere``/``ball``, ``rectangle``/``oblong``; :data:`SYNONYMS`);
- number words are numbers ("two" is ``2``).

It is stricter than substring search on purpose: "not red" is not "red", "red and blue" is not "red".
"""

from __future__ import annotations

import re

from ptdpo.answers.normalize import normalize_text
from ptdpo.answers.words import NUMBER_WORDS

__all__ = ["SYNONYMS", "singular", "vqa_match", "vqa_words"]

YES_NO = ("yes", "no")
# Words that mean "yes" or "no" at the start of an answer.
_YES_NO_WORDS = {"yes": "yes", "yeah": "yes", "yep": "yes", "correct": "yes", "true": "yes",
                 "no": "no", "nope": "no", "false": "no", "incorrect": "no"}
# Framing in front of the answer ("It is a circle." says "circle"), as normalize_text leaves it (no
# articles, no punctuation), longest first.
_LEADS = sorted([
    "answer is", "answer", "i think it is", "i think", "i believe it is", "it looks like", "it is", "it s",
    "its", "this is", "that is", "these are", "those are", "they are", "there is", "there are", "there s",
    "shape is", "color is", "colour is", "object is",
], key=lambda s: -len(s.split()))
# Framing after the answer ("3 of them", "red in the picture").
_TAILS = sorted(["of them", "in total", "in all", "in image", "in picture", "in photo", "here", "there"],
                key=lambda s: -len(s.split()))
# Several spellings or near-synonyms of one answer word -> that word.
SYNONYMS = {
    "grey": "gray", "colour": "color", "ball": "sphere", "globe": "sphere", "oblong": "rectangle",
    "circular": "circle", "round": "circle", "triangular": "triangle", "rectangular": "rectangle",
    "tv": "television",
    "cellphone": "phone", "cell phone": "phone", "mobile phone": "phone", "telephone": "phone",
    "aeroplane": "airplane", "plane": "airplane", "bike": "bicycle", "automobile": "car", "kitty": "cat",
    "puppy": "dog", "none": "0", "zero": "0",
}
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
              "teeth": "tooth", "mice": "mouse", "geese": "goose", "leaves": "leaf", "knives": "knife",
              "wolves": "wolf", "shelves": "shelf", "sheep": "sheep", "fish": "fish", "glasses": "glasses"}
# Words ending in s that are not plurals.
_NOT_PLURAL = {"yes", "bus", "gas", "glass", "grass", "class", "cross", "chess", "dress", "this", "is", "was",
               "has", "his", "its", "plus", "minus", "always", "less", "lens", "series", "species", "news",
               "physics", "analysis", "canvas", "atlas", "iris", "status", "virus", "cactus", "octopus",
               "radius", "circus", "tennis", "us", "as", "thus", "christmas", "jeans", "pants", "scissors"}


def singular(word: str) -> str:
    """The singular of a (regular or common irregular) English plural; other words unchanged."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 3 or w in _NOT_PLURAL or not w.endswith("s") or w.endswith("ss") or w.isdigit():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if re.search(r"(?:ch|sh|x|z|ss)es$", w) or w.endswith("oes"):
        return w[:-2]
    return w[:-1]


def _canonical(word: str) -> str:
    w = SYNONYMS.get(word, word)
    if w in NUMBER_WORDS:
        return str(NUMBER_WORDS[w])
    w = singular(w)
    return SYNONYMS.get(w, w)


def _strip_frame(words: list[str]) -> list[str]:
    changed = True
    while changed and words:
        changed = False
        for lead in _LEADS:
            n = len(lead.split())
            if words[:n] == lead.split() and len(words) > n:
                words, changed = words[n:], True
                break
        for tail in _TAILS:
            n = len(tail.split())
            if words[-n:] == tail.split() and len(words) > n:
                words, changed = words[:-n], True
                break
    return words


def vqa_words(text: str) -> list[str]:
    """The answer's words, canonical: framing phrases, articles and punctuation gone, plurals singular,
    synonyms and number words mapped (``"It is a circle."`` -> ``["circle"]``)."""
    words = normalize_text(text).split()
    words = _strip_frame(words)
    joined = " ".join(words)
    for phrase, word in SYNONYMS.items():  # multi-word synonyms ("cell phone") before splitting
        if " " in phrase:
            joined = re.sub(rf"\b{re.escape(phrase)}\b", word, joined)
    return [_canonical(w) for w in joined.split()]


def vqa_match(pred: str, gold: str) -> tuple[bool, str]:
    """(correct?, reason) for a VQA answer; reasons ``vqa_yes_no``, ``vqa_exact``, ``vqa_normalised`` for
    a match, ``mismatch`` or ``no_answer`` otherwise."""
    gold_words = vqa_words(gold)
    pred_words = normalize_text(pred).split()
    if not pred_words:
        return False, "no_answer"
    if len(gold_words) == 1 and gold_words[0] in YES_NO:
        said = _YES_NO_WORDS.get(pred_words[0])
        return (True, "vqa_yes_no") if said == gold_words[0] else (False, "mismatch")
    if normalize_text(pred) == normalize_text(gold):
        return True, "vqa_exact"
    canon = vqa_words(pred)
    return (True, "vqa_normalised") if canon and canon == gold_words else (False, "mismatch")
