"""The paper's prompt and format reward (METHOD.md 5): PAPO's math-perception template, EasyR1's / the
PTD-PO release's boxed format regex, the last-box extraction, and the old <answer> format as a named option.
The format verdicts are checked against the released regular expressions, written out here as the reference."""

from __future__ import annotations

import re

import pytest

from ptdpo.answers.extract import extract_boxed
from ptdpo.data.schema import Item
from ptdpo.hints.render import teacher_messages
from ptdpo.hints.schema import Hint
from ptdpo.prompts import PAPER_TEMPLATE, PROMPT_TEMPLATES, build_messages, get_template
from ptdpo.rewards import check_format, score_batch, score_response

# The released rewards, verbatim patterns: EasyR1 examples/reward_function/math.py (model writes <think>)
# and PTD-PO's qwen3_vl_think.py (the chat template opened <think>), both used with re.fullmatch, DOTALL.
EASYR1_MATH = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
RELEASE_QWEN3_THINK = re.compile(r".*</think>.*\\boxed\{.*\}.*", re.DOTALL)

# (output, well formed without a prefilled <think>, with one, the answer the last box gives)
CASES = [
    ("<think>2+3 is 5</think> The answer is \\boxed{5}.", True, True, "5"),  # well formed, text after the box
    ("\\boxed{5}", False, False, "5"),  # no think block: format 0, the box still answers
    ("<think>so \\boxed{5}</think> it is 5", False, False, "5"),  # box only inside the think block
    ("<think>r</think>\\boxed{1} or rather \\boxed{2}", True, True, "2"),  # two boxes: the last answers
    ("<think>r</think>\\boxed{5} and more words\nafter it", True, True, "5"),  # text after the box
    (" <think>r</think>\\boxed{5}", False, True, "5"),  # a leading space: the regex wants <think> first
    ("reasoning</think>\\boxed{3}", False, True, "3"),  # prefilled <think> (Qwen3-VL-Thinking)
    ("<think>r</think>\\boxed{5", False, False, None),  # the box never closes
    ("<think>r</think>\\boxed{2} \\boxed{3", True, True, None),  # last box unclosed: no answer, format ok
    ("<think>r</think>\\boxed{}", True, True, None),  # empty box: format 1, nothing to grade
    ("<think></think>\\boxed{3}", True, True, "3"),  # empty think passes the regex
    ("<think>r \\boxed{2}</think>\\boxed{3}<|im_end|>", True, True, "3"),  # special token decoded away
    ("<think>r</think><answer>5</answer>", False, False, None),  # the old format is not the paper's
    ("<think>r</think>\\boxed{\\frac{1}{2}}", True, True, "\\frac{1}{2}"),  # nested braces
    ("", False, False, None),
]


@pytest.mark.parametrize(("text", "fmt", "fmt_prefilled", "answer"), CASES)
def test_boxed_format_is_the_released_regex(text, fmt, fmt_prefilled, answer):
    clean = text.replace("<|im_end|>", "")
    assert bool(EASYR1_MATH.fullmatch(clean)) is fmt  # the hand expectation agrees with the reference
    assert bool(RELEASE_QWEN3_THINK.fullmatch(clean)) is fmt_prefilled
    assert check_format(text, template="boxed")[0] is fmt
    assert check_format(text, think_prefilled=True, template="boxed")[0] is fmt_prefilled
    assert extract_boxed(text)[0] == answer


def test_boxed_reward_grades_the_last_box_only():
    r = score_response("<think>2+3</think>\\boxed{5}", "5", template="boxed")
    assert (r.accuracy, r.format, r.reward, r.extracted_by) == (1.0, 1.0, 1.0, "boxed")
    r = score_response("<think>2+3</think>\\boxed{4} no wait \\boxed{5}", "5", template="boxed")
    assert r.accuracy == 1.0
    r = score_response("<think>2+3</think>\\boxed{5} no wait \\boxed{4}", "5", template="boxed")
    assert r.accuracy == 0.0 and r.extracted == "4"
    # the paper's reward gives no credit to an unboxed answer (the lenient extraction would)
    r = score_response("<think>2+3</think> 5", "5", template="boxed")
    assert (r.accuracy, r.format, r.reason) == (0.0, 0.0, "no_answer")
    assert score_response("<think>2+3</think> 5", "5", template="answer_tags").accuracy == 1.0
    r = score_response("<think>r</think><answer>5</answer>", "5", template="boxed")
    assert (r.accuracy, r.format, r.format_reason) == (0.0, 0.0, "no_box_after_think")
    r = score_response("reasoning</think>\\boxed{B}", "B", ["1", "2"], template="boxed", think_prefilled=True)
    assert r.reward == pytest.approx(1.0)
    out = score_batch(["<think>a</think>\\boxed{7}", "\\boxed{7}"], [{"answer": "7"}] * 2, template="boxed")
    assert [(x.accuracy, x.format) for x in out] == [(1.0, 1.0), (1.0, 0.0)]


def test_format_failure_reasons():
    assert check_format("", template="boxed") == (False, "empty")
    assert check_format("\\boxed{1}", template="boxed") == (False, "no_think_close")
    assert check_format("x<think>a</think>\\boxed{1}", template="boxed") == (False, "text_before_think")
    assert check_format("<think>a</think> 1", template="boxed") == (False, "no_box_after_think")
    with pytest.raises(ValueError, match="unknown prompt template 'xml'.*boxed"):
        check_format("x", template="xml")


ITEM = Item(id="q1", images=[b"img"], question="How many cubes?", answer="3", choices=["2", "3"])


def test_templates_build_the_prompt_their_check_expects():
    boxed = build_messages(ITEM, template="boxed")
    assert [m["role"] for m in boxed] == ["user"]  # the paper's prompt has no system prompt
    text = boxed[0]["content"][-1]["text"]
    assert text.startswith("How many cubes?\nOptions:\nA. 2\nB. 3\n\n")
    assert text.endswith("<think> </think> tags. Then, provide your final answer enclosed within \\boxed{}.")
    tags = build_messages(ITEM, template="answer_tags")
    assert tags[0]["role"] == "system" and "<answer> </answer>" in tags[1]["content"][-1]["text"]
    assert build_messages(ITEM) == tags  # a library call without a template keeps the old format
    assert PAPER_TEMPLATE == "boxed" and set(PROMPT_TEMPLATES) == {"boxed", "answer_tags"}
    # a response that follows each template's own instruction passes its own check only
    written = {"boxed": "<think>count</think>\\boxed{B}", "answer_tags": "<think>count</think><answer>B</answer>"}
    for name, response in written.items():
        for other in PROMPT_TEMPLATES:
            assert check_format(response, template=other)[0] is (name == other), (name, other)
            assert score_response(response, "B", ITEM.choices, template=other).accuracy == float(name == other or
                                                                                               other == "answer_tags")
    with pytest.raises(ValueError, match="unknown prompt template"):
        get_template("none")


def test_teacher_prompt_follows_the_same_template():
    hint = Hint(item_id="q1", regions=[], steps=["Count the cubes left to right."], traps=[])
    for name in PROMPT_TEMPLATES:
        s = build_messages(ITEM, template=name)
        t = teacher_messages(ITEM, hint, "hint", template=name)
        assert len(s) == len(t) and s[:-1] == t[:-1]  # same system turn (none for boxed)
        s_text, t_text = s[-1]["content"][-1]["text"], t[-1]["content"][-1]["text"]
        instruction = get_template(name).instruction
        assert s_text.endswith(instruction) and t_text.endswith(instruction)
        assert "Count the cubes left to right." in t_text and "Count the cubes" not in s_text
