"""Prompt construction shared by the student, the teacher, rollouts and evaluation.

The student's prompt x and the teacher's prompt x^h must be identical apart from the privileged block
(METHOD.md 2.5 and 6): one function builds both, so the chat template, the system prompt, the
thinking mode and the image placement cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item

SYSTEM_PROMPT = "You are a careful visual reasoner."
FORMAT_INSTRUCTION = (
    "Think step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)


def format_question(item: Item) -> str:
    """The question text, with lettered options for multiple-choice items."""
    text = item.question.strip()
    if item.choices:
        options = "\n".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        text = f"{text}\nOptions:\n{options}"
    return text


def build_messages(
    item: Item,
    context_block: str | None = None,
    system_prompt: str | None = SYSTEM_PROMPT,
    format_instruction: str = FORMAT_INSTRUCTION,
) -> list[dict[str, Any]]:
    """Chat messages for an item; ``context_block`` (a rendered hint, answer or solution) goes into
    the user turn right after the question, everything else is the same with or without it."""
    parts = [format_question(item)]
    if context_block:
        parts.append(context_block.strip())
    if format_instruction:
        parts.append(format_instruction)
    content: list[dict[str, Any]] = [{"type": "image"} for _ in item.images]
    content.append({"type": "text", "text": "\n\n".join(parts)})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages
