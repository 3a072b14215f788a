"""Prompt construction shared by the student, the teacher, rollouts and evaluation.

The student's prompt x and the teacher's prompt x^h must be identical apart from the privileged block
(METHOD.md 2.5 and 6): one function builds both, so the chat template, the system prompt, the
thinking mode and the image placement cannot drift apart.

**Templates.** A :class:`PromptTemplate` fixes what the model is asked to write and, with it, what the
format reward checks and where the answer is read (``ptdpo.rewards``): the two always go together, by
the template's name.

- ``boxed`` (the paper's, METHOD.md 5): PAPO's math-perception prompt, the question followed by the
  instruction to reason inside ``<think> </think>`` and give the final answer in ``\\boxed{}``; no
  system prompt. The instruction below is PAPO's ``math_perception`` format prompt word for word (the
  released PTD-PO scripts use it), because reproducing the paper means asking the model the same thing.
- ``answer_tags``: the project's first format, ``<think>`` then ``<answer> </answer>``, with a one-line
  system prompt. The study's warm-started tiny models were taught it.

A run chooses one with ``prompt.template`` in its config (default ``boxed``); library calls that name
no template keep ``answer_tags`` (:data:`LIBRARY_TEMPLATE`), the format the study, the warm starts and
the older tests were written for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptdpo.answers.words import CHOICE_LETTERS
from ptdpo.data.schema import Item

TemplateName = Literal["boxed", "answer_tags"]


@dataclass(frozen=True)
class PromptTemplate:
    """What the model is asked to produce: the system prompt (None: none) and the format instruction
    appended to the user turn. ``name`` also selects the format check and the answer extraction."""

    name: str
    system_prompt: str | None
    instruction: str
    description: str


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "boxed": PromptTemplate(
        name="boxed",
        system_prompt=None,
        instruction=(
            "You first think through the reasoning process as an internal monologue, enclosed within "
            "<think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
        ),
        description="PAPO's math-perception prompt (the paper's): <think> reasoning, then \\boxed{answer}",
    ),
    "answer_tags": PromptTemplate(
        name="answer_tags",
        system_prompt="You are a careful visual reasoner.",
        instruction=(
            "Think step by step inside <think> </think> tags, then give the final answer inside "
            "<answer> </answer> tags."
        ),
        description="the project's first format: <think> reasoning, then <answer>answer</answer>",
    ),
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(PROMPT_TEMPLATES)
PAPER_TEMPLATE: TemplateName = "boxed"  # the default of every run config (prompt.template)
LIBRARY_TEMPLATE: TemplateName = "answer_tags"  # what a call that names no template gets

# The library template's parts, under the names other modules import.
SYSTEM_PROMPT = PROMPT_TEMPLATES[LIBRARY_TEMPLATE].system_prompt
FORMAT_INSTRUCTION = PROMPT_TEMPLATES[LIBRARY_TEMPLATE].instruction

_FROM_TEMPLATE: Any = object()  # "take it from the template" (None is a valid system prompt: none)


def get_template(name: str) -> PromptTemplate:
    """The registered template called ``name``; a clear error naming the known ones otherwise."""
    try:
        return PROMPT_TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prompt template {name!r}; known: {list(TEMPLATE_NAMES)}") from None


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
    system_prompt: str | None = _FROM_TEMPLATE,
    format_instruction: str = _FROM_TEMPLATE,
    template: str = LIBRARY_TEMPLATE,
) -> list[dict[str, Any]]:
    """Chat messages for an item; ``context_block`` (a rendered hint, answer or solution) goes into
    the user turn right after the question, everything else is the same with or without it.

    ``template`` (a :data:`PROMPT_TEMPLATES` name) gives the system prompt and the format instruction;
    ``system_prompt`` / ``format_instruction`` override its parts when given (None / "" drop them)."""
    tmpl = get_template(template)
    system = tmpl.system_prompt if system_prompt is _FROM_TEMPLATE else system_prompt
    instruction = tmpl.instruction if format_instruction is _FROM_TEMPLATE else format_instruction
    parts = [format_question(item)]
    if context_block:
        parts.append(context_block.strip())
    if instruction:
        parts.append(instruction)
    content: list[dict[str, Any]] = [{"type": "image"} for _ in item.images]
    content.append({"type": "text", "text": "\n\n".join(parts)})
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    return messages
