"""The zero-spoiler audit (METHOD.md 4): does a hint give away the answer?

``audit(hint, item) -> Verdict`` checks every free-text field of the hint (region labels and reasons,
steps, traps; the paragraph of an unstructured hint) against the item's answer, options and reference
solution. Reason codes (DESIGN.md 4):

==================  ========  ===================================================================
code                severity  what it catches
==================  ========  ===================================================================
answer_string       hard      the answer text itself ("purple", "12", "2\\sqrt{3}"), word-bounded; for
                              yes/no items "yes"/"no" used as a verdict, or a sentence asserting the
                              question's proposition
answer_value        hard      the answer's value in another form: number words ("twenty-one"),
                              fractions/decimals/percent/LaTeX ("1/2", "0.5", "50%", \\frac{1}{2}),
                              units ("12 cm"), math-aware (math_verify) for irrational answers; also
                              "exactly N regions with the same label" for a count N
choice_letter       hard      the correct option letter as an option: "option B", "(B)", "B)",
                              "answer B", "choose B", "is B", "B is correct", "the second option"
choice_text         hard      the correct option's text or value, unless the sentence lists every option
decisive_value      hard      a number of the reference solution that is not in the question (an
                              intermediate result: "the 2019 bar reaches 80", "6^2 = 36"), or one worked
                              computation with a result ("4 x 4 = 16")
concluding_phrase   hard/soft "so the answer is", "which gives", "you get"... followed by an answer
                              related value (hard) or by a description (soft: "the answer is the number
                              of red circles", "the answer is a probability"); inside a conditional
                              ("if the counts are equal, the answer is no") it is soft
full_solution       hard      two or more worked computations ("3 + 4 = 7"), steps reproducing half of
                              the reference solution's word trigrams, or intermediate values in three
                              or more fields
too_long            hard      more characters / steps / regions than configured
no_spatial_cue      soft      no region (structured) or no spatial word (unstructured); hard with
                              ``require_regions``
malformed           hard      the hint fails validation, belongs to another item, or is missing
==================  ========  ===================================================================

Not leaks, by design (each one tested): numbers inside boxes or coordinates, step numbering ("Step 2",
"2.", "(2)"), exponents ("a^2"), ordinals ("the 3rd bar"), "half"/"quarter" as a region ("the left
half"), the article "a"/"A" and the pronoun "I", lowercase list markers "a)", "b)", option letters in
ranges or complete lists ("options A-D"), numbers that appear in the question itself (an answer that is
in the question is only a leak when a sentence concludes or asserts it), and "yes"/"no" outside a
verdict ("answer yes only if ...", "no need to measure").

Decisive values, the collision-prone check, are limited so ordinary numbers do not trip it: values
too generic to count (0, 1, 1/2, 90, 180, 360; ``decisive_ignore``), number WORDS below 3 ("the two
bars", "one of them"), compound adjectives ("five-pointed", "3-digit"), and small integers (<= 10)
unless the hint says them about the same thing as the solution (a shared content word within five
words: "4 red circles in the left cluster" vs "shapes of 3 or more colours"). What remains are true
collisions, e.g. "each number on the dial is five minutes" when the minute hand points at the 5.

Known blind spots (semantic leaks without a value): paraphrased option text ("a cylinder-shaped blue
object" for "blue cylinder"), names of the decisive entities ("Chile, Peru, Kenya and Vietnam are above
the line"), and pronoun assertions ("it is indeed left of it").
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields
from fractions import Fraction
from typing import Any

from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item
from ptdpo.hints.numbers import Mention, Target, answer_targets, find_mentions, raw_numbers, values_match
from ptdpo.hints.schema import UNSTRUCTURED, Hint, HintError

REASONS = (
    "answer_string",
    "answer_value",
    "choice_letter",
    "choice_text",
    "decisive_value",
    "concluding_phrase",
    "full_solution",
    "too_long",
    "no_spatial_cue",
    "malformed",
)
SEVERITIES = ("ok", "soft", "hard")


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


@dataclass
class Verdict:
    item_id: str
    passed: bool
    reasons: list[str]
    severity: str
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# What we know about an item (computed once per item)
# ------------------------------------------------------------------------------------------------

_YES_NO = {"yes", "no", "true", "false"}
_ARTICLES = re.compile(r"^(?:the|a|an)\s+", re.I)
_STOP = set(
    """a an the is are was were be been of to in on at by for with and or not no it its this that these those
    there here than then as from into over under does do did can could should would will shall may might has
    have had which what who whom whose how many much image picture figure shown diagram""".split()
)
_HEDGES = re.compile(
    r"(?i)\b(?:whether|if|check|verify|determine|decide|compare|confirm|see|ask|test|judge|find out|"
    r"figure out|unless|might|may|could|possibly|seems?|appears?|looks? like)\b|\?"
)
_COMPARATIVE = re.compile(r"(?i)\b(?:\w+er|\w+est|more|less|most|least|same|equal|bigger|larger|smaller)\b")
_SENTENCE = re.compile(r"[^.!?;\n]+(?:[.!?;]+|$)")


def _norm(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s)
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return " ".join(s.lower().rstrip(".").split())


def _phrase_regex(phrase: str) -> re.Pattern[str] | None:
    """Word-bounded, case-insensitive, plural-tolerant pattern for a short answer phrase."""
    phrase = _ARTICLES.sub("", phrase.strip())
    words = re.findall(r"[\w'°%.]+", phrase)
    if not words:
        return None
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?i)(?<![\w]){body}(?:s|es)?(?![\w])")


def _math_key(s: str) -> str:
    s = s.replace("√", "\\sqrt").replace("π", "\\pi").replace("·", "\\cdot")
    s = re.sub(r"\\sqrt\s*(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    return re.sub(r"[\s${}]|\\left|\\right|\\,", "", s.lower())


@dataclass
class ItemFacts:
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


def _mentions_value(mentions: Iterable[Mention], targets: Sequence[Target]) -> Mention | None:
    for m in mentions:
        if any(values_match(m, t) for t in targets):
            return m
    return None


def _lemma(w: str) -> str:
    w = w.lower()
    for suf in ("ies", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def _context_words(text: str, a: int, b: int, n: int = 5) -> set[str]:
    """Content words (lemmas) within ``n`` words either side of a span: what the number is about."""
    left = re.findall(r"[A-Za-z]+", text[:a])[-n:]
    right = re.findall(r"[A-Za-z]+", text[b:])[:n]
    return {_lemma(w) for w in left + right if w.lower() not in _STOP and len(w) > 2}


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def _math_value(expr: str) -> float | None:
    """Numeric value of a LaTeX/plain math expression via math_verify (no signal timeouts: inputs are
    short and bounded by the caller, so parse time is bounded by their length)."""
    if len(expr) > 120:
        return None
    try:
        from math_verify import parse

        _quiet_math_verify()
        parsed = parse(expr if "$" in expr or "\\" not in expr else f"${expr}$", parsing_timeout=None)
        for p in parsed:
            if hasattr(p, "is_number") and p.is_number:
                return float(p.evalf())
    except Exception:  # noqa: BLE001 - math_verify/sympy raise many kinds; unparseable means "no value"
        return None
    return None


class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_QUIET = False


def _quiet_math_verify() -> None:
    global _QUIET
    if not _QUIET:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutWarning())
        _QUIET = True


def _choice_index(item: Item) -> int | None:
    if not item.choices:
        return None
    a = item.answer.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.):]?(?:\s+.*)?", a)
    n = len(item.choices)
    if m and m.group(1).upper() in CHOICE_LETTERS[:n] and (len(a) <= 3 or a[1:3].strip() in (".", ")", ":", "")):
        return CHOICE_LETTERS.index(m.group(1).upper())
    na = _norm(a)
    for i, c in enumerate(item.choices):
        if _norm(c) == na:
            return i
    return None


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
    answer_norm = _norm(answer)
    stem = item.question
    stem_mentions = find_mentions(stem)
    stem_values = [v for m in stem_mentions for v in m.values()]
    targets = answer_targets(answer)
    yes_no = answer_norm if answer_norm in _YES_NO else None
    cidx = _choice_index(item)
    letter_answer = cidx is not None and len(answer.strip("(). :")) == 1
    answer_regex = None
    if not targets and not yes_no and not letter_answer and re.search(r"[A-Za-z]", answer_norm):
        if not re.search(r"[\\^{}_]", answer_norm):
            answer_regex = _phrase_regex(answer_norm)
    math_key = None
    math_gold = None
    if not targets and re.search(r"\d|\\|√|π", answer) and not letter_answer:
        math_key = _math_key(answer)
        if config.use_math_verify:
            math_gold = _math_value(answer)
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
            rx = None if ct else _option_regex(c)
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
            facts.decisive_context[index[m.value]] |= _context_words(item.solution, m.start, m.end)
        facts.solution_trigrams = _trigrams(item.solution)
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


# ------------------------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------------------------

_STRONG_CONCLUDE = re.compile(
    r"(?i)\b(?:(?:the\s+)?(?:final|correct|right|true)\s+(?:answer|option|choice|letter|value|result|count|total)"
    r"\s*(?:is|=|:|should\s+be|must\s+be|would\s+be|will\s+be|comes\s+out)|answers?\s+(?:is|=|should\s+be|"
    r"must\s+be|would\s+be|will\s+be|comes\s+out|here\s+is)|answer\s*[:=]|"
    r"(?:so|thus|hence|therefore|then|which\s+means|meaning)\b,?\s+(?:the\s+)?(?:final\s+|correct\s+)?"
    r"(?:answer|result|total|count|sum|difference|value|number|area|angle|length|measure|product|ratio|"
    r"perimeter|option|choice)\b[^.;!?]{0,30}?\b(?:is|are|=|equals|should\s+be|must\s+be|will\s+be|comes\s+to|"
    r"would\s+be))"
)
_WEAK_CONCLUDE = re.compile(
    r"(?i)\b(?:which\s+(?:gives|yields|equals|makes|leaves|means)|(?:comes|works)\s+out\s+(?:to|at|as)|"
    r"adds?\s+up\s+to|sums?\s+to|totall?ing|totals\b|(?:you|we)\s+(?:should\s+|will\s+|would\s+|then\s+)?"
    r"(?:get|obtain|end\s+up\s+with|arrive\s+at|reach)|resulting\s+in|results?\s+in|giving(?:\s+you)?|"
    r"this\s+(?:gives|yields|leaves)|leaving|equals|is\s+equal\s+to|is\s+(?:exactly|precisely|clearly|definitely)|"
    r"are\s+(?:exactly|precisely|clearly|definitely)|(?:so|thus|hence|therefore)\s+it(?:'s|\s+is)|"
    r"(?:pick|choose|select|go\s+with|mark)\b|(?:it|that)(?:'s|\s+is)\s+(?:option|choice))"
)
_SENT_END = re.compile(r"[.!?;](?=\s|$)|\n")
_LETTER_RANGE = re.compile(r"\b[A-Z]\s*(?:-|–|—|to|through|thru)\s*[A-Z]\b")
_OPTION_WORD = r"(?:options?|choices?|answers?|letters?|alternatives?|candidates?)"
_ORDINALS = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "sixth": 5}


def _letter_patterns(letter: str) -> list[re.Pattern[str]]:
    L = re.escape(letter)
    any_case = f"(?:{L}|{L.lower()})"
    lst = r"(?:\s*(?:,|and|or|/|&)\s*\(?[A-Ha-h]\)?)*"
    return [
        # keyword + letter (+ list): "option B", "options B and C", "answer: b", "choice (B)"
        re.compile(rf"(?i:\b{_OPTION_WORD})\s*[:#-]?\s*['\"‘“]?\(?{any_case}\)?['\"’”]?(?![\w]){lst}"),
        re.compile(rf"\({L}\)"),  # "(B)"
        re.compile(rf"(?<![\w(]){L}\)"),  # "B)"
        re.compile(rf"(?i:\b(?:is|choose|pick|select|mark|circle|tick|go\s+with|answer|=|letter))\s+['\"‘“]?{L}['\"’”]?(?![\w'’-])"),
        re.compile(rf"(?<![\w-]){L}(?:\s*\([^)]{{0,30}}\))?\s+(?i:is|looks|seems|must\s+be|should\s+be)\s+"
                   rf"(?i:(?:the\s+)?(?:correct|right|best|true)|the\s+answer|the\s+one)"),
        re.compile(rf"['\"‘“]{L}['\"’”]"),
        re.compile(rf"(?<![\w-]){L}\s*[:=]\s*(?i:correct|true|yes)"),
    ]


@dataclass
class _Ctx:
    facts: ItemFacts
    config: AuditConfig
    reasons: dict[str, str] = field(default_factory=dict)  # code -> severity
    details: list[str] = field(default_factory=list)

    def flag(self, code: str, severity: str, where: str, what: str) -> None:
        if self.reasons.get(code) != "hard":
            self.reasons[code] = severity
        self.details.append(f"{code} ({severity}) in {where}: {what}")


def _snippet(text: str, a: int, b: int, pad: int = 25) -> str:
    s = text[max(0, a - pad): b + pad].replace("\n", " ")
    return ("…" if a > pad else "") + s + ("…" if b + pad < len(text) else "")


def _windows(text: str, rx: re.Pattern[str]) -> list[tuple[int, int, int]]:
    """(phrase start, window start, window end) for each match: the window runs to the end of the sentence."""
    out = []
    for m in rx.finditer(text):
        end = _SENT_END.search(text, m.end())
        stop = min(end.start() if end else len(text), m.end() + 80)
        out.append((m.start(), m.end(), stop))
    return out


def _mentioned_options(text: str, mentions: list[Mention], facts: ItemFacts) -> list[bool]:
    found = []
    for rx, ct in facts.option_matchers:
        if ct:
            found.append(_mentions_value(mentions, ct) is not None)
        else:
            found.append(bool(rx and rx.search(text)))
    return found


_DESCRIBES = re.compile(
    r"(?i)\s*(?:a|an|the|whatever|what|how|not|in|given|expressed|written|one\s+of|some|any|your|that|this)\b"
)
_CONDITIONAL = re.compile(r"(?i)\b(?:if|when|unless|whether|in\s+case|otherwise)\b")
_ZERO = re.compile(
    r"(?i)\bnone\b(?!\s+of)|\bnot\s+(?:a\s+single|any|one)\b|\bthere\s+(?:are|is|will\s+be)\s+no\b|"
    r"\bno\s+\w+\s+at\s+all\b|\bnothing\s+(?:matches|qualifies|counts)\b"
)
_OP = r"(?:[-+×x*/÷·−]|\\times|\\cdot)"
_WORKED = re.compile(
    rf"\d\s*{_OP}\s*\(?\s*\d[^=\n]{{0,25}}=\s*[-−]?\s*\d|=\s*[-−]?\d[\d.\s]*{_OP}[^=\n]{{0,20}}=\s*[-−]?\s*\d"
)
_EQUATION = re.compile(r"=\s*[-−]?\s*(?:\d|\\frac|\\sqrt)")


def _option_regex(text: str) -> re.Pattern[str] | None:
    t = _norm(text)
    if len(t) == 1 and text.strip().isalpha():  # options that are single letters ("P", "T"): case-sensitive
        return re.compile(rf"(?<![\w'’]){re.escape(text.strip())}(?![\w'’])")
    return _phrase_regex(t) if len(t) >= 2 else None


def _check_text(ctx: _Ctx, where: str, text: str) -> None:
    f = ctx.facts
    mentions = find_mentions(text)
    # a sentence that lists every option ("compare with 6, 7, 8 and 9") names none of them in particular
    listing: list[tuple[int, int]] = []
    if f.option_matchers:
        for sm in _SENTENCE.finditer(text):
            sent_mentions = [m for m in mentions if sm.start() <= m.start < sm.end()]
            if all(_mentioned_options(sm.group(0), sent_mentions, f)):
                listing.append(sm.span())

    def in_listing(pos: int) -> bool:
        return any(a <= pos < b for a, b in listing)

    # --- concluding phrases: what follows them decides the severity -------------------------------
    for rx, strong in ((_STRONG_CONCLUDE, True), (_WEAK_CONCLUDE, False)):
        for start, ws, we in _windows(text, rx):
            window = text[ws:we]
            wm = [m for m in mentions if ws <= m.start < we]
            related = _answer_related(f, window, wm)
            anything = bool(wm) or bool(re.search(r"(?i)\b(?:yes|no|true|false)\b|(?<![\w-])[A-H](?![\w'-])", window))
            phrase = text[start:ws].strip()
            if strong and not related and _DESCRIBES.match(window):
                anything = False  # "the answer is a probability, between 0 and 1": a type, not a value
            sent = _sentence_at(text, start, ws)
            conditional = bool(_CONDITIONAL.search(sent[: max(0, sent.find(phrase))] if phrase in sent else ""))
            if (related or (strong and anything)) and not conditional:
                ctx.flag("concluding_phrase", "hard", where, f"'{phrase}' followed by '{window.strip()[:60]}'")
            elif strong:
                ctx.flag("concluding_phrase", "soft", where, f"'{phrase}' (no answer follows)")

    # --- the answer's value in any form -------------------------------------------------------------
    if f.targets and not f.answer_in_stem:
        for m in mentions:
            if any(values_match(m, t) for t in f.targets):
                code = "answer_string" if _norm(m.text) == f.answer_norm else "answer_value"
                ctx.flag(code, "hard", where, f"'{m.text}' = answer {f.answer!r} ({_snippet(text, m.start, m.end)})")
        if any(t.value == 0 for t in f.targets) and (zm := _ZERO.search(text)):
            ctx.flag("answer_value", "hard", where, f"'{zm.group(0)}' states a count of zero")
        if f.polygon_word is not None and (pm := f.polygon_word.search(text)):
            ctx.flag("answer_value", "hard", where, f"'{pm.group(0)}' names a shape with {f.answer} sides")
    if f.math_key and len(f.math_key) >= 2 and f.math_key in _math_key(text):
        ctx.flag("answer_string", "hard", where, f"answer {f.answer!r} written out")
    elif f.math_gold is not None:
        gold = f.math_gold
        for m in mentions:  # decimal approximations: "28.27" for 9\pi
            if m.decimals and abs(float(m.value) - round(gold, m.decimals)) < 10 ** -(m.decimals + 3):
                ctx.flag("answer_value", "hard", where, f"'{m.text}' approximates answer {f.answer!r}")
                break
        for seg in _math_segments(text):
            v = _math_value(seg)
            if v is not None and abs(v - gold) <= 1e-6 * max(1.0, abs(gold)):
                ctx.flag("answer_value", "hard", where, f"'{seg}' equals answer {f.answer!r} (math_verify)")
                break

    # --- short textual answers ----------------------------------------------------------------------
    if f.answer_regex is not None:
        for m in f.answer_regex.finditer(text):
            if not f.answer_in_stem:
                ctx.flag("answer_string", "hard", where, f"answer {f.answer!r} ({_snippet(text, m.start(), m.end())})")
                break
            if _asserts(text, m.start(), m.end(), f):
                ctx.flag("answer_string", "hard", where,
                         f"asserts the answer {f.answer!r} ({_snippet(text, m.start(), m.end())})")
                break
    if f.yes_no:
        _check_yes_no(ctx, where, text)

    # --- multiple choice ------------------------------------------------------------------------------
    if f.choice_letter:
        masked = _LETTER_RANGE.sub(lambda m: " " * len(m.group(0)), text)
        for rx in _letter_patterns(f.choice_letter):
            m = rx.search(masked)
            if m is None:
                continue
            letters = re.findall(r"(?<![\w])[A-Ha-h](?![\w])", masked[m.start():m.end()])
            if len({x.upper() for x in letters}) >= max(2, f.n_choices - 1):
                continue  # a (nearly) complete list of options, not a choice
            ctx.flag("choice_letter", "hard", where, f"'{m.group(0).strip()}' names the correct option")
            break
        for word, idx in _ORDINALS.items():
            if idx == f.choice_index and re.search(rf"(?i)\b{word}\s+(?:option|choice|answer\s+choice|alternative)", text):
                ctx.flag("choice_letter", "hard", where, f"'the {word} option' is the correct option")
        if f.choice_index == f.n_choices - 1 and re.search(r"(?i)\blast\s+(?:option|choice)\b", text):
            ctx.flag("choice_letter", "hard", where, "'the last option' is the correct option")
        if not f.targets and f.answer_regex is None:
            hit_text = None
            if f.choice_targets:
                hm = _mentions_value([m for m in mentions if not in_listing(m.start)], f.choice_targets)
                in_stem = any(values_match(Mention(v, "", 0, 0, "x"), t) for v in f.stem_values for t in f.choice_targets)
                if hm is not None and not in_stem:
                    hit_text = hm.text
            elif f.choice_regex is not None:
                mm = next((x for x in f.choice_regex.finditer(masked) if not in_listing(x.start())), None)
                if mm is not None and not f.choice_regex.search(f.stem):
                    hit_text = mm.group(0)
            if hit_text is not None:
                ctx.flag("choice_text", "hard", where, f"'{hit_text}' is the correct option's text {f.choice_text!r}")

    # --- decisive intermediate values -----------------------------------------------------------------
    if f.decisive:
        for m in mentions:
            if m.kind in ("words",) and m.value < ctx.config.decisive_min_word_value:
                continue
            if any(v in f.stem_values for v in m.values()):
                continue
            if re.match(r"-[A-Za-z]", text[m.end:m.end + 2]) and m.kind in ("words", "digits"):
                continue  # compound adjective: "five-pointed", "3-digit"
            for t, is_opt, ctx_words in zip(f.decisive, f.decisive_is_option, f.decisive_context):
                if not values_match(m, t) or (is_opt and in_listing(m.start)):
                    continue
                small = t.value.denominator == 1 and 0 <= t.value <= ctx.config.decisive_context_max
                if small and ctx_words and not (_context_words(text, m.start, m.end) & ctx_words):
                    continue  # a small number about something else ("3 or more colours")
                ctx.flag("decisive_value", "hard", where, f"'{m.text}' is an intermediate value of the solution "
                         f"({_snippet(text, m.start, m.end)})")
                break
    worked = _WORKED.findall(text)
    if worked:
        ctx.flag("decisive_value", "hard", where, f"worked computation '{worked[0].strip()}'")


def _answer_related(f: ItemFacts, window: str, wm: list[Mention]) -> bool:
    if f.targets and _mentions_value(wm, f.targets):
        return True
    if f.choice_targets and _mentions_value(wm, f.choice_targets):
        return True
    if f.decisive and _mentions_value(wm, f.decisive):
        return True
    if f.answer_regex is not None and f.answer_regex.search(window):
        return True
    if f.choice_regex is not None and f.choice_regex.search(window):
        return True
    if f.yes_no and re.search(r"(?i)\b(?:yes|no|true|false)\b", window):
        return True
    if f.choice_letter and re.search(rf"(?<![\w-]){re.escape(f.choice_letter)}(?![\w'-])", window):
        return True
    if f.math_key and len(f.math_key) >= 2 and f.math_key in _math_key(window):
        return True
    return False


def _sentence_at(text: str, a: int, b: int) -> str:
    for m in _SENTENCE.finditer(text):
        if m.start() <= a and b <= m.end():
            return m.group(0)
    return text


def _asserts(text: str, a: int, b: int, f: ItemFacts) -> bool:
    """Does the sentence around an answer that also appears in the question assert it as the answer
    ("the red bar is taller"), rather than just name it ("compare the red bar with the blue bar")?"""
    sent = _sentence_at(text, a, b)
    if _HEDGES.search(sent):
        return False
    others = [o for o in f.alternatives if _norm(o) != f.answer_norm and _phrase_regex(o)]
    if any(_phrase_regex(o).search(sent) for o in others):  # type: ignore[union-attr]
        return False
    return bool(re.search(r"(?i)\b(?:is|are|was|were|wins|has|have)\b", sent) and _COMPARATIVE.search(sent))


_YN_END = r"(?=\s*(?:[.,;:!)\]—–-]|$))"  # the verdict word ends a clause: "yes.", "no —", "yes"
_VERDICT_YN = re.compile(
    rf"(?i)(?:^\s*['\"]?(yes|no)\b\s*[,.!:;—–-]|\b(?:answer|respond|reply|say|write|output|verdict|it'?s|it\s+is|"
    rf"that'?s|that\s+is|clearly|definitely|obviously|simply)\s*(?:with\s+)?[:\-]?\s*['\"“]?(yes|no|true|false)"
    rf"(?:['\"”]|\b{_YN_END})|\b(yes|no)\s*(?:is|would\s+be)\s+(?:correct|right|the\s+answer))"
)


def _check_yes_no(ctx: _Ctx, where: str, text: str) -> None:
    f = ctx.facts
    m = _VERDICT_YN.search(text)
    if m:
        ctx.flag("answer_string", "hard", where, f"'{m.group(0).strip()}' gives the yes/no verdict")
        return
    words = f.proposition_words
    if len(words) < 2:
        return
    for sm in _SENTENCE.finditer(text):
        sent = sm.group(0)
        if _HEDGES.search(sent) or re.search(r"(?i)\b(?:or|either|each|both|whichever)\b", sent):
            continue
        lw = set(re.findall(r"[a-z]+", sent.lower()))
        covered = sum(1 for w in words if w in lw or w.rstrip("s") in lw or w + "s" in lw)
        if covered >= max(2, round(0.8 * len(words))) and re.search(
            r"(?i)\b(?:is|are|does|do|has|have|sits?|lies?|stands?|appears?|isn't|aren't|doesn't|don't|indeed|not)\b", sent
        ):
            ctx.flag("answer_string", "hard", where, f"states the answer to the yes/no question: '{sent.strip()[:80]}'")
            return


_MATH_SEG = re.compile(r"\$[^$]{1,120}\$|\\\((.{1,120}?)\\\)|\d*\s*(?:√|\\sqrt)\s*\{?\d+\}?|\d*\s*(?:π|\\pi)(?:\s*/\s*\d+)?")


def _math_segments(text: str) -> list[str]:
    return [m.group(0) for m in _MATH_SEG.finditer(text)][:8]


_SPATIAL = re.compile(
    r"(?i)\b(?:left|right|top|bottom|upper|lower|corner|cent(?:er|re)|middle|above|below|beneath|near|next\s+to|"
    r"behind|in\s+front|axis|legend|bar|row|column|edge|side|region|area|quadrant|foreground|background)\b|[\[(]\s*\d+\s*,"
)


def audit(hint: Hint | dict[str, Any] | None, item: Item, config: AuditConfig | None = None,
          facts: ItemFacts | None = None) -> Verdict:
    """Audit one hint against its item. ``facts`` (from ``item_facts``) can be passed to reuse work."""
    config = config or AuditConfig()
    if hint is None:
        return Verdict(item.id, False, ["malformed"], "hard", ["malformed (hard) in hint: no hint"])
    if isinstance(hint, dict):
        try:
            hint = Hint.from_dict(hint)
        except HintError as e:
            return Verdict(item.id, False, ["malformed"], "hard", [f"malformed (hard) in {e.field_name}: {e.problem}"])
    else:
        try:
            hint = hint.validate()
        except HintError as e:
            return Verdict(item.id, False, ["malformed"], "hard", [f"malformed (hard) in {e.field_name}: {e.problem}"])
    if hint.item_id != item.id:
        return Verdict(item.id, False, ["malformed"], "hard",
                       [f"malformed (hard) in item_id: hint is for item {hint.item_id!r}"])
    facts = facts or item_facts(item, config)
    ctx = _Ctx(facts, config)
    texts = hint.texts()
    joined = "\n".join(t for _, t in texts)
    for where, text in texts:
        _check_text(ctx, where, text)

    # structure-level checks
    if hint.kind != UNSTRUCTURED and facts.targets and not facts.answer_in_stem:
        n = len(hint.regions)
        labels = {re.sub(r"[\d#]+|\b(?:first|second|third|fourth|fifth|left|right|top|bottom)\b", "", r.label.lower()).strip()
                  for r in hint.regions}
        if n >= 2 and len(labels) == 1 and any(t.value == n for t in facts.targets):
            ctx.flag("answer_value", "hard", "regions", f"{n} regions with the same label: their count is the answer")
    n_worked = len(_WORKED.findall(joined))
    if n_worked >= 2:
        ctx.flag("full_solution", "hard", "steps", f"{n_worked} worked computations")
    if facts.solution_trigrams and len(facts.solution_trigrams) >= 6:
        overlap = len(_trigrams(joined) & facts.solution_trigrams) / len(facts.solution_trigrams)
        if overlap >= config.solution_overlap:
            ctx.flag("full_solution", "hard", "steps", f"reproduces {overlap:.0%} of the reference solution")
    dec_steps = {d.split(" in ")[1].split(":")[0] for d in ctx.details if d.startswith("decisive_value")}
    if len(dec_steps) >= 3:
        ctx.flag("full_solution", "hard", "steps", f"intermediate values in {len(dec_steps)} fields")
    if len(joined) > config.max_chars:
        ctx.flag("too_long", "hard", "hint", f"{len(joined)} characters (limit {config.max_chars})")
    if hint.kind != UNSTRUCTURED:
        if len(hint.steps) > config.max_steps:
            ctx.flag("too_long", "hard", "steps", f"{len(hint.steps)} steps (limit {config.max_steps})")
        if len(hint.regions) > config.max_regions:
            ctx.flag("too_long", "hard", "regions", f"{len(hint.regions)} regions (limit {config.max_regions})")
        for i, s in enumerate(hint.steps):
            if len(s) > config.max_step_chars:
                ctx.flag("too_long", "hard", f"steps[{i}]", f"{len(s)} characters (limit {config.max_step_chars})")
        if not hint.regions:
            ctx.flag("no_spatial_cue", "hard" if config.require_regions else "soft", "regions", "no region to look at")
    elif not _SPATIAL.search(hint.text):
        ctx.flag("no_spatial_cue", "hard" if config.require_regions else "soft", "text", "no spatial cue")

    reasons = [r for r in REASONS if r in ctx.reasons]
    sev = "hard" if "hard" in ctx.reasons.values() else "soft" if ctx.reasons else "ok"
    passed = sev == "ok" or (sev == "soft" and not config.fail_on_soft)
    return Verdict(item.id, passed, reasons, sev, ctx.details)


def hard_reasons(verdict: Verdict) -> list[str]:
    return [d.split(" ", 1)[0] for d in verdict.details if "(hard)" in d]


def feedback_text(verdict: Verdict, limit: int = 8) -> str:
    """The rejection, phrased for the generator (used by regenerate-with-feedback)."""
    lines = [f"- {d}" for d in verdict.details[:limit]]
    return "\n".join(lines)


def audit_text(text: str, item: Item, config: AuditConfig | None = None, facts: ItemFacts | None = None) -> list[str]:
    """The hard reasons one sentence would earn on its own (used to filter sentences before they enter a
    hint, e.g. by the oracle generator). Length and spatial-cue checks do not apply."""
    v = audit(Hint(item_id=item.id, kind=UNSTRUCTURED, text=text), item, config, facts)
    return sorted({r for r in hard_reasons(v) if r not in ("no_spatial_cue", "too_long")})
