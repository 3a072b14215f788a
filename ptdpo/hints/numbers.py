"""Finding the numbers a piece of hint text states, in any surface form, for the spoiler audit.

``find_mentions(text)`` returns every number the text *states as a quantity*: digits ("12", "12cm",
"1,200", "-3", "0.75"), fractions ("3/8", ``\\frac{3}{8}``, "⅜"), percentages ("37.5%", "50 percent"),
number words ("twelve", "twenty-one", "one hundred and five", "a dozen"), and word fractions ("a third",
"two thirds", "three quarters", "one and a half").

What is deliberately NOT a mention (documented choices, each tested):

- box coordinates: 4-number groups ``[120, 340, 210, 450]``, corner pairs ``(120,340),(210,450)``,
  Qwen box tokens ``<|box_start|>...<|box_end|>``, and a single pair after "at/near/around/point/
  coordinates" -- the teacher needs them and they are not answers;
- enumerations: "Step 2", "step #3", "Part 1", and a leading "2." / "2)" / "(2)" at the start of a step;
- exponents: "^2", "**2" (the 2 of "a^2 + b^2 = c^2");
- ordinals: "3rd", "third", "second" (positions such as "the 3rd bar", "first, ..."); ordinal words do
  count as denominators of a word fraction ("two thirds");
- "half" / "quarter" alone ("the left half of the image"); only "a half", "one half", "and a half",
  "a quarter", "one quarter" are values;
- "one" in idioms: "the one", "each one", "which one", "no one", "one of", "one another", "one by one".

Values are exact ``Fraction``s; a decimal literal remembers its number of decimals so that "0.33" and
1/3 compare equal at that precision (``values_match``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction

from ptdpo.answers.words import DENOMINATORS, NUMBER_WORDS, SCALES, TENS, UNITS

_ONE_IDIOM_BEFORE = {"the", "each", "which", "that", "this", "any", "every", "no", "another", "some", "a"}
_ONE_IDIOM_AFTER = {"of", "another", "by", "side", "hand", "way", "point", "day"}

# ---- spans that are never quantities ---------------------------------------------------------------
_COORD = r"\d{1,4}(?:\.\d+)?"
_BOX_TOKENS = re.compile(r"<\|box_start\|>.*?<\|box_end\|>|<\|[a-z_]+\|>", re.S)
_BOX4 = re.compile(rf"[\[(]\s*{_COORD}\s*,\s*{_COORD}\s*,\s*{_COORD}\s*,\s*{_COORD}\s*[\])]")
_PAIR = rf"\(\s*{_COORD}\s*,\s*{_COORD}\s*\)"
_CORNERS = re.compile(rf"{_PAIR}\s*(?:,|-|–|—|to|and)?\s*{_PAIR}")
_POINT = re.compile(
    rf"(?i)\b(?:at|near|around|point|coordinates?|position|corner|from|to|centre|center|pixel)\s*:?\s*({_PAIR})"
)
_ENUM_START = re.compile(r"(?im)^\s*(?:step\s*)?[(#]?\d{1,2}[.):](?=\s|$)")
_ENUM_WORD = re.compile(r"(?i)\b(?:step|steps|part|stage|phase|hint|item)\s*#?\s*\d{1,2}\b(?:\s*(?:and|,|-|–|to)\s*\d{1,2}\b)?")
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\d+\s*\}?")

# ---- quantities ------------------------------------------------------------------------------------
_LATEX_FRAC = re.compile(
    r"\\[dt]?frac\s*(?:\{\s*(-?\d+(?:\.\d+)?)\s*\}|(\d))\s*(?:\{\s*(-?\d+(?:\.\d+)?)\s*\}|(\d))"
)
_SLASH_FRAC = re.compile(r"(?<![\w./])(-?\d+)\s*/\s*(\d+)(?![\w/]|\.\d)")
_NUMBER = re.compile(r"(?<![\w.])([-−]?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?")
_PERCENT_AFTER = re.compile(r"\s*(?:%|\\%|percent\b|per cent\b|pct\b)", re.I)
_ORDINAL_AFTER = re.compile(r"(?:st|nd|rd|th)\b", re.I)
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Mention:
    """One stated quantity: ``value`` (exact), ``alts`` (other readings: "50%" is 1/2 and also 50),
    ``decimals`` (digits after the point of a decimal literal, else 0), the span and the kind."""

    value: Fraction
    text: str
    start: int
    end: int
    kind: str
    decimals: int = 0
    alts: tuple[Fraction, ...] = field(default=())

    def values(self) -> tuple[Fraction, ...]:
        return (self.value, *self.alts)


def exempt_spans(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` whose numbers are coordinates, enumerations or exponents."""
    spans: list[tuple[int, int]] = []
    for rx in (_BOX_TOKENS, _BOX4, _CORNERS, _ENUM_START, _ENUM_WORD, _EXPONENT):
        spans += [m.span() for m in rx.finditer(text)]
    spans += [m.span(1) for m in _POINT.finditer(text)]
    return spans


def mask(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the given spans blanked out (same length, so offsets stay valid)."""
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def _dec(s: str) -> tuple[Fraction, int]:
    s = s.replace(",", "")
    return Fraction(s), (len(s.split(".", 1)[1]) if "." in s else 0)


def _number_words(text: str, taken: list[tuple[int, int]]) -> list[Mention]:
    """Number words and word fractions."""
    words = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    out: list[Mention] = []
    i = 0

    def free(a: int, b: int) -> bool:
        return not any(a < y and x < b for x, y in taken)

    while i < len(words):
        w, s, _ = words[i]
        # "a third", "a quarter", "a half", "a dozen"
        if w in ("a", "an") and i + 1 < len(words):
            nxt, _, e2 = words[i + 1]
            if nxt in ("third", "quarter", "half", "fifth", "sixth", "tenth") and text[words[i][2]:words[i + 1][1]].strip() == "":
                if free(s, e2):
                    out.append(Mention(Fraction(1, DENOMINATORS[nxt]), text[s:e2], s, e2, "word_fraction"))
                i += 2
                continue
            if nxt == "dozen" and free(s, e2):
                out.append(Mention(Fraction(12), text[s:e2], s, e2, "words"))
                i += 2
                continue
        if w not in NUMBER_WORDS:
            i += 1
            continue
        # greedy number phrase: units/tens/scales joined by spaces, hyphens or "and"
        total, current, j, end = 0, 0, i, words[i][2]
        last_word = None
        while j < len(words):
            wj, sj, ej = words[j]
            gap = text[end:sj] if j > i else ""
            if j > i and gap.strip() not in ("", "-"):
                break
            if wj in UNITS or wj in TENS:
                if last_word is not None and (last_word in UNITS or (last_word in TENS and wj in TENS)):
                    break  # "two three" is two numbers
                current += NUMBER_WORDS[wj]
            elif wj in SCALES and last_word is not None:
                current = max(current, 1) * SCALES[wj]
                if SCALES[wj] >= 1000:
                    total, current = total + current, 0
            elif wj == "and" and last_word in SCALES and j + 1 < len(words) and words[j + 1][0] in NUMBER_WORDS:
                j += 1
                end = ej
                continue
            else:
                break
            last_word = wj
            end = ej
            j += 1
        value = Fraction(total + current)
        phrase_end = end
        kind = "words"
        # word fraction: "two thirds", "three quarters", "one half"; mixed "one and a half"
        if j < len(words) and words[j][0] in DENOMINATORS and text[end:words[j][1]].strip() in ("", "-"):
            den = DENOMINATORS[words[j][0]]
            value = value / den
            phrase_end = words[j][2]
            kind = "word_fraction"
            j += 1
        elif (
            j + 2 < len(words)
            and words[j][0] == "and"
            and words[j + 1][0] in ("a", "one")
            and words[j + 2][0] in ("half", "quarter", "third")
        ):
            value = value + Fraction(1, DENOMINATORS[words[j + 2][0]])
            phrase_end = words[j + 2][2]
            kind = "word_fraction"
            j += 3
        elif w == "one" and j == i + 1:
            prev = words[i - 1][0] if i > 0 else ""
            nxt = words[j][0] if j < len(words) else ""
            if prev in _ONE_IDIOM_BEFORE or nxt in _ONE_IDIOM_AFTER or (prev == "one" and nxt == ""):
                i = j
                continue
        if j < len(words) and words[j][0] == "dozen" and kind == "words":
            value = value * 12
            phrase_end = words[j][2]
            j += 1
        if free(s, phrase_end):
            pct = _PERCENT_AFTER.match(text, phrase_end)
            if pct and kind == "words":
                out.append(Mention(value / 100, text[s:pct.end()], s, pct.end(), "percent", alts=(value,)))
            else:
                out.append(Mention(value, text[s:phrase_end], s, phrase_end, kind))
        i = j
    return out


def find_mentions(text: str) -> list[Mention]:
    """Every quantity stated in ``text`` (see the module docstring for what is excluded)."""
    if not text:
        return []
    t = mask(text, exempt_spans(text))
    out: list[Mention] = []
    taken: list[tuple[int, int]] = []

    def take(m: Mention) -> None:
        out.append(m)
        taken.append((m.start, m.end))

    for m in _LATEX_FRAC.finditer(t):
        a, b = m.group(1) or m.group(2), m.group(3) or m.group(4)
        num, den = _dec(a)[0], _dec(b)[0]
        if den != 0:
            take(Mention(num / den, text[m.start():m.end()], m.start(), m.end(), "latex_frac"))
    t2 = mask(t, taken)
    for m in _SLASH_FRAC.finditer(t2):
        num, den = int(m.group(1)), int(m.group(2))
        if den != 0:
            pct = _PERCENT_AFTER.match(t2, m.end())
            end = pct.end() if pct else m.end()
            value = Fraction(num, den)
            if pct:
                take(Mention(value / 100, text[m.start():end], m.start(), end, "percent", alts=(value,)))
            else:
                take(Mention(value, text[m.start():end], m.start(), end, "fraction"))
    t3 = mask(t, taken)
    for m in _NUMBER.finditer(t3):
        if _ORDINAL_AFTER.match(t3, m.end()):
            continue  # 3rd, 21st: positions, not quantities
        value, decimals = _dec(m.group(2) + (m.group(3) or ""))
        if m.group(1):
            value = -value
        pct = _PERCENT_AFTER.match(t3, m.end())
        if pct:
            take(Mention(value / 100, text[m.start():pct.end()], m.start(), pct.end(), "percent",
                         decimals=decimals + 2, alts=(value,)))
        else:
            take(Mention(value, text[m.start():m.end()], m.start(), m.end(), "digits", decimals=decimals))
    for i, ch in enumerate(t):
        if ch.isnumeric() and not ch.isdigit() and unicodedata.category(ch) == "No":
            try:
                v = Fraction(unicodedata.numeric(ch)).limit_denominator(100)
            except (TypeError, ValueError):
                continue
            take(Mention(v, ch, i, i + 1, "unicode_fraction"))
    out += _number_words(t, taken)
    out.sort(key=lambda m: m.start)
    # "one in four", "3 out of 8": the ratio is stated as well as its two numbers
    for a, b in zip(out, out[1:]):
        gap = t[a.end:b.start].strip().lower()
        if gap in ("in", "out of", "of every", "in every") and b.value and a.kind in ("digits", "words") \
                and b.kind in ("digits", "words") and a.value <= b.value:
            out.append(Mention(a.value / b.value, text[a.start:b.end], a.start, b.end, "ratio"))
    out.sort(key=lambda m: m.start)
    return out


def raw_numbers(text: str) -> list[Mention]:
    """Every digit literal outside exempt spans, including both halves of "30/50" (for solutions)."""
    t = mask(text, exempt_spans(text))
    out = []
    for m in re.finditer(r"(?<![\w.])\d+(?:\.\d+)?", t):
        value, decimals = _dec(m.group(0))
        out.append(Mention(value, m.group(0), m.start(), m.end(), "digits", decimals=decimals))
    return out


@dataclass(frozen=True)
class Target:
    """A value to look for, with the precision it was written at (decimals of the literal, 0 if exact)."""

    value: Fraction
    decimals: int = 0


def values_match(mention: Mention, target: Target) -> bool:
    """Equal values, or equal at the precision of the less precise decimal literal ("0.33" vs 1/3)."""
    for v in mention.values():
        if v == target.value:
            return True
        if mention.decimals and round(target.value, mention.decimals) == v:
            return True
        if target.decimals and round(v, target.decimals) == target.value:
            return True
    return False


_UNIT_TAIL = re.compile(
    r"(?i)\s*(?:°|º|degrees?|deg|cm\^?2?|mm|m\^?2?|km|kg|g|s|sec|seconds?|minutes?|min|hours?|h|units?|"
    r"square\s+\w+|sq\.?\s*\w+|inches|inch|in|ft|feet|meters?|metres?|cm²|m²|\\circ|\^\{?\\circ\}?|"
    r"\\text\{[^}]*\}|\\mathrm\{[^}]*\}|dollars?|cents?|years?|people|items?|objects?)\.?\s*$"
)


def answer_targets(answer: str) -> list[Target]:
    """The values of an answer string such as "12", "12 cm", "45°", "1/2", "\\frac{1}{2}", "50%",
    "0.75", "twelve", "$3$", "\\boxed{7}", "x = 5". Empty when the answer is not a plain rational."""
    s = answer.strip()
    s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s)
    s = s.strip("$ ").strip()
    s = re.sub(r"^\\\(|\\\)$", "", s).strip()
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s)
    s = re.sub(r"\\[,;!]|\\left|\\right", "", s)
    for _ in range(3):
        s2 = _UNIT_TAIL.sub("", s).strip()
        if s2 == s:
            break
        s = s2
    s = s.rstrip(".")
    if not s:
        return []
    mentions = find_mentions(s)
    if len(mentions) != 1:
        return []
    m = mentions[0]
    rest = (s[: m.start] + s[m.end:]).strip()
    if rest:
        return []
    targets = [Target(m.value, m.decimals)]
    targets += [Target(a, 0) for a in m.alts]
    return targets
