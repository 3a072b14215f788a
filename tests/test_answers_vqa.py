"""The ``vqa`` answer mode (ptdpo.answers.vqa): sentences that say a short word answer match it, the clear
cases every mode gets right keep matching, and near misses do not match."""

from __future__ import annotations

import pytest

from ptdpo.answers import ANSWER_TYPES, match_answer
from ptdpo.answers.vqa import singular, vqa_words
from ptdpo.data import Item
from ptdpo.eval.registry import BenchmarkSpec
from ptdpo.rewards import score_batch

# Clear cases: the prediction is the gold answer up to case, punctuation, articles, a "the answer is"
# prefix or a number word. The exact (text) mode already gets every one right; vqa must too.
CLEAR = [
    ("yes", "yes"), ("Yes", "yes"), ("yes.", "yes"), ("No", "no"), ("no.", "no"), ("red", "red"), ("Red.", "red"),
    ("blue", "blue"), ("circle", "circle"), ("a circle", "circle"), ("The circle", "circle"), ("square", "square"),
    ("triangle", "triangle"), ("2", "2"), ("3", "3"), ("two", "2"), ("Three", "3"), ("0", "0"), ("10", "10"),
    ("the answer is red", "red"), ("Answer: blue", "blue"), ("green", "green"), ("left", "left"),
    ("top right", "top right"), ("cat", "cat"), ("a dog", "dog"), ("kitchen", "kitchen"), ("wood", "wood"),
    ("\\text{yes}", "yes"), ("An apple", "apple"),
]
# Said the way people say them: only vqa accepts these.
SENTENCES = [
    ("Yes, there is.", "yes"), ("No, there isn't.", "no"), ("Nope.", "no"), ("Yes it is", "yes"),
    ("It is a circle.", "circle"), ("It's red.", "red"), ("There are two.", "2"), ("There are 3 of them", "3"),
    ("Circles", "circle"), ("boxes", "box"), ("berries", "berry"), ("The colour is grey.", "gray"), ("A ball.", "sphere"),
    ("They are dogs.", "dog"), ("This is a kitchen.", "kitchen"), ("two men", "2 man"), ("I think it is blue", "blue"),
]
# Near misses: vqa must reject them.
WRONG = [
    ("No, there is not.", "yes"), ("Yes", "no"), ("Maybe yes", "yes"), ("not red", "red"), ("red and blue", "red"),
    ("It is a square.", "circle"), ("three", "2"), ("There are 4.", "3"), ("dark red", "red"), ("", "red"),
    ("circle", "circle and square"), ("blue", "gray"),
]


def test_vqa_is_an_answer_type():
    assert "vqa" in ANSWER_TYPES
    assert BenchmarkSpec(name="my_vqa", dataset={"format": "jsonl", "path": "x.jsonl"}, answer_type="vqa")


@pytest.mark.parametrize("pred,gold", CLEAR)
def test_clear_cases_match_in_every_word_mode(pred, gold):
    assert len(CLEAR) >= 28
    for mode in ("auto", "text", "vqa"):
        ok, reason = match_answer(pred, gold, answer_type=mode)
        assert ok, (mode, pred, gold, reason)


@pytest.mark.parametrize("pred,gold", SENTENCES)
def test_sentences_match_in_vqa_mode_only(pred, gold):
    ok, reason = match_answer(pred, gold, answer_type="vqa")
    assert ok and reason.startswith("vqa_"), (pred, gold, reason)
    assert not match_answer(pred, gold, answer_type="text")[0], "exact mode stays exact"


@pytest.mark.parametrize("pred,gold", WRONG)
def test_near_misses_do_not_match(pred, gold):
    assert not match_answer(pred, gold, answer_type="vqa")[0], (pred, gold)


def test_the_issue_examples():
    assert match_answer("Yes, there is.", "yes", answer_type="vqa") == (True, "vqa_yes_no")
    assert match_answer("It is a circle.", "circle", answer_type="vqa") == (True, "vqa_normalised")


def test_singular_and_words():
    assert [singular(w) for w in ("circles", "boxes", "berries", "glass", "bus", "men", "yes", "3")] == [
        "circle", "box", "berry", "glass", "bus", "man", "yes", "3"]
    assert vqa_words("There are two red circles!") == ["2", "red", "circle"]


def test_multiple_choice_still_resolves_options_in_vqa_mode():
    assert match_answer("B", "B", ["red", "blue"], answer_type="vqa")[0]
    assert match_answer("blue", "B", ["red", "blue"], answer_type="vqa")[0]
    assert not match_answer("red", "B", ["red", "blue"], answer_type="vqa")[0]


def test_reward_reads_the_mode_from_the_item_or_the_benchmark():
    items = [Item(id="a", images=[], question="Is there a cat?", answer="yes", meta={"answer_type": "vqa"}),
             Item(id="b", images=[], question="Is there a cat?", answer="yes")]
    text = "<think>look</think>\\boxed{Yes, there is.}"
    a, b = score_batch([text, text], items, template="boxed", max_workers=1)
    assert a.accuracy == 1.0 and b.accuracy == 0.0
    (c,) = score_batch([text], items[1:], template="boxed", answer_type="vqa", max_workers=1)
    assert c.accuracy == 1.0
