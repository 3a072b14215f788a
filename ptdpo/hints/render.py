"""Rendering a hint (or the answer / solution of the answer-conditioned baseline) into the teacher prompt.

The teacher's prompt x^h is the student's prompt x with one block added to the user turn, right after
the question (METHOD.md 1 and 6). Both come from ``ptdpo.prompts.build_messages``, so the chat template,
system prompt, thinking mode and images cannot differ; ``teacher_messages`` only chooses the block.

Region convention (Qwen-VL grounding, the one Qwen2-VL/Qwen3-VL were trained on, 0..1000 coordinates)::

    <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(120,340),(210,450)<|box_end|>

``box_style="plain"`` writes ``red circle [120, 340, 210, 450]`` instead (for models without those
tokens; with a tokenizer that lacks them the Qwen form is still valid plain text).

A structured hint renders as::

    Hint (guidance from a tutor; it does not state the answer):
    Regions to inspect:
    - <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(120,340),(210,450)<|box_end|>: why
    Steps:
    1. ...
    Traps to avoid:
    - ...
"""

from __future__ import annotations

from typing import Any, Literal

from ptdpo.answers.choices import choice_letter, gold_choice
from ptdpo.data.schema import Item, ItemError
from ptdpo.hints.schema import UNSTRUCTURED, Hint, Region
from ptdpo.prompts import build_messages

BoxStyle = Literal["qwen", "plain"]
Context = Literal["hint", "answer", "solution"]
CONTEXTS = ("hint", "answer", "solution")

HINT_HEADER = "Hint (guidance from a tutor; it does not state the answer):"
REGIONS_HEADER = "Regions to inspect:"
STEPS_HEADER = "Steps:"
TRAPS_HEADER = "Traps to avoid:"
ANSWER_PREFIX = "Reference answer:"
SOLUTION_PREFIX = "Reference solution:"


def format_box(bbox: list[int], style: BoxStyle = "qwen") -> str:
    x1, y1, x2, y2 = (int(v) for v in bbox)
    if style == "qwen":
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    if style == "plain":
        return f"[{x1}, {y1}, {x2}, {y2}]"
    raise ValueError(f"box_style must be 'qwen' or 'plain', got {style!r}")


def render_region(region: Region, style: BoxStyle = "qwen") -> str:
    if style == "qwen":
        ref = f"<|object_ref_start|>{region.label}<|object_ref_end|>{format_box(region.bbox, style)}"
    else:
        ref = f"{region.label} {format_box(region.bbox, style)}"
    return f"{ref}: {region.why}" if region.why else ref


def render_hint(hint: Hint, box_style: BoxStyle = "qwen") -> str:
    """The hint block the teacher reads (header, regions, numbered steps, traps)."""
    if hint.kind == UNSTRUCTURED:
        return f"{HINT_HEADER}\n{hint.text.strip()}"
    lines = [HINT_HEADER]
    if hint.regions:
        lines.append(REGIONS_HEADER)
        lines += [f"- {render_region(r, box_style)}" for r in hint.regions]
    lines.append(STEPS_HEADER)
    lines += [f"{i}. {s}" for i, s in enumerate(hint.steps, 1)]
    if hint.traps:
        lines.append(TRAPS_HEADER)
        lines += [f"- {t}" for t in hint.traps]
    return "\n".join(lines)


def render_answer(item: Item) -> str:
    """``Reference answer: B (15)`` for a multiple-choice answer that names one option (its letter or its
    text), ``Reference answer: 7`` otherwise."""
    answer = item.answer.strip()
    options = gold_choice(answer, item.choices) if item.choices else None
    if options and len(options) == 1:
        (idx,) = options
        return f"{ANSWER_PREFIX} {choice_letter(idx)} ({item.choices[idx]})"
    return f"{ANSWER_PREFIX} {answer}"


def render_solution(item: Item) -> str:
    if not item.solution or not item.solution.strip():
        raise ItemError(item.id, "solution", "teacher_context='solution' needs a reference solution")
    return f"{SOLUTION_PREFIX} {item.solution.strip()}\n{render_answer(item)}"


def render_context(
    item: Item, hint: Hint | None, context: Context = "hint", box_style: BoxStyle = "qwen"
) -> str:
    """The block added to the teacher's user turn for ``teacher_context`` = hint | answer | solution."""
    if context == "hint":
        if hint is None:
            raise ItemError(item.id, "hint", "no hint for this item (items without a passing hint get no PTD)")
        if hint.item_id != item.id:
            raise ItemError(item.id, "hint.item_id", f"hint belongs to item {hint.item_id!r}")
        return render_hint(hint, box_style)
    if context == "answer":
        return render_answer(item)
    if context == "solution":
        return render_solution(item)
    raise ValueError(f"teacher context must be one of {CONTEXTS}, got {context!r}")


def student_messages(item: Item, **build_kwargs: Any) -> list[dict[str, Any]]:
    """The answer-free prompt x (what rollouts are sampled from); ``build_kwargs`` as for
    :func:`teacher_messages` (``template``: the run's prompt template)."""
    return build_messages(item, **build_kwargs)


def teacher_messages(
    item: Item,
    hint: Hint | None,
    context: Context = "hint",
    box_style: BoxStyle = "qwen",
    **build_kwargs: Any,
) -> list[dict[str, Any]]:
    """The privileged prompt x^h: the student's messages with the rendered block after the question.

    ``build_kwargs`` (``template``, the run's prompt template; system prompt, format instruction) are
    passed to ``build_messages`` exactly as for the student: pass the same ones to both."""
    block = render_context(item, hint, context, box_style)
    return build_messages(item, context_block=block, **build_kwargs)
