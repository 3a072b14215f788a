"""The oracle generator on synthetic scenes: every hint passes the audit and, checked independently of
the audit, never contains the answer in any form."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from ptdpo.answers import CHOICE_LETTERS
from ptdpo.data.schema import Item
from ptdpo.data.synthetic import FAMILIES, generate_synthetic
from ptdpo.hints import FAILED, OK, audit_batch, render_hint, run_generation
from ptdpo.hints.oracle import OracleGenerator

N_ITEMS = 1000
# Independent of the audit's own number finder: any digit or number word in the text (boxes removed).
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
                "once twice single double pair couple dozen none half third quarter").split()
NUMBERISH = re.compile(r"\d|\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.I)


@pytest.fixture(scope="module")
def generated():
    items = generate_synthetic(N_ITEMS, seed=0)
    results = run_generation(OracleGenerator(), items)
    return items, results


def _text_without_boxes(hint) -> str:
    return "\n".join(t for _, t in hint.texts())  # boxes live in region.bbox, not in the text fields


def test_oracle_hints_for_1000_synthetic_items_all_pass_the_audit(generated, capsys):
    items, results = generated
    assert len(results) == N_ITEMS and [r.item_id for r in results] == [it.id for it in items]
    status = Counter(r.status for r in results)
    dropped = Counter(d for r in results for h in r.history for d in h.get("notes", {}).get("dropped", []))
    table, report = audit_batch(items, results)
    with capsys.disabled():
        print(f"\n[oracle] {N_ITEMS} synthetic items: {dict(status)}; audit pass rate {report['pass_rate']:.3f}; "
              f"reasons {report['reason_counts']}; metadata sentences dropped as leaky: {sum(dropped.values())}"
              + (f" e.g. {dropped.most_common(3)}" if dropped else ""))
    assert status == Counter({OK: N_ITEMS}), [r.verdict.details for r in results if r.status != OK][:5]
    assert report["pass_rate"] == 1.0 and report["n_missing"] == 0
    assert all(r.hint.generator == {"name": "oracle", "model": "scene-metadata", "prompt_version": "oracle-v1"}
               for r in results)
    assert {it.meta["family"] for it in items} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_hint_never_contains_the_answer(generated, family):
    items, results = generated
    pairs = [(it, r.hint) for it, r in zip(items, results) if it.meta["family"] == family]
    assert len(pairs) >= 100
    for item, hint in pairs:
        text = _text_without_boxes(hint)
        rendered = render_hint(hint, "plain")
        # no quantity at all: not the answer, not a count, not an intermediate value
        assert not NUMBERISH.search(text), (item.id, item.answer, text)
        answer = item.answer.strip().lower()
        if item.choices:
            idx = CHOICE_LETTERS.index(item.answer) if len(item.answer) == 1 else item.choices.index(item.answer)
            letter, option = CHOICE_LETTERS[idx], item.choices[idx].lower()
            assert not re.search(rf"(?<![\w-]){letter}(?![\w-])", text), (item.id, text)
            if not re.search(rf"\b{re.escape(option)}s?\b", item.question.lower()):
                assert not re.search(rf"\b{re.escape(option)}s?\b", text.lower()), (item.id, option, text)
        elif answer in ("yes", "no"):
            assert not re.search(r"\b(?:yes|no)\b", text.lower()), (item.id, text)
        elif not answer.lstrip("-").isdigit() and not re.search(rf"\b{re.escape(answer)}s?\b", item.question.lower()):
            assert not re.search(rf"\b{re.escape(answer)}s?\b", text.lower()), (item.id, answer, text)
        # never derived from the worked solution / reasoning
        assert "reasoning" not in rendered.lower()
        for step in item.meta.get("reasoning", []):
            assert step not in text


def test_counting_regions_do_not_reveal_counts(generated):
    items, results = generated
    for item, r in zip(items, results):
        q = item.meta.get("query", {})
        if q.get("type") in ("count", "sum", "difference", "more_than"):
            groups = [k for k in ("target", "a", "b") if isinstance(q.get(k), dict)]
            if not groups:  # "sum of the numbers": the value is read, not counted
                continue
            assert len(r.hint.regions) <= len(groups), (item.id, r.hint.regions)
            assert all(region.label.endswith("s") for region in r.hint.regions)  # always plural


def test_oracle_is_deterministic(generated):
    items, results = generated
    again = run_generation(OracleGenerator(), items[:50])
    assert [json.dumps(r.hint.to_dict()) for r in again] == [json.dumps(r.hint.to_dict()) for r in results[:50]]


def _scene(method, traps, answer="3", question="How many red circles are there?"):
    objs = [{"shape": "circle", "color": "red", "size": "small", "bbox": [100 * i, 100, 100 * i + 80, 180]}
            for i in range(1, 4)]
    return Item(id="hand-1", images=[], question=question, answer=answer,
                solution="The red circles are at three places. 1 + 1 + 1 = 3.",
                meta={"family": "count_attr", "query": {"type": "count", "target": {"color": "red", "shape": "circle"}},
                      "objects": objs, "evidence": [{"bbox": o["bbox"], "label": "red circle"} for o in objs],
                      "method": method, "traps": traps, "reasoning": ["3 red circles."]})


def test_leaky_metadata_is_filtered_by_the_audit():
    item = _scene(["Scan the image for red circles.", "There are 3 red circles in a row.", "Count each one."],
                  ["Do not count orange circles.", "So the answer is three."])
    (r,) = run_generation(OracleGenerator(), [item])
    assert r.status == OK
    assert r.hint.steps == ["Scan the image for red circles.", "Count each one."]
    assert r.hint.traps == ["Do not count orange circles."]
    assert r.history[0]["notes"]["dropped"] == ["There are 3 red circles in a row.", "So the answer is three."]
    assert len(r.hint.regions) == 1 and r.hint.regions[0].label == "red circles"
    x1, y1, x2, y2 = r.hint.regions[0].bbox
    assert x1 <= 100 and x2 >= 380 and y1 <= 100 and y2 >= 180  # one padded box around all three


def test_all_method_steps_leaky_falls_back_to_generic_steps():
    item = _scene(["Count 3 circles."], [])
    (r,) = run_generation(OracleGenerator(), [item])
    assert r.status == OK and r.hint.steps and not NUMBERISH.search(" ".join(r.hint.steps))


def test_non_synthetic_item_is_recorded_as_failed():
    item = Item(id="real-1", images=[], question="What is shown?", answer="cat")
    (r,) = run_generation(OracleGenerator(), [item])
    assert r.status == FAILED and r.hint is None and "meta.evidence" in r.error


def test_unstructured_oracle_same_content():
    items = generate_synthetic(10, seed=1)
    s = run_generation(OracleGenerator(), items)
    u = run_generation(OracleGenerator(kind="unstructured"), items)
    assert all(r.status == OK and r.hint.kind == "unstructured" for r in u)
    for a, b in zip(s, u):
        for step in a.hint.steps:
            assert step.rstrip(".") in b.hint.text
    assert OracleGenerator().config_hash() != OracleGenerator(kind="unstructured").config_hash()
