"""The zero-spoiler audit: measured on the labelled fixture set, and rule by rule."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ptdpo.data.schema import Item
from ptdpo.hints import AuditConfig, Hint, Region, Verdict, audit
from ptdpo.hints.numbers import find_mentions

FIXTURE = Path(__file__).parent / "fixtures" / "hints" / "labelled.jsonl"
RECALL_MIN = 0.95
FPR_MAX = 0.05


def _load():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def test_fixture_composition():
    recs = _load()
    assert len(recs) >= 200
    labels = Counter(r["label"] for r in recs)
    assert labels["leak"] >= 100 and labels["clean"] >= 100
    kinds = Counter(r["leak_type"] for r in recs if r["label"] == "leak")
    for k in ("answer_digits", "number_words", "answer_value", "choice_letter", "choice_text", "decisive",
              "concluding", "full_solution", "yes_no", "answer_string"):
        assert kinds[k] >= 3, k
    families = {r["item"]["meta"]["family"] for r in recs}
    assert {"counting", "geometry", "chart", "multiple_choice", "free_number", "fraction", "yes_no",
            "colour"} <= families
    assert any(r["hint"]["kind"] == "unstructured" for r in recs)


def test_labelled_set_recall_and_false_positive_rate(capsys, record_property):
    recs = _load()
    tp = fn = fp = tn = 0
    missed, false_pos = [], []
    by_type: Counter = Counter()
    by_type_hit: Counter = Counter()
    for r in recs:
        item = Item.from_dict(r["item"])
        v = audit(r["hint"], item)
        assert isinstance(v, Verdict) and v.item_id == item.id
        if r["label"] == "leak":
            by_type[r["leak_type"]] += 1
            if not v.passed:
                tp += 1
                by_type_hit[r["leak_type"]] += 1
            else:
                fn += 1
                missed.append(r["id"])
        elif v.passed:
            tn += 1
        else:
            fp += 1
            false_pos.append((r["id"], v.reasons))
    recall = tp / (tp + fn)
    fpr = fp / (fp + tn)
    per_type = ", ".join(f"{k} {by_type_hit[k]}/{n}" for k, n in sorted(by_type.items()))
    msg = (f"\n[hint audit] labelled set {len(recs)} hints ({tp + fn} leak, {fp + tn} clean): "
           f"recall {recall:.3f} ({tp}/{tp + fn}), false-positive rate {fpr:.3f} ({fp}/{fp + tn})\n"
           f"[hint audit] recall by leak type: {per_type}\n"
           f"[hint audit] missed: {missed}; false positives: {false_pos}")
    record_property("audit_recall", recall)
    record_property("audit_false_positive_rate", fpr)
    with capsys.disabled():  # shown with or without -s
        print(msg)
    assert recall >= RECALL_MIN, msg
    assert fpr <= FPR_MAX, msg


# ---------------------------------------------------------------------------------------------------
# Rule by rule
# ---------------------------------------------------------------------------------------------------


def _item(answer="12", question="How many apples are on the table?", **kw) -> Item:
    return Item(id="q", images=[], question=question, answer=answer, **kw)


def _hint(*steps, regions=None, traps=(), kind="structured") -> Hint:
    if kind == "unstructured":
        return Hint("q", kind="unstructured", text=" ".join(steps))
    regs = regions if regions is not None else [Region([100, 100, 400, 400], "table", "the apples are here")]
    return Hint("q", regions=regs, steps=list(steps), traps=list(traps))


def _reasons(hint, item, **cfg):
    v = audit(hint, item, AuditConfig(**cfg))
    return v


@pytest.mark.parametrize(
    "text, reason",
    [
        ("There are 12 apples.", "answer_string"),
        ("There are twelve apples.", "answer_value"),
        ("You should count a dozen.", "answer_value"),
        ("Twelve is what you should reach.", "answer_value"),
        ("The apples, 12cm each, are small.", "answer_string"),
    ],
)
def test_answer_value_forms_integer(text, reason):
    v = _reasons(_hint("Count the apples.", text), _item())
    assert not v.passed and reason in v.reasons and v.severity == "hard"


@pytest.mark.parametrize(
    "answer, text",
    [
        ("21", "You should find twenty-one."),
        ("21", "Twenty one apples."),
        ("105", "one hundred and five of them"),
        ("1/2", "Half of it is shaded: 0.5 of the area."),
        ("1/2", "It is 50% of the area."),
        ("0.5", "That is $\\frac{1}{2}$ of the area."),
        ("0.5", "It is \\dfrac12 of it."),
        ("0.5", "one half of the area"),
        ("50%", "a share of 0.5"),
        ("50%", "a share of 1/2"),
        ("3/8", "three eighths of the pie"),
        ("3/8", "37.5 percent of the pie"),
        ("0.25", "one in four marbles"),
        ("\\frac{2}{3}", "about 0.67 of the bar"),
        ("12 cm", "twelve centimetres long"),
        ("45°", "an angle of 45 degrees"),
        ("x = 5", "so x comes out at five"),
        ("12.5", "twelve and a half on average"),
        ("-3", "the minimum is -3"),
    ],
)
def test_answer_value_forms(answer, text):
    v = _reasons(_hint("Look carefully.", text), _item(answer=answer, question="What is the value shown?"))
    assert not v.passed and ({"answer_value", "answer_string"} & set(v.reasons)), (answer, text, v.details)


def test_math_verify_for_irrational_answers():
    item = _item(answer="2\\sqrt{3}", question="What is the length of AB?")
    for text in ("The side is $2\\sqrt{3}$.", "It is 2√3 units.", "roughly 3.46 long", "AB = $\\sqrt{12}$"):
        v = _reasons(_hint("Use the triangle.", text), item)
        assert not v.passed, (text, v.details)
    clean = _reasons(_hint("Use the Pythagorean theorem on the right triangle.", "The side AC is given as 2."), item)
    assert clean.passed, clean.details


@pytest.mark.parametrize(
    "text",
    [
        "Start from the box at [120, 12, 300, 400].",
        "Look at <|box_start|>(12,40),(300,400)<|box_end|> first.",  # rendered form (rejected by the schema)
        "The table spans (12,40),(300,400) in the image.",
        "Step 12: recount the front row.",
        "Use a^2 + b^2 = c^2 only if needed.",
        "The 12th apple from the left is bruised.",
        "A careful count beats a quick guess.",
        "Look at the left half of the table.",
        "One of the apples is partly hidden.",
        "Each one may hide another behind it.",
    ],
)
def test_not_leaks(text):
    item = _item()
    if "<|" in text:  # the schema forbids special tokens in fields: test the text-level rule directly
        assert all(m.value != 12 for m in find_mentions(text))
        return
    v = _reasons(_hint("Count the apples row by row.", text), item)
    assert v.passed and v.severity == "ok", v.details


def test_step_numbering_and_coordinates_equal_to_answer():
    item = _item(answer="2")
    h = _hint("1. Find the red apples.", "2. Count the green ones.", "Step 2: compare.", "(2) Recheck the box [2, 2, 200, 200].",
              regions=[Region([2, 2, 200, 200], "apples", "where to look")])
    assert audit(h, item).passed
    assert not audit(_hint("Count them: 2 in total."), item).passed


def test_answer_in_question_is_not_a_leak_unless_concluded():
    item = _item(answer="5", question="How many of the 5 circles are red?")
    assert audit(_hint("All 5 circles are in the left half; check each colour."), item).passed
    v = audit(_hint("Check each colour.", "So the answer is 5."), item)
    assert not v.passed and "concluding_phrase" in v.reasons


@pytest.mark.parametrize(
    "text",
    ["The correct option is C.", "Choose C.", "(C) fits best.", "C) is right.", "Answer: C", "Pick option c.",
     "Go with the third option.", "C is correct.", "It's 'C'.", "The answer is C."],
)
def test_choice_letter_forms(text):
    item = _item(answer="C", question="How many stars?", choices=["6", "7", "8", "9"])
    v = audit(_hint("Count the stars.", text), item)
    assert not v.passed and "choice_letter" in v.reasons, (text, v.details)


@pytest.mark.parametrize(
    "text",
    ["A careful count is needed.", "A star cut by the border counts.", "I would start at the top.",
     "Options A-D are close to each other.", "Compare your total with each of the values 6, 7, 8 and 9.",
     "Rule out any option that is below your count.", "a) count the big stars, b) count the small ones."],
)
def test_choice_letter_not_leaks(text):
    item = _item(answer="A", question="How many stars?", choices=["6", "7", "8", "9"])
    v = audit(_hint("Count the stars.", text), item)
    assert v.passed, (text, v.details)


def test_choice_text_and_value():
    item = _item(answer="B", question="Which object is above the cube?",
                 choices=["red sphere", "blue cylinder", "yellow cone"])
    assert "choice_text" in audit(_hint("The blue cylinder is above it."), item).reasons
    assert audit(_hint("Look straight up from the cube; ignore the red sphere."), item).passed
    assert audit(_hint("Candidates: red sphere, blue cylinder or yellow cone."), item).passed  # all options
    num = _item(answer="C", question="How many stars?", choices=["6", "7", "8", "9"])
    assert "choice_text" in audit(_hint("You will count eight."), num).reasons
    text_answer = _item(answer="blue", question="What colour is the ball?", choices=["red", "blue", "green"])
    v = audit(_hint("The ball is blue."), text_answer)
    assert not v.passed and "answer_string" in v.reasons


def test_decisive_values_from_solution():
    item = _item(answer="35", question="How many more units in 2019 than in 2015?",
                 solution="2019: 80 units; 2015: 45 units; 80 - 45 = 35.")
    v = audit(_hint("Read the 2019 bar; it reaches 80.", "Subtract."), item)
    assert not v.passed and "decisive_value" in v.reasons
    assert audit(_hint("Read the 2019 and 2015 bars.", "Gridlines are every 10 units."), item).passed
    # coordinates in the solution are not decisive values
    yn = _item(answer="yes", question="Is the cube left of the sphere?",
               solution="The cube [100, 400, 220, 520] is left of the sphere [600, 380, 760, 540].")
    assert audit(_hint("Compare the boxes [100, 400, 220, 520] and [600, 380, 760, 540]."), yn).passed
    # a small number about something else is not the solution's value; about the same thing it is
    cnt = _item(answer="7", solution="4 red circles in the left cluster and 3 near the bottom right.")
    assert audit(_hint("The image holds shapes of 3 or more colours."), cnt).passed
    assert not audit(_hint("Expect 3 near the bottom right."), cnt).passed


def test_concluding_phrases():
    item = _item()
    assert not audit(_hint("Count them, which gives 12."), item).passed
    soft = audit(_hint("Count them; the answer is the number of red apples you find."), item)
    assert soft.passed and soft.severity == "soft" and "concluding_phrase" in soft.reasons
    assert audit(_hint("If the rows are equal, the answer is the same for both."), item).passed
    yn = _item(answer="no", question="Are there more circles than squares?")
    assert not audit(_hint("Count both.", "So the answer is no."), yn).passed
    assert audit(_hint("Count both.", "Answer yes only if circles outnumber squares."), yn).passed
    assert audit(_hint("Count both; equal counts mean 'no' as well."), yn).passed


def test_yes_no_verdicts_and_statements():
    item = _item(answer="yes", question="Is the red cube to the left of the green sphere?")
    for text in ("Yes — it is clearly on the left.", "Definitely yes.", "The red cube is to the left of the green sphere."):
        v = audit(_hint("Locate both.", text), item)
        assert not v.passed and "answer_string" in v.reasons, text
    for text in ("Decide yes or no from the positions.", "Check whether the red cube is left of the green sphere.",
                 "No need to measure exactly."):
        assert audit(_hint("Locate both.", text), item).passed, text


def test_colour_and_name_answers_word_boundaries():
    item = _item(answer="red", question="What colour is the largest sphere?")
    assert not audit(_hint("The largest one is red."), item).passed
    assert audit(_hint("Ignore the reddish glare; compare sizes."), item).passed  # 'reddish' is not 'red'
    assert not audit(_hint("Compare sizes.", regions=[Region([1, 1, 50, 50], "red sphere", "big")]), item).passed


def test_full_solution_and_region_count():
    item = _item(answer="5", question="How many cubes?", solution="3 large cubes and 2 small cubes: 3 + 2 = 5.")
    v = audit(_hint("Large cubes: 3 + 0 = 3.", "Small: 1 + 1 = 2.", "Total 3 + 2 = 5."), item)
    assert not v.passed and "full_solution" in v.reasons
    regs = [Region([10 * i, 10, 10 * i + 5, 20], "cube", "one cube") for i in range(1, 6)]
    v = audit(_hint("Count the boxes.", regions=regs), item)
    assert not v.passed and "answer_value" in v.reasons
    long_sol = _item(answer="9", question="What is the total?",
                     solution="Count the red balls on the left shelf and then count the blue balls on the right shelf "
                              "and add the two numbers together to get the total")
    h = _hint("Count the red balls on the left shelf and then count the blue balls on the right shelf",
              "Add the two numbers together to get the total")
    assert "full_solution" in audit(h, long_sol).reasons


def test_length_spatial_cue_malformed():
    item = _item()
    v = audit(_hint(*[f"Look at part {c} of the table carefully and slowly." for c in "abcdefghij"]), item)
    assert not v.passed and "too_long" in v.reasons
    v = audit(_hint("x" * 290, "y" * 290, "z" * 290, "w" * 290, "v" * 290), item)
    assert "too_long" in v.reasons
    soft = audit(_hint("Count every apple.", regions=[]), item)
    assert soft.passed and soft.reasons == ["no_spatial_cue"] and soft.severity == "soft"
    assert not audit(_hint("Count every apple.", regions=[]), item, AuditConfig(require_regions=True)).passed
    assert not audit(_hint("Count every apple.", regions=[]), item, AuditConfig(fail_on_soft=True)).passed
    u = audit(_hint("Count every apple.", kind="unstructured"), item)
    assert u.passed and "no_spatial_cue" in u.reasons
    assert audit(_hint("Count every apple on the left.", kind="unstructured"), item).reasons == []
    bad = audit({"item_id": "q", "steps": []}, item)
    assert not bad.passed and bad.reasons == ["malformed"] and "steps" in bad.details[0]
    other = audit(Hint("other", steps=["Count."]), item)
    assert other.reasons == ["malformed"]
    none = audit(None, item)
    assert none.reasons == ["malformed"] and not none.passed


def test_verdict_contract():
    v = audit(_hint("There are twelve apples."), _item())
    d = v.to_dict()
    assert set(d) == {"item_id", "passed", "reasons", "severity", "details"}
    assert d["item_id"] == "q" and d["passed"] is False and d["severity"] == "hard"
    assert d["reasons"] == ["answer_value"] and "twelve" in d["details"][0]
    with pytest.raises(ValueError, match="unknown audit config key"):
        AuditConfig.from_dict({"max_char": 3})
