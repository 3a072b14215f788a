"""Rendering into the teacher prompt: x^h differs from x only by the inserted block, tokens included."""

from __future__ import annotations

import io

import pytest

from ptdpo.data.schema import Item, ItemError
from ptdpo.hints import (
    Hint,
    Region,
    render_answer,
    render_context,
    render_hint,
    render_solution,
    student_messages,
    teacher_messages,
    to_unstructured,
)
from ptdpo.prompts import build_messages

HINT = Hint(
    "it-1",
    regions=[Region([120, 340, 210, 450], "red circle", "the first shape to compare"),
             Region([600, 380, 760, 540], "green square", "")],
    steps=["Locate both shapes.", "Compare the horizontal positions of their centres."],
    traps=["The orange circle is a distractor."],
    generator={"name": "test", "model": "m", "prompt_version": "v1"},
)


def _png(seed: int = 0, size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).rectangle([8 + seed, 8, 30 + seed, 40], fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _item(**kw) -> Item:
    base = dict(id="it-1", images=[_png()], question="Is the red circle to the left of the green square?",
                answer="yes", solution="The circle's box ends at x=210, the square starts at x=600.")
    base.update(kw)
    return Item(**base)


def test_render_hint_qwen_grounding_convention():
    block = render_hint(HINT)
    assert block.splitlines()[0].startswith("Hint")
    assert ("<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(120,340),(210,450)<|box_end|>"
            ": the first shape to compare") in block
    assert "<|object_ref_start|>green square<|object_ref_end|><|box_start|>(600,380),(760,540)<|box_end|>" in block
    assert "1. Locate both shapes.\n2. Compare" in block
    assert "- The orange circle is a distractor." in block
    plain = render_hint(HINT, box_style="plain")
    assert "red circle [120, 340, 210, 450]: the first shape to compare" in plain and "<|" not in plain
    u = render_hint(to_unstructured(HINT))
    assert u.startswith("Hint") and "[120, 340, 210, 450]" in u and "Steps:" not in u
    with pytest.raises(ValueError):
        render_hint(HINT, box_style="pixels")  # type: ignore[arg-type]


def test_answer_and_solution_contexts():
    item = _item()
    assert render_answer(item) == "Reference answer: yes"
    mc = _item(question="How many?", answer="B", choices=["6", "7", "8"])
    assert render_answer(mc) == "Reference answer: B (7)"
    sol = render_solution(item)
    assert sol.startswith("Reference solution: The circle's box") and sol.endswith("Reference answer: yes")
    with pytest.raises(ItemError, match="solution"):
        render_solution(_item(solution=None))
    assert render_context(item, None, "answer") == render_answer(item)
    with pytest.raises(ItemError, match="no hint"):
        render_context(item, None, "hint")
    with pytest.raises(ItemError, match="belongs to item"):
        render_context(_item(id="other"), HINT, "hint")
    with pytest.raises(ValueError, match="teacher context"):
        render_context(item, HINT, "oracle")  # type: ignore[arg-type]


@pytest.mark.parametrize("context", ["hint", "answer", "solution"])
def test_teacher_messages_equal_student_messages_but_the_block(context):
    item = _item(choices=None)
    s = student_messages(item)
    t = teacher_messages(item, HINT, context)
    assert s == build_messages(item)
    assert len(s) == len(t)
    assert s[0] == t[0]  # system prompt
    assert s[1]["role"] == t[1]["role"] == "user"
    assert s[1]["content"][:-1] == t[1]["content"][:-1] == [{"type": "image"}]  # same images, same place
    st, tt = s[1]["content"][-1]["text"], t[1]["content"][-1]["text"]
    block = render_context(item, HINT, context)
    q, fmt = st.split("\n\n", 1)
    assert tt == f"{q}\n\n{block}\n\n{fmt}"  # after the question, before the format instruction
    # same kwargs reach build_messages for both
    s2 = student_messages(item, system_prompt=None)
    t2 = teacher_messages(item, HINT, context, system_prompt=None)
    assert len(s2) == len(t2) == 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@pytest.fixture(scope="module")
def tiny_processor_local():
    from ptdpo.models import build_processor

    return build_processor()


@pytest.mark.parametrize("context, box_style", [("hint", "qwen"), ("hint", "plain"), ("answer", "qwen"),
                                                ("solution", "qwen")])
def test_token_sequences_differ_only_by_the_block(tiny_processor_local, context, box_style):
    """Tokenise x and x^h with the tiny processor's chat template: the student's ids are a prefix and a
    suffix of the teacher's, and the teacher's extra ids are one contiguous run decoding to the block."""
    from ptdpo.data.schema import item_images
    from ptdpo.models import encode_prompts

    proc = tiny_processor_local
    tok = proc.tokenizer
    item = _item()
    s_msgs = student_messages(item)
    t_msgs = teacher_messages(item, HINT, context, box_style=box_style)
    imgs = item_images(item)
    for thinking in (False, True):
        enc = encode_prompts(proc, [s_msgs, t_msgs], [imgs, imgs], enable_thinking=thinking)
        ids = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
        s_ids, t_ids = ids
        assert len(t_ids) > len(s_ids)
        p = _common_prefix(s_ids, t_ids)
        sfx = _common_suffix(s_ids, t_ids, len(s_ids) - p)
        assert p + sfx == len(s_ids), "the student's tokens must be exactly a prefix + suffix of the teacher's"
        middle = t_ids[p:len(t_ids) - sfx]
        block = render_context(item, HINT, context, box_style)
        assert tok.decode(middle, skip_special_tokens=False).strip() == block.strip()
        # the image and everything around the block are identical
        image_id = tok.convert_tokens_to_ids("<|image_pad|>")
        assert s_ids.count(image_id) == t_ids.count(image_id) > 0
        assert image_id not in middle
        assert (enc["pixel_values"][: len(enc["pixel_values"]) // 2] == enc["pixel_values"][len(enc["pixel_values"]) // 2:]).all()
        assert (enc["image_grid_thw"][0] == enc["image_grid_thw"][1]).all()
        if box_style == "qwen" and context == "hint":
            box_id = tok.convert_tokens_to_ids("<|box_start|>")
            assert box_id != tok.unk_token_id and middle.count(box_id) == 2  # grounding tokens are single ids
