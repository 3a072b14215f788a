"""What the spoiler audit knows about an item, computed once per item: its answer in every form, the correct
option, the question's own numbers, the reference solution's decisive values; and the audit's settings.

The correct option comes from :func:`ptdpo.answers.gold_choice`, the resolution the reward uses, so an
item whose gold answer is an option's text ("The cube") is audited for its letter ("Option B is
correct.") as well as for its text. Values of LaTeX expressions come from the shared math-verify judge,
with its deadline, so an expression in a hint cannot hang the audit.
"""

from __future__ import annotations

import functools
import re
from dataclasses import astuple, dataclass, field, fields
from fractions import Fraction
from typing import Any

from ptdpo.answers.choices import gold_choice, letter_choice
from ptdpo.answers.judge import DEFAULT_TIMEOUT_S, math_value
from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item
from ptdpo.hints.numbers import Target, answer_targets, find_mentions, raw_numbers, values_match

MAX_EXPRESSION_CHARS = 120  # longer expressions in a hint are not evaluated


@dataclass
class AuditConfig:
    max_chars: int = 1200  # all free text of the hint together
    max_steps: int = 8
    max_step_chars: int = 300
    max_regions: int = 8
    check_decisive: bool = True
    # values of a reference solution that are too generic to count as decisive (angle sums, halves...)
    decisive_ignore: tuple[str, ...] = ("0", "1", "1/2", "90", "180", "360")
    # number WORDS up to this value are structure ("the two bars", "one of"), not decisive values
    decisive_min_word_value: int = 3
    # a decisive integer up to this value only counts when the hint says it about the same thing as the
    # solution (a shared content word within 5 words): "4 in the left cluster" vs "3 or more colours"
    decisive_context_max: int = 10
    solution_overlap: float = 0.5  # share of the solution's word trigrams reproduced by the hint
    require_regions: bool = False  # True: no_spatial_cue becomes hard
    fail_on_soft: bool = False
    use_math_verify: bool = True  # for answers that are not plain rationals (2\sqrt{3}, \pi/4)
    math_timeout_s: float = DEFAULT_TIMEOUT_S  # deadline for the value of one expression (math-verify judge)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AuditConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown audit config key {bad[0]!r} (known: {sorted(known)})")
        if "decisive_ignore" in d:
            d["decisive_ignore"] = tuple(str(v) for v in d["decisive_ignore"])
        return cls(**d)


_YES_NO = {"yes", "no", "true", "false"}
_ARTICLES = re.compile(r"^(?:the|a|an)\s+", re.I)
_STOP = set(
    """a an the is are was were be been of to in on at by for with and or not no it its this that these those
    there here than then as from into over under does do did can could should would will shall may might has
    have had which what who whom whose how many much image picture figure shown diagram""".split()
)


def norm(s: str) -> str:
    """Lower case, single spaces, without ``$``, a ``\\boxed{}`` around it, ``\\text{}`` or a final full stop."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s)
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return " ".join(s.lower().rstrip(".").split())


def phrase_regex(phrase: str) -> re.Pattern[str] | None:
    """Word-bounded, case-insensitive, plural-tolerant pattern for a short answer phrase."""
    phrase = _ARTICLES.sub("", phrase.strip())
    words = re.findall(r"[\w'°%.]+", phrase)
    if not words:
        return None
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?i)(?<![\w]){body}(?:s|es)?(?![\w])")


def math_form(s: str) -> str:
    """A LaTeX expression written one way (``√3``, ``\\sqrt 3`` and ``\\sqrt{3}`` alike), to find it in text."""
    s = s.replace("√", "\\sqrt").replace("π", "\\pi").replace("·", "\\cdot")
    s = re.sub(r"\\sqrt\s*(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    return re.sub(r"[\s${}]|\\left|\\right|\\,", "", s.lower())


@dataclass
class ItemFacts:
    """What the audit checks a hint against. ``choice_*`` describe the correct option when the answer names
    exactly one (``gold_choice``); ``math_gold`` is the answer's value when it is not a plain rational."""

    item_id: str
    answer: str
    answer_norm: str
    targets: list[Target]
    answer_regex: re.Pattern[str] | None
    math_key: str | None
    math_gold: float | None
    yes_no: str | None
    stem: str
    stem_values: list[Fraction]
    answer_in_stem: bool
    alternatives: list[str]
    proposition_words: list[str]
    n_choices: int = 0
    choice_index: int | None = None
    choice_letter: str | None = None
    choice_text: str | None = None
    choice_regex: re.Pattern[str] | None = None
    choice_targets: list[Target] = field(default_factory=list)
    option_matchers: list[tuple[re.Pattern[str] | None, list[Target]]] = field(default_factory=list)
    decisive: list[Target] = field(default_factory=list)
    decisive_is_option: list[bool] = field(default_factory=list)
    decisive_context: list[set[str]] = field(default_factory=list)
    polygon_word: re.Pattern[str] | None = None
    solution_trigrams: set[tuple[str, ...]] = field(default_factory=set)


def _lemma(w: str) -> str:
    w = w.lower()
    for suf in ("ies", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def context_words(text: str, a: int, b: int, n: int = 5) -> set[str]:
    """Content words (lemmas) within ``n`` words either side of a span: what the number is about."""
    left = re.findall(r"[A-Za-z]+", text[:a])[-n:]
    right = re.findall(r"[A-Za-z]+", text[b:])[:n]
    return {_lemma(w) for w in left + right if w.lower() not in _STOP and len(w) > 2}


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def expression_value(expr: str, config: AuditConfig) -> float | None:
    """The numeric value of a LaTeX or plain expression (``2\\sqrt{3}``), or None: unparsable, too long,
    not a number, or not known within ``config.math_timeout_s``."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        return None
    return math_value(expr, config.math_timeout_s)


def option_regex(text: str) -> re.Pattern[str] | None:
    t = norm(text)
    if len(t) == 1 and text.strip().isalpha():  # options that are single letters ("P", "T"): case-sensitive
        return re.compile(rf"(?<![\w'’]){re.escape(text.strip())}(?![\w'’])")
    return phrase_regex(t) if len(t) >= 2 else None


def _alternatives(stem: str) -> list[str]:
    """"A or B" alternatives named in a question ("Which is taller, the red bar or the blue bar?")."""
    m = re.search(r"(?i)(?:[,:]|\b(?:is|are|between|either))\s+(?:the\s+)?([\w\s'-]{1,40}?)\s+or\s+(?:the\s+)?([\w\s'-]{1,40}?)\s*\?", stem)
    return [m.group(1).strip(), m.group(2).strip()] if m else []


def item_facts(item: Item, config: AuditConfig | None = None) -> ItemFacts:
    """What the audit needs to know about an item (answer forms, options, decisive values...), cached by
    the item's content so a generator and the audit step do not recompute it. Treat as read-only."""
    config = config or AuditConfig()
    choices = tuple(item.choices) if item.choices else None
    return _item_facts_cached(item.id, item.question, item.answer, choices, item.solution, astuple(config))


@functools.lru_cache(maxsize=8192)
def _item_facts_cached(item_id, question, answer, choices, solution, config_tuple) -> ItemFacts:
    item = Item(id=item_id, images=[], question=question, answer=answer,
                choices=list(choices) if choices else None, solution=solution)
    return _item_facts(item, AuditConfig(*config_tuple))


def _item_facts(item: Item, config: AuditConfig) -> ItemFacts:
    answer = item.answer.strip()
    answer_norm = norm(answer)
    stem = item.question
    stem_mentions = find_mentions(stem)
    stem_values = [v for m in stem_mentions for v in m.values()]
    targets = answer_targets(answer)
    yes_no = answer_norm if answer_norm in _YES_NO else None
    options = gold_choice(answer, item.choices) if item.choices else None
    cidx = next(iter(options)) if options and len(options) == 1 else None
    # an answer written as a letter ("B", "Option B", "B) cube") is not a phrase or a value to look for
    letter_answer = cidx is not None and letter_choice(answer, len(item.choices)) is not None
    answer_regex = None
    if not targets and not yes_no and not letter_answer and re.search(r"[A-Za-z]", answer_norm):
        if not re.search(r"[\\^{}_]", answer_norm):
            answer_regex = phrase_regex(answer_norm)
    math_key = None
    math_gold = None
    if not targets and re.search(r"\d|\\|√|π", answer) and not letter_answer:
        math_key = math_form(answer)
        if config.use_math_verify:
            math_gold = expression_value(answer, config)
    in_stem = False
    if targets:
        in_stem = any(any(values_match(m, t) for t in targets) for m in stem_mentions)
    elif answer_regex is not None:
        in_stem = bool(answer_regex.search(stem))
    prop_words: list[str] = []
    if yes_no:
        body = re.sub(r"(?i)^\s*(?:is|are|was|were|does|do|did|can|could|has|have|will|would|should)\s+", "", stem)
        prop_words = [w for w in re.findall(r"[a-z]+", body.lower()) if w not in _STOP and len(w) > 2]
    facts = ItemFacts(
        item_id=item.id, answer=answer, answer_norm=answer_norm, targets=targets, answer_regex=answer_regex,
        math_key=math_key, math_gold=math_gold, yes_no=yes_no, stem=stem, stem_values=stem_values,
        answer_in_stem=in_stem, alternatives=_alternatives(stem), proposition_words=prop_words,
    )
    option_values: list[Fraction] = []
    if item.choices:
        facts.n_choices = len(item.choices)
        for c in item.choices:
            ct = answer_targets(c)
            option_values += [t.value for t in ct]
            rx = None if ct else option_regex(c)
            facts.option_matchers.append((rx, ct))
        if cidx is not None:
            facts.choice_index = cidx
            facts.choice_letter = CHOICE_LETTERS[cidx]
            facts.choice_text = item.choices[cidx]
            facts.choice_regex, facts.choice_targets = facts.option_matchers[cidx]
    if item.solution and config.check_decisive:
        ignore = {Fraction(v) for v in config.decisive_ignore}
        known = set(stem_values) | {t.value for t in targets + facts.choice_targets} | ignore
        index: dict[Fraction, int] = {}
        for m in find_mentions(item.solution) + raw_numbers(item.solution):
            if m.kind == "percent" or m.value in known or abs(m.value) in known:
                continue
            if m.value not in index:
                index[m.value] = len(facts.decisive)
                facts.decisive.append(Target(m.value, m.decimals))
                facts.decisive_is_option.append(m.value in option_values)
                facts.decisive_context.append(set())
            facts.decisive_context[index[m.value]] |= context_words(item.solution, m.start, m.end)
        facts.solution_trigrams = trigrams(item.solution)
    if targets and len(targets) == 1 and targets[0].value in _POLYGONS.values() and re.search(
        r"(?i)\b(?:sides?|vert(?:ex|ices)|edges?|corners?|angles?|polygon)\b", stem
    ):
        n = targets[0].value
        names = [w for w, v in _POLYGONS.items() if v == n]
        facts.polygon_word = re.compile(rf"(?i)\b(?:{'|'.join(names)})s?\b")
    return facts


_POLYGONS = {"triangle": 3, "triangular": 3, "quadrilateral": 4, "pentagon": 5, "pentagonal": 5, "hexagon": 6,
             "hexagonal": 6, "heptagon": 7, "septagon": 7, "octagon": 8, "octagonal": 8, "nonagon": 9,
             "decagon": 10, "dodecagon": 12}
