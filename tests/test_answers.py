"""ptdpo.answers: one choice resolution for rewards, the audit, item loading and prompts; one math judge
(with its deadline) for rewards and the audit; one alphabet of option letters."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest

from ptdpo.answers import (
    CHOICE_LETTERS,
    evaluate,
    gold_choice,
    letter_choice,
    match_answer,
    math_value,
    option_hits,
    predicted_choice,
    set_math_backend,
    text_choice,
)
from ptdpo.answers import judge as math_judge
from ptdpo.data import Item, load_items
from ptdpo.hints import AuditConfig, audit, item_facts, render_answer
from ptdpo.hints.facts import expression_value
from ptdpo.rewards import score_response

ROOT = Path(__file__).resolve().parent.parent
CHOICES = ["sphere", "cube", "cone"]
QUESTION = "Which shape sits in the top left corner?"


def _item(answer: str, choices: list[str] | None = CHOICES, item_id: str = "q") -> Item:
    return Item(id=item_id, images=[], question=QUESTION, answer=answer, choices=choices)


def _hint(text: str, item_id: str = "q") -> dict:
    return {"item_id": item_id, "kind": "unstructured", "text": text}


def _answered(answer: str) -> str:
    return f"<think>look</think><answer>{answer}</answer>"


# ------------------------------------------------------------------------------- gold answers, one per form

GOLD_FORMS = [
    "B",  # a letter
    "(B)",
    "B.",
    "B)",
    "Option B",
    "answer: B",
    "\\text{B}",
    "b",  # a lower-case letter that is no option's text
    "B) cube",  # a letter with the option's text
    "(B) cube",
    "cube",  # the option's text
    "The cube",  # ... with an article
    "Cube.",  # ... with case and punctuation
    "\\text{cube}",
]


@pytest.mark.parametrize("gold", GOLD_FORMS)
def test_every_gold_form_names_the_same_option_for_reward_audit_and_data(gold):
    item = _item(gold)
    # the shared function
    assert gold_choice(gold, CHOICES) == {1}
    # the reward: the letter and the option text score, the other options do not
    for pred, acc in (("B", 1.0), ("cube", 1.0), ("The cube", 1.0), ("A", 0.0), ("cone", 0.0)):
        assert score_response(_answered(pred), gold, CHOICES).accuracy == acc, (gold, pred)
    # the audit: the same option, its letter, its text
    facts = item_facts(item)
    assert (facts.choice_index, facts.choice_letter, facts.choice_text) == (1, "B", "cube")
    verdict = audit(_hint("Option B is correct."), item)
    assert not verdict.passed and "choice_letter" in verdict.reasons, verdict.details
    # the data layer and the teacher's answer context
    assert item.answer_text == "cube"
    assert render_answer(item) == "Reference answer: B (cube)"


def test_the_loader_reads_every_gold_form_as_the_same_letter(tmp_path):
    rows = [{"id": f"q{i}", "question": QUESTION, "answer": g, "choices": CHOICES} for i, g in enumerate(GOLD_FORMS)]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items({"format": "jsonl", "path": str(path), "check_images": False})
    assert [it.answer for it in items] == ["B"] * len(GOLD_FORMS)


def test_index_answers_only_when_the_dataset_says_so(tmp_path):
    assert gold_choice("1", CHOICES, "index") == {1}
    assert gold_choice("1.0", CHOICES, "index") == {1}
    for bad in ("3", "-1", "1.5", "nan", "inf", "B"):
        assert gold_choice(bad, CHOICES, "index") is None, bad
    assert gold_choice("1", CHOICES) is None  # "1" could be an option's text: not an index in auto
    assert gold_choice("1", ["0", "1", "2"]) == {1}  # ... and here it is one
    path = tmp_path / "idx.jsonl"
    path.write_text(json.dumps({"id": "i", "question": "?", "answer": 2, "choices": CHOICES}) + "\n")
    (it,) = load_items({"format": "jsonl", "path": str(path), "answer_format": "index"})
    assert it.answer == "C"
    path.write_text(json.dumps({"id": "i", "question": "?", "answer": 3, "choices": CHOICES}) + "\n")
    with pytest.raises(ValueError, match=r"field 'answer': '3' is not an option index 0..2"):
        load_items({"format": "jsonl", "path": str(path), "answer_format": "index"})


def test_letter_sets():
    assert gold_choice("A, C", CHOICES) == {0, 2}
    assert gold_choice("A and C", CHOICES) == {0, 2}
    assert gold_choice("A, D", CHOICES) is None  # D is past the options
    assert match_answer("C and A", "A, C", CHOICES) == (True, "choice_letter")
    assert match_answer("A", "A, C", CHOICES) == (False, "wrong_choice")
    assert score_response(_answered("(A) (C)"), "A, C", CHOICES).accuracy == 1.0
    # one correct option is what the audit and the data layer know: a set is no single option
    assert item_facts(_item("A, C")).choice_index is None
    assert _item("A, C").answer_text == "A, C"


def test_formats_letter_and_text_accept_only_their_form():
    assert gold_choice("b", CHOICES, "letter") == {1}
    assert gold_choice("cube", CHOICES, "letter") is None
    assert gold_choice("The cube", CHOICES, "text") == {1}
    assert gold_choice("B", CHOICES, "text") is None
    with pytest.raises(ValueError, match="answer_format"):
        gold_choice("B", CHOICES, "number")


def test_without_choices_only_capital_letters_name_an_option():
    assert gold_choice("B", None) == {1}
    assert gold_choice("A, C", None) == {0, 2}
    assert gold_choice("a", None) is None  # a word, not option A
    assert gold_choice("cube", None) is None
    assert match_answer("b", "b") == (True, "exact")


def test_an_option_text_that_starts_like_a_letter_is_that_option():
    names = ["G. Washington", "A. Lincoln"]
    assert gold_choice("A. Lincoln", names) == {1}  # the option's text, not option A
    assert gold_choice("A", names) == {0}
    assert match_answer("B", "A. Lincoln", names) == (True, "choice_letter")
    assert match_answer("A. Lincoln", "B", names) == (True, "choice_text")


def test_option_text_matches_exact_then_case_then_normalised():
    opts = ["Cube", "cube."]
    assert option_hits("Cube", opts) == [0]
    assert option_hits("cube.", opts) == [1]
    assert option_hits("CUBE", opts) == [0]
    assert option_hits("the cube", opts) == [0, 1]  # equal once normalised: ambiguous
    assert text_choice("the cube", opts) is None
    assert option_hits("", opts) == []


def test_a_lower_case_letter_that_is_an_option_text_is_that_option():
    opts = ["c", "a", "b"]
    assert gold_choice("a", opts) == {1}  # the option "a", not option A
    assert gold_choice("A", opts) == {0}  # a capital letter is a letter
    assert letter_choice("a", 3) == {0} and letter_choice("a", 3, strict_case=True) is None


# ------------------------------------------------------------------------------------- predictions

@pytest.mark.parametrize(
    ("pred", "how"),
    [
        ("B", "choice_letter"),
        ("(b)", "choice_letter"),
        ("Option B", "choice_letter"),
        ("The answer is B", "choice_letter"),
        ("\\text{B}", "choice_letter"),
        ("B) cube", "choice_letter"),
        ("cube", "choice_text"),
        ("The cube", "choice_text"),
        ("Cube.", "choice_text"),
    ],
)
def test_prediction_forms(pred, how):
    assert predicted_choice(pred, CHOICES) == ({1}, how)
    assert match_answer(pred, "B", CHOICES) == (True, how)
    assert match_answer(pred, "The cube", CHOICES) == (True, how)


def test_prediction_math_equal_to_one_option_and_unresolved():
    opts = ["\\frac{1}{2}", "2", "3"]
    assert predicted_choice("0.5", opts) == ({0}, "choice_math")
    assert predicted_choice("E", CHOICES) == (None, "choice_unresolved")  # past the options
    assert predicted_choice("pyramid", CHOICES) == (None, "choice_unresolved")
    assert match_answer("E", "B", CHOICES) == (False, "choice_unresolved")


def test_choice_letters_are_one_alphabet():
    assert CHOICE_LETTERS == "".join(chr(c) for c in range(ord("A"), ord("Z") + 1))


# ------------------------------------------------------------------------------------------ the audit

CUBE = _item("The cube")


@pytest.mark.parametrize(
    "text",
    ["Option B is correct.", "The answer is cube.", "It is (B).", "Pick the second option.", "Go with the cube."],
)
def test_audit_rejects_the_option_of_an_option_text_gold(text):
    verdict = audit(_hint(text + " Look at the top left corner."), CUBE)
    assert not verdict.passed, verdict.details
    assert {"choice_letter", "answer_string"} & set(verdict.reasons), verdict.details


def test_audit_passes_a_clean_hint_for_an_option_text_gold():
    verdict = audit(_hint("Look at the top left corner and compare the outlines of the three shapes there."), CUBE)
    assert verdict.passed and verdict.reasons == [], verdict.details


def test_audit_expression_values_come_from_the_judge():
    cfg = AuditConfig()
    assert expression_value("2\\sqrt{3}", cfg) == pytest.approx(12 ** 0.5)
    assert expression_value("$\\frac{\\pi}{4}$", cfg) == pytest.approx(0.7853981633974483)
    assert expression_value("$x + 1$", cfg) is None  # not a number
    assert expression_value("$" + "1+" * 70 + "1$", cfg) is None  # longer than the audit evaluates
    assert evaluate("2^{2^{30}}")[1] == "unsafe_expression"
    item = _item("2\\sqrt{3}", None, "r")
    verdict = audit(_hint("The diagonal on the left is $\\sqrt{12}$.", "r"), item)
    assert "answer_value" in verdict.reasons, verdict.details


PATHOLOGICAL = "$(99999!)!$"  # passes the unsafe-expression filter; sympy computes it for hours


def test_judge_deadline_on_a_pathological_expression():
    if not isinstance(math_judge._judge(), math_judge._ProcessJudge):
        pytest.skip("a thread cannot be stopped: the runaway computation would keep a core busy")
    assert evaluate(PATHOLOGICAL, timeout_s=1.0) == (None, "timeout")
    assert math_value("\\sqrt{16}") == 4.0  # the killed worker was replaced


def test_audit_survives_a_hostile_expression_in_a_hint():
    if not isinstance(math_judge._judge(), math_judge._ProcessJudge):
        pytest.skip("a thread cannot be stopped: the runaway computation would keep a core busy")
    item = _item("2\\sqrt{3}", None, "h")
    hint = _hint(f"First {PATHOLOGICAL}, then the side on the left is $\\sqrt{{12}}$.", "h")
    out = []
    # the audit runs in a thread only so that a hang fails this test instead of blocking the suite
    th = threading.Thread(target=lambda: out.append(audit(hint, item, AuditConfig(math_timeout_s=1.0))),
                          daemon=True)
    th.start()
    th.join(300)
    assert out, "the audit did not return: an expression in a hint hung it"
    assert "answer_value" in out[0].reasons, out[0].details  # the next expression still counts


def test_value_requests_in_the_thread_backend():
    before = math_judge._BACKEND
    try:
        set_math_backend("thread")
        assert math_value("3\\sqrt{2}", timeout_s=30) == pytest.approx(3 * 2 ** 0.5)
        assert evaluate("$y^2$", timeout_s=30) == (None, "no_value")
    finally:
        set_math_backend(before)


# ------------------------------------------------------------------------------- one alphabet in the code

def _alphabet_copies(path: Path, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, what) for each place in a source file that defines option letters: a name
    CHOICE_LETTERS assigned, a string that starts the alphabet ("ABCD..."), string.ascii_uppercase or
    ascii_letters, chr() arithmetic on 65, 97 or ord(...)."""
    tree = ast.parse(path.read_text(), str(path))
    rel = str(path.relative_to(root))
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "CHOICE_LETTERS" for t in targets):
                found.append((rel, line, "assigns CHOICE_LETTERS"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 4:
            if node.value.upper().startswith("ABCD"):
                found.append((rel, line, "spells the alphabet"))
        elif isinstance(node, ast.Attribute) and node.attr in ("ascii_uppercase", "ascii_letters"):
            found.append((rel, line, f"uses string.{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "chr":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.BinOp) and any(
                (isinstance(x, ast.Constant) and x.value in (65, 97))
                or (isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id == "ord")
                for x in (arg.left, arg.right)
            ):
                found.append((rel, line, "computes a letter with chr()"))
    return found


def test_choice_letters_are_defined_exactly_once():
    files = [p for d in ("ptdpo", "steps", "flows") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    copies = [c for p in files for c in _alphabet_copies(p)]
    assert sorted((f, what) for f, _, what in copies) == [
        ("ptdpo/answers/words.py", "assigns CHOICE_LETTERS"),
        ("ptdpo/answers/words.py", "spells the alphabet"),
    ], copies
    assert len({line for _, line, _ in copies}) == 1, copies  # one statement


def test_the_alphabet_scan_finds_copies(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import string\n"
        "LETTERS = 'ABCDEFGH'\n"
        "x = [chr(65 + i) for i in range(3)]\n"
        "y = chr(ord('A') + 2)\n"
        "z = string.ascii_uppercase\n"
        "CHOICE_LETTERS: str = LETTERS\n"
    )
    found = _alphabet_copies(probe, tmp_path)
    assert [what for _, _, what in sorted(found, key=lambda c: c[1])] == [
        "spells the alphabet", "computes a letter with chr()", "computes a letter with chr()",
        "uses string.ascii_uppercase", "assigns CHOICE_LETTERS"]
