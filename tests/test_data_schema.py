"""Item validation: every problem names the item and the field."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ptdpo.data import Item, ItemError, ItemErrors, item_images, open_image, validate_items


def _png(color=(255, 0, 0), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _item(i: int = 0, **kw) -> Item:
    d = dict(id=f"q{i}", images=[_png()], question="How many?", answer="3")
    d.update(kw)
    return Item(**d)


def test_good_items_pass_and_come_back_as_a_list():
    items = (_item(0), _item(1, choices=["red", "blue"], answer="B"), _item(2, images=[]))
    assert validate_items(items) == list(items)
    assert items[1].answer_text == "blue" and items[0].answer_text == "3"
    assert item_images(items[0])[0].size == (8, 8)


def test_missing_answer():
    with pytest.raises(ItemError, match=r"item 'q0', field 'answer': missing"):
        validate_items([_item(0, answer="")])
    with pytest.raises(ItemError, match=r"item 'q0', field 'answer': missing"):
        validate_items([_item(0, answer=None)])
    with pytest.raises(ItemError, match=r"item 'q0', field 'answer': must be a string, got int"):
        validate_items([_item(0, answer=3)])


def test_empty_question():
    with pytest.raises(ItemError, match=r"item 'q4', field 'question': empty"):
        validate_items([_item(4, question="   ")])


def test_undecodable_image_names_its_index():
    with pytest.raises(ItemError, match=r"item 'q1', field 'images\[1\]': cannot decode image"):
        validate_items([_item(1, images=[_png(), b"not a png at all"])])
    with pytest.raises(ItemError, match=r"item 'q1', field 'images\[0\]': image file not found"):
        validate_items([_item(1, images=["/no/such/file.png"])])
    # check_images=False skips decoding but still checks types
    validate_items([_item(1, images=[b"junk"])], check_images=False)
    with pytest.raises(ItemError, match=r"field 'images\[0\]': expected image bytes or a path, got int"):
        validate_items([_item(1, images=[5])], check_images=False)
    with pytest.raises(ItemError, match=r"field 'images\[2\]'"):
        open_image(b"xx", "q9", 2)


def test_duplicate_id_names_both_positions():
    items = [_item(0), _item(1), _item(2), _item(1)]
    with pytest.raises(ItemError, match=r"item 'q1', field 'id': duplicate id at positions 1 and 3"):
        validate_items(items)
    with pytest.raises(ItemError, match=r"b\.jsonl line 9 \(item 'q1'\), field 'id': duplicate id, also at a\.jsonl line 2"):
        validate_items(items, locations=["a.jsonl line 1", "a.jsonl line 2", "a.jsonl line 3", "b.jsonl line 9"])


def test_choices_need_a_letter_answer():
    with pytest.raises(ItemError, match=r"item 'q0', field 'answer': must be an option letter A-C .*got 'D'"):
        validate_items([_item(0, choices=["a", "b", "c"], answer="D")])
    with pytest.raises(ItemError, match=r"field 'answer'.*it is an option text"):
        validate_items([_item(0, choices=["red", "blue"], answer="red")])
    with pytest.raises(ItemError, match=r"item 'q0', field 'choices': needs 2..26 options, got 1"):
        validate_items([_item(0, choices=["only"], answer="A")])
    with pytest.raises(ItemError, match=r"item 'q0', field 'choices': options are not distinct"):
        validate_items([_item(0, choices=["x", "x"], answer="A")])
    with pytest.raises(ItemError, match=r"item 'q0', field 'choices': option B is empty"):
        validate_items([_item(0, choices=["x", " "], answer="A")])


def test_other_fields():
    with pytest.raises(ItemError, match=r"item without id, field 'id': must be a string, got int 7"):
        validate_items([_item(0, id=7)])
    with pytest.raises(ItemError, match=r"item '', field 'id': empty"):
        validate_items([_item(0, id="")])
    with pytest.raises(ItemError, match=r"item 'q0', field 'images': must be a list"):
        validate_items([_item(0, images=_png())])
    with pytest.raises(ItemError, match=r"item 'q0', field 'meta': not JSON-serialisable"):
        validate_items([_item(0, meta={"x": object()})])
    with pytest.raises(ItemError, match=r"item 'q0', field 'split'"):
        validate_items([_item(0, split="")])
    with pytest.raises(ItemError, match=r"field '<item>': expected an Item, got dict"):
        validate_items([{"id": "q0"}])


def test_all_problems_reported_at_once():
    items = [_item(0, answer=""), _item(1, question=""), _item(2, images=[b"bad"]), _item(0)]
    with pytest.raises(ItemErrors) as ei:
        validate_items(items, locations=[f"d.jsonl line {i + 1}" for i in range(4)])
    msg = str(ei.value)
    assert msg.startswith("4 problem(s) in items:")
    for expected in ["d.jsonl line 1 (item 'q0'), field 'answer': missing",
                     "d.jsonl line 2 (item 'q1'), field 'question': empty",
                     "d.jsonl line 3 (item 'q2'), field 'images[0]': cannot decode image",
                     "d.jsonl line 4 (item 'q0'), field 'id': duplicate id, also at d.jsonl line 1"]:
        assert expected in msg
    assert [p.field_name for p in ei.value.problems] == ["answer", "question", "images[0]", "id"]
    assert ei.value.item_id == "q0" and ei.value.field_name == "answer"  # the first problem
    # the message is capped, the list is not
    many = [_item(i, answer="") for i in range(30)]
    with pytest.raises(ItemErrors, match=r"\.\.\. and 10 more") as ei:
        validate_items(many)
    assert len(ei.value.problems) == 30


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ItemError, match=r"item 'q0', field 'label': unknown field"):
        Item.from_dict({"id": "q0", "images": [], "question": "q", "answer": "a", "label": 1})
