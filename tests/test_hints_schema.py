"""Hint schema: strict validation with errors naming item and field, tolerant parsing, unstructured form."""

from __future__ import annotations

import json

import pytest

from ptdpo.data.schema import ItemError
from ptdpo.hints import STRUCTURED, UNSTRUCTURED, Hint, HintError, Region, parse_hint, to_unstructured

GOOD = {
    "regions": [{"bbox": [120, 340, 210, 450], "label": "red circle", "why": "one of the shapes to compare"}],
    "steps": ["Find both shapes.", "Compare their horizontal positions."],
    "traps": ["Do not confuse orange with red."],
}
GEN = {"name": "test", "model": "m", "prompt_version": "v1"}


def test_round_trip_and_generator_recorded():
    h = parse_hint(json.dumps(GOOD), "item-1", generator=GEN)
    assert h.item_id == "item-1" and h.kind == STRUCTURED
    assert h.regions == [Region([120, 340, 210, 450], "red circle", "one of the shapes to compare")]
    assert h.generator == GEN and h.raw == json.dumps(GOOD)
    again = Hint.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h


@pytest.mark.parametrize(
    "raw",
    [
        "```json\n" + json.dumps(GOOD) + "\n```",
        "Sure! Here is the hint:\n" + json.dumps(GOOD, indent=2) + "\nHope it helps {not json}.",
        "<think>The answer is 3 but I must not say it. {\"draft\": 1}</think>\n" + json.dumps(GOOD),
        "Some prose with a brace { first.\n```\n" + json.dumps(GOOD) + "\n```",
        json.dumps({"hint": GOOD}),
        'My scratch values were {"count": 3}; the hint:\n' + json.dumps(GOOD),
    ],
)
def test_parse_tolerates_wrapping(raw):
    h = parse_hint(raw, "x", generator=GEN)
    assert h.steps == GOOD["steps"] and h.regions[0].bbox == [120, 340, 210, 450]
    assert h.raw == raw


def test_bbox_2d_alias_and_integral_floats():
    d = {"regions": [{"bbox_2d": [10.0, 20, 30, 40.0], "label": "x"}], "steps": ["Look."]}
    h = parse_hint(json.dumps(d), "x")
    assert h.regions[0].bbox == [10, 20, 30, 40] and h.regions[0].why == ""


@pytest.mark.parametrize(
    "mutate, field, fragment",
    [
        (lambda d: d["regions"][0].update(bbox=[210, 340, 120, 450]), "regions[0].bbox", "x1 < x2"),
        (lambda d: d["regions"][0].update(bbox=[120, 450, 210, 340]), "regions[0].bbox", "y1 < y2"),
        (lambda d: d["regions"][0].update(bbox=[120, 340, 210, 1450]), "regions[0].bbox", "0..1000"),
        (lambda d: d["regions"][0].update(bbox=[-5, 340, 210, 450]), "regions[0].bbox", "0..1000"),
        (lambda d: d["regions"][0].update(bbox=[1, 2, 3]), "regions[0].bbox", "[x1, y1, x2, y2]"),
        (lambda d: d["regions"][0].update(bbox=["a", 2, 3, 4]), "regions[0].bbox", "numbers"),
        (lambda d: d["regions"][0].pop("bbox"), "regions[0].bbox", "missing"),
        (lambda d: d["regions"][0].update(label=""), "regions[0].label", "empty"),
        (lambda d: d["regions"][0].update(colour="red"), "regions[0].colour", "unknown field"),
        (lambda d: d.update(steps=[]), "steps", "at least one"),
        (lambda d: d.pop("steps"), "steps", "at least one"),
        (lambda d: d.update(steps=["ok", "  "]), "steps[1]", "empty"),
        (lambda d: d.update(steps=["x" * 600]), "steps[0]", "too long"),
        (lambda d: d.update(steps=[f"step {i}" for i in range(20)]), "steps", "too many"),
        (lambda d: d.update(traps="not a list"), "traps", "list"),
        (lambda d: d.update(answer="7"), "answer", "unknown field"),
        (lambda d: d.update(steps=["Look at <|box_start|>(1,2),(3,4)<|box_end|>"]), "steps[0]", "special tokens"),
        (lambda d: d.update(regions="everywhere"), "regions", "list"),
    ],
)
def test_strict_validation_names_item_and_field(mutate, field, fragment):
    d = json.loads(json.dumps(GOOD))
    mutate(d)
    with pytest.raises(HintError) as ei:
        parse_hint(json.dumps(d), "item-42")
    err = ei.value
    assert isinstance(err, ItemError)
    assert err.item_id == "item-42" and err.field_name == field, str(err)
    assert fragment in err.problem
    assert "item-42" in str(err) and field in str(err)


@pytest.mark.parametrize("raw, fragment", [("", "empty output"), ("I cannot help with that.", "no JSON object"),
                                           ('{"regions": [', "no JSON object"), ("[1, 2, 3]", "no JSON object")])
def test_unparseable_output(raw, fragment):
    with pytest.raises(HintError) as ei:
        parse_hint(raw, "it")
    assert ei.value.field_name == "raw" and fragment in str(ei.value)


def test_from_dict_requires_item_id_and_known_kind():
    with pytest.raises(HintError, match="item_id"):
        Hint.from_dict({"steps": ["a"]})
    with pytest.raises(HintError, match="kind"):
        Hint.from_dict({"item_id": "a", "kind": "freeform", "steps": ["a"]})
    with pytest.raises(HintError, match="only 'text'"):
        Hint.from_dict({"item_id": "a", "kind": UNSTRUCTURED, "text": "t", "steps": ["a"]})


def test_unstructured_parse_and_conversion_keeps_content():
    h = parse_hint(json.dumps(GOOD), "x", generator=GEN)
    u = to_unstructured(h)
    assert u.kind == UNSTRUCTURED and u.item_id == "x" and not u.regions and not u.steps
    for piece in ("red circle", "[120, 340, 210, 450]", "one of the shapes to compare", "Find both shapes",
                  "Compare their horizontal positions", "do not confuse orange with red"):
        assert piece in u.text, piece
    assert u.generator["converted_from"] == STRUCTURED and u.generator["name"] == "test"
    assert Hint.from_dict(u.to_dict()) == u
    assert to_unstructured(u) is u
    p = parse_hint('```json\n{"hint": "Look at the left half first."}\n```', "x", kind=UNSTRUCTURED)
    assert p.text == "Look at the left half first." and p.kind == UNSTRUCTURED
    plain = parse_hint("Look at the left half first.", "x", kind=UNSTRUCTURED)
    assert plain.text == "Look at the left half first."
    with pytest.raises(HintError):
        parse_hint('{"regions": []}', "x", kind=UNSTRUCTURED)


def test_trap_acronym_not_lowercased():
    h = Hint("x", steps=["Use the legend."], traps=["AB is not a side of the triangle."])
    assert "AB is not a side" in to_unstructured(h).text
