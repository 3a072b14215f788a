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

What the checks compare against (:class:`ItemFacts`, in ``ptdpo.hints.facts``) is computed once per item.
The correct option is the one ``ptdpo.answers.gold_choice`` names, as for the reward, so a gold answer
written as the option's text ("The cube") is checked for its letter too. Values of expressions
("$\\sqrt{12}$") come from the shared math-verify judge with its deadline (``math_timeout_s``): an
expression that would take hours to evaluate counts as no value instead of hanging the audit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ptdpo.data.schema import Item
from ptdpo.hints.facts import (
    AuditConfig,
    ItemFacts,
    context_words,
    expression_value,
    item_facts,
    math_form,
    norm,
    phrase_regex,
    trigrams,
)
from ptdpo.hints.numbers import Mention, Target, find_mentions, values_match
from ptdpo.hints.schema import UNSTRUCTURED, Hint, HintError

__all__ = [
    "REASONS",
    "SEVERITIES",
    "AuditConfig",
    "ItemFacts",
    "Verdict",
    "audit",
    "audit_text",
    "feedback_text",
    "hard_reasons",
    "item_facts",
]

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
class Verdict:
    item_id: str
    passed: bool
    reasons: list[str]
    severity: str
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Text checks (what an item's facts are: ptdpo.hints.facts)
# ------------------------------------------------------------------------------------------------

_HEDGES = re.compile(
    r"(?i)\b(?:whether|if|check|verify|determine|decide|compare|confirm|see|ask|test|judge|find out|"
    r"figure out|unless|might|may|could|possibly|seems?|appears?|looks? like)\b|\?"
)
_COMPARATIVE = re.compile(r"(?i)\b(?:\w+er|\w+est|more|less|most|least|same|equal|bigger|larger|smaller)\b")
_SENTENCE = re.compile(r"[^.!?;\n]+(?:[.!?;]+|$)")


def _mentions_value(mentions: Iterable[Mention], targets: Sequence[Target]) -> Mention | None:
    for m in mentions:
        if any(values_match(m, t) for t in targets):
            return m
    return None


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
                code = "answer_string" if norm(m.text) == f.answer_norm else "answer_value"
                ctx.flag(code, "hard", where, f"'{m.text}' = answer {f.answer!r} ({_snippet(text, m.start, m.end)})")
        if any(t.value == 0 for t in f.targets) and (zm := _ZERO.search(text)):
            ctx.flag("answer_value", "hard", where, f"'{zm.group(0)}' states a count of zero")
        if f.polygon_word is not None and (pm := f.polygon_word.search(text)):
            ctx.flag("answer_value", "hard", where, f"'{pm.group(0)}' names a shape with {f.answer} sides")
    if f.math_key and len(f.math_key) >= 2 and f.math_key in math_form(text):
        ctx.flag("answer_string", "hard", where, f"answer {f.answer!r} written out")
    elif f.math_gold is not None:
        gold = f.math_gold
        for m in mentions:  # decimal approximations: "28.27" for 9\pi
            if m.decimals and abs(float(m.value) - round(gold, m.decimals)) < 10 ** -(m.decimals + 3):
                ctx.flag("answer_value", "hard", where, f"'{m.text}' approximates answer {f.answer!r}")
                break
        for seg in _math_segments(text):
            v = expression_value(seg, ctx.config)
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
                if small and ctx_words and not (context_words(text, m.start, m.end) & ctx_words):
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
    if f.math_key and len(f.math_key) >= 2 and f.math_key in math_form(window):
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
    others = [o for o in f.alternatives if norm(o) != f.answer_norm and phrase_regex(o)]
    if any(phrase_regex(o).search(sent) for o in others):  # type: ignore[union-attr]
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
        overlap = len(trigrams(joined) & facts.solution_trigrams) / len(facts.solution_trigrams)
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
