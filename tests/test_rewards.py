"""Verifiable rewards: extraction, matching, format, R = 0.9 acc + 0.1 fmt, bounded time, threads."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from ptdpo.answers import answers_match, extract_answer, match_answer, normalize_text, set_math_backend
from ptdpo.data.schema import Item
from ptdpo.rewards import RewardResult, check_format, score_batch, score_response

# --------------------------------------------------------------------------------------- extraction table

EXTRACT_CASES = [
    # (model output, extracted answer)
    ("<think>work</think><answer>42</answer>", "42"),
    ("<think>w</think>\n<answer> \\boxed{\\frac{1}{2}} </answer>", "\\frac{1}{2}"),
    ("so \\boxed{\\frac{a}{b^{2}}} done", "\\frac{a}{b^{2}}"),
    ("\\boxed{\\left\\{1, 2\\right\\}}", "\\left\\{1, 2\\right\\}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),  # last box wins
    ("\\boxed{3} and a broken \\boxed{4", "3"),  # the unclosed box is ignored
    ("\\boxed{1 + {2}", None),  # unbalanced braces, nothing complete
    ("<answer>3</answer> later <answer>4</answer>", "4"),  # last answer block wins
    ("<think>maybe \\boxed{3}</think><answer>5</answer>", "5"),  # the answer block beats a box
    ("<think>long thought</think><answer>7", "7"),  # truncated answer block
    ("Reasoning here.\nAnswer: 12", "12"),
    ("steps\n**Final Answer:** $7$", "7"),
    ("I think\nThe answer is: (B).", "(B)"),
    ("<think>r</think>\n\nB", "B"),  # bare answer after the think block
    ("12", "12"),
    ("$\\dfrac{3}{4}$", "\\dfrac{3}{4}"),
    ("<answer>$x = 2$</answer>", "x = 2"),
    ("<answer>yes.</answer>", "yes"),
    ("", None),
    ("   \n ", None),
    ("<answer></answer>", None),
    ("a long rambling line without any final answer marker that goes on and on and on", None),
    ("<think>only thinking and then the output was cut", None),
    ("<answer>4</answer><|im_end|>", "4"),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_without_bare_fallback():
    assert extract_answer("12", allow_bare=False) is None
    assert extract_answer("Answer: 12", allow_bare=False) == "12"


GARBAGE = [
    None,
    b"\xff\xfe\x00\x80garbage",
    bytes(random.Random(0).randrange(256) for _ in range(5000)),
    "".join(chr(random.Random(1).randrange(32, 0x2FFF)) for _ in range(5000)),
    "\\boxed{" * 50_000,
    "}" * 10_000 + "\\boxed{",
    "<answer>" * 10_000,
    "</think>" * 1000 + "<think>",
    "x" * 3_000_000,
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    12345,
    object(),
    "None",
    "null",
    "NaN",
    "<think></think><answer>None</answer>",
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_never_raises_and_scores_zero(text):
    extract_answer(text)
    ok, _ = check_format(text)
    assert ok is False
    r = score_response(text, "17")
    assert isinstance(r, RewardResult)
    assert r.accuracy == 0.0 and r.reward == 0.0


def test_huge_output_is_fast_enough_to_not_hang():
    # not a wall-clock assertion (shared machine), only that a multi-megabyte output completes
    text = "blah " * 400_000 + "<answer>\\boxed{5}</answer>"
    assert extract_answer(text) == "5"
    assert score_response(text, "5").accuracy == 1.0


# --------------------------------------------------------------------------------------- matching table

LETTERS3 = ["12", "15", "18"]
COLOURS = ["red", "green", "blue", "yellow"]

MATCH_CASES = [
    # (prediction, gold, choices, answer_type, precision, expected)
    # numbers and expressions
    ("\\frac{1}{2}", "0.5", None, None, None, True),
    ("0.5", "\\frac{1}{2}", None, None, None, True),
    ("\\frac12", "0.5", None, "number", None, True),
    ("\\dfrac{3}{4}", "0.75", None, None, None, True),
    ("3/4", "\\dfrac{3}{4}", None, "expression", None, True),
    ("2\\sqrt{3}", "\\sqrt{12}", None, "expression", None, True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", None, None, None, True),
    ("1.41", "\\sqrt{2}", None, None, None, True),  # rounded decimal of an exact value
    ("1.4", "\\sqrt{2}", None, None, None, False),  # one decimal is not enough
    ("0.33", "\\frac{1}{3}", None, None, None, True),
    ("\\pi", "3.14", None, None, None, True),  # exact prediction, rounded gold
    ("1.414", "1.41", None, None, None, False),  # a decimal prediction claims its own precision...
    ("0.254", "0.25", None, None, None, False),
    ("1.414", "1.41", None, None, 2, True),  # ...unless the item gives one (MathVista's precision)
    ("1.42", "1.41", None, None, 2, False),
    ("1,000", "1000", None, None, None, True),
    ("1,234,567", "1234567", None, "number", None, True),
    ("50\\%", "50", None, None, None, True),
    ("50%", "0.5", None, None, None, True),
    ("12 cm", "12", None, None, None, True),
    ("12 \\text{ cm}", "12", None, "number", None, True),
    ("120^\\circ", "120", None, None, None, True),
    ("6.0", "6", None, None, None, True),
    ("x = 3", "3", None, None, None, True),
    ("x^2+1", "1+x^2", None, "expression", None, True),
    ("-3", "3", None, None, None, False),
    ("3", "4", None, None, None, False),
    ("2\\pi", "6.28", None, None, None, True),  # rounded gold
    ("2\\pi", "6.29", None, None, None, False),
    ("three", "3", None, "number", None, True),
    ("four", "3", None, None, None, False),
    ("9^{9^{9}}", "3", None, None, None, False),  # refused, never evaluated
    # multiple choice: gold letter with choices
    ("B", "B", LETTERS3, None, None, True),
    ("(B)", "B", LETTERS3, None, None, True),
    ("B.", "B", LETTERS3, None, None, True),
    ("Option B", "B", LETTERS3, None, None, True),
    ("option (b)", "B", LETTERS3, None, None, True),
    ("B) 15", "B", LETTERS3, None, None, True),
    ("\\text{B}", "B", LETTERS3, None, None, True),
    ("The answer is B", "B", LETTERS3, None, None, True),
    ("15", "B", LETTERS3, None, None, True),  # option text
    ("\\frac{30}{2}", "B", LETTERS3, None, None, True),  # math-equivalent to one option
    ("C", "B", LETTERS3, None, None, False),  # wrong letter
    ("18", "B", LETTERS3, None, None, False),  # wrong option text
    ("D", "B", LETTERS3, None, None, False),  # letter out of range
    ("no idea", "B", LETTERS3, None, None, False),
    # gold is the option text (MathVista)
    ("B", "green", COLOURS, None, None, True),
    ("Green", "green", COLOURS, None, None, True),
    ("A", "green", COLOURS, None, None, False),
    # gold letter without choices (MathVerse vision-only, MMMU-Pro vision), letter sets (LogicVista)
    ("(C)", "C", None, None, None, True),
    ("A", "C", None, "choice", None, False),
    ("A, C", "A, C", None, None, None, True),
    ("C and A", "A, C", None, None, None, True),
    ("A", "A, C", None, None, None, False),
    # yes/no, short words, colours
    ("Yes", "yes", None, None, None, True),
    ("yes.", "Yes", None, "text", None, True),
    ("No", "yes", None, None, None, False),
    ("Red", "red", None, None, None, True),
    ("the red", "red", None, None, None, True),
    ("\\text{red}", "red", None, "text", None, True),
    ("der", "red", None, None, None, False),  # same product of symbols for sympy: never math-compared
    ("blue", "red", None, None, None, False),
    ("cyan", "red", None, "text", None, False),
    # missing answers
    (None, "3", None, None, None, False),
    ("", "3", None, None, None, False),
    ("3", "", None, None, None, False),
]


@pytest.mark.parametrize("pred,gold,choices,atype,precision,expected", MATCH_CASES)
def test_answers_match(pred, gold, choices, atype, precision, expected):
    got, reason = match_answer(pred, gold, choices, answer_type=atype, precision=precision)
    assert got is expected, reason
    assert answers_match(pred, gold, choices, answer_type=atype, precision=precision) is expected


def test_match_reasons():
    assert match_answer("B", "B", LETTERS3) == (True, "choice_letter")
    assert match_answer("15", "B", LETTERS3) == (True, "choice_text")
    assert match_answer("C", "B", LETTERS3) == (False, "wrong_choice")
    assert match_answer("0.5", "\\frac12") == (True, "math_equal")
    assert match_answer("red", "red") == (True, "exact")
    assert match_answer(None, "3") == (False, "no_answer")
    assert match_answer("9^{9^{9}}", "3") == (False, "unsafe_expression")


def test_normalize_text_keeps_signs_and_decimals():
    assert normalize_text("The answer is: -3.5!") == "-3.5"
    assert normalize_text("The Red.") == "red"
    assert normalize_text("\\text{Yes}") == "yes"


# --------------------------------------------------------------------------------------- format

FORMAT_CASES = [
    # (text, think_prefilled, ok, reason)
    ("<think>r</think><answer>3</answer>", False, True, "ok"),
    ("  <think>\nr\n</think>\n\n<answer> 3 </answer>\n<|im_end|>", False, True, "ok"),
    ("r</think><answer>3</answer>", False, False, "think_tags"),
    ("r</think><answer>3</answer>", True, True, "ok"),  # Qwen3-Thinking: the prompt opened <think>
    ("<think>r</think><answer>3</answer>", True, True, "ok"),
    ("<answer>3</answer>", False, False, "think_tags"),
    ("<think>r</think>", False, False, "answer_tags"),
    ("<think>r</think><answer>3</answer><answer>4</answer>", False, False, "answer_tags"),
    ("<think>a</think><think>b</think><answer>3</answer>", False, False, "think_tags"),
    ("hello <think>r</think><answer>3</answer>", False, False, "text_before_think"),
    ("<think> </think><answer>3</answer>", False, False, "empty_think"),
    ("<think>r</think> so <answer>3</answer>", False, False, "text_between_think_and_answer"),
    ("<think>r</think><answer>3</answer> trailing", False, False, "text_after_answer"),
    ("<think>r</think><answer> </answer>", False, False, "empty_answer"),
    ("<think>r<answer>3</answer></think>", False, False, "text_between_think_and_answer"),
    ("", False, False, "empty"),
]


@pytest.mark.parametrize("text,prefilled,ok,reason", FORMAT_CASES)
def test_check_format(text, prefilled, ok, reason):
    assert check_format(text, think_prefilled=prefilled) == (ok, reason)


# --------------------------------------------------------------------------------------- reward


def test_reward_weights():
    good = "<think>2+2</think><answer>4</answer>"
    r = score_response(good, "4")
    assert (r.reward, r.accuracy, r.format, r.extracted) == (pytest.approx(1.0), 1.0, 1.0, "4")
    r = score_response("<think>2+2</think><answer>5</answer>", "4")
    assert r.reward == pytest.approx(0.1) and r.reason == "mismatch" and r.format_reason == "ok"
    r = score_response("\\boxed{4}", "4")
    assert r.reward == pytest.approx(0.9) and r.format == 0.0 and r.extracted_by == "boxed"
    r = score_response(good, "4", accuracy_weight=0.5, format_weight=0.5)
    assert r.reward == pytest.approx(1.0)
    r = score_response("\\boxed{4}", "4", accuracy_weight=0.5, format_weight=0.5)
    assert r.reward == pytest.approx(0.5)
    r = score_response("4</think><answer>4</answer>", "4", think_prefilled=True)
    assert r.format == 1.0
    assert score_response("", "4").reason == "no_answer"


def _timeout_backend_case(backend: str):
    set_math_backend(backend)
    try:
        slow = "<answer>\\int_0^1 e^{x^2} dx</answer>"  # sympy needs about a second for this one
        r = score_response(slow, "3", timeout_s=0.01)
        assert (r.accuracy, r.reason) == (0.0, "timeout")
        # the judge recovers: the next comparison works
        assert score_response("<answer>0.25</answer>", "1/4").accuracy == 1.0
    finally:
        set_math_backend("process")


def test_timeout_scores_zero_with_reason_process():
    _timeout_backend_case("process")


def test_timeout_scores_zero_with_reason_thread():
    _timeout_backend_case("thread")


def _items():
    return [
        Item(id="a", images=[], question="q", answer="0.5"),
        Item(id="b", images=[], question="q", answer="B", choices=["1", "2", "3"]),
        Item(id="c", images=[], question="q", answer="yes"),
        Item(id="d", images=[], question="q", answer="1.41", meta={"precision": 2}),
        {"answer": "red", "choices": None, "meta": {"answer_type": "text"}},
    ]


TEXTS = [
    "<think>t</think><answer>\\frac{1}{2}</answer>",
    "<think>t</think><answer>(B)</answer>",
    "<think>t</think><answer>No</answer>",
    "<think>t</think><answer>1.414</answer>",
    "Red",
]
EXPECTED_ACC = [1.0, 1.0, 0.0, 1.0, 1.0]


def test_score_batch_order_and_values():
    out = score_batch(TEXTS, _items(), max_workers=3)
    assert [r.accuracy for r in out] == EXPECTED_ACC
    assert [r.format for r in out] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert out[3].reason == "rounded_to_precision"
    assert score_batch([], []) == []
    with pytest.raises(ValueError):
        score_batch(["x"], [])


def test_score_batch_from_several_threads_at_once():
    items = _items() * 6
    texts = TEXTS * 6
    expected = EXPECTED_ACC * 6
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run(k: int) -> None:
        try:
            barrier.wait()
            order = list(range(len(items)))
            random.Random(k).shuffle(order)  # every thread scores the same items in its own order
            out = score_batch([texts[i] for i in order], [items[i] for i in order], max_workers=3)
            acc = [0.0] * len(items)
            for pos, i in enumerate(order):
                acc[i] = out[pos].accuracy
            results[k] = acc
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(results) == 4
    for acc in results.values():
        assert acc == expected


def test_process_worker_survives_and_is_replaced_after_kill():
    from ptdpo.answers import judge as math_judge

    assert answers_match("0.5", "1/2")
    judge = math_judge._judge()
    if isinstance(judge, math_judge._ProcessJudge):
        for w in list(judge._all):
            os.kill(w.proc.pid, 9)
        time.sleep(0.1)
        math_judge._CACHE.clear()
        assert answers_match("0.75", "3/4")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_workers():
    assert answers_match("0.5", "1/2")  # the parent's judge exists
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's worker pipes
        try:
            ok = answers_match("0.2", "1/5") and not answers_match("0.3", "1/5")
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert answers_match("0.125", "1/8")  # the parent's workers are intact
