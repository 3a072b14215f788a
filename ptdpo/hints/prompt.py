"""The hint generator's prompt (shared by the vLLM and OpenAI-compatible generators) and its parsing.

Pure functions, testable on CPU: ``generator_messages`` builds OpenAI-format chat messages (images as
base64 data URLs, which both vLLM's ``LLM.chat`` and any chat-completions server accept);
``parse_generator_output`` turns the model's text into a validated ``Hint`` or raises ``HintError``.

The model sees the image(s), the question (with lettered options), the ground-truth answer and, if
asked, the reference solution, and is told the zero-spoiler rules (METHOD.md 4). A rejected hint is
sent back with the audit's reasons (``feedback``): the previous output becomes an assistant turn and
the reasons a new user turn.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from ptdpo.data.schema import Item, ItemError, open_image
from ptdpo.hints.schema import STRUCTURED, UNSTRUCTURED, Hint, parse_hint
from ptdpo.prompts import format_question

PROMPT_VERSION = "ptd-hint-v1"

SYSTEM_PROMPT = (
    "You are an expert tutor. You write privileged hints for visual reasoning problems: guidance that "
    "shows a student where to look and how to reason, without ever giving away the answer."
)

RULES = """Zero-spoiler rules (a hint that breaks any of them is rejected):
1. Never state the final answer, in any form: not as digits, number words, fractions, decimals, percentages, units or LaTeX, and not as a colour, object or name that is the answer.
2. For multiple-choice questions never name the correct option: no option letter ("B", "(B)", "option B", "the second option") and no option text or value.
3. Never state a decisive intermediate value (a count, a length, a reading from a chart, a partial sum) that makes the answer a one-step computation.
4. Never conclude: no "so the answer is", "which gives", "therefore", "you get".
5. Never write a full solution or worked equations with results. Steps describe the method, not the values.
6. Regions say WHERE to look; their labels must not reveal the answer either, and do not box every counted object one by one."""

SCHEMA_STRUCTURED = """Output ONLY one JSON object, no prose, with exactly these keys:
{
  "regions": [{"bbox": [x1, y1, x2, y2], "label": "short name of what is there", "why": "why it matters"}],
  "steps": ["short imperative step", "..."],
  "traps": ["a distractor or common mistake to avoid", "..."]
}
Boxes use the Qwen-VL convention: integers in 0..1000, normalised to the image width and height, with x1 < x2 and y1 < y2. Give 1-3 regions, 2-5 steps (at most 25 words each) and 0-3 traps."""

SCHEMA_UNSTRUCTURED = """Output ONLY one JSON object, no prose: {"hint": "one paragraph of guidance (at most 120 words)"}.
You may mention where to look with boxes written as [x1, y1, x2, y2] in 0..1000 normalised coordinates."""


def image_data_url(ref: bytes | str, item_id: str | None = None, index: int = 0, max_side: int | None = None) -> str:
    """A ``data:image/...;base64,`` URL for an image given as PNG/JPEG bytes or a path. The original bytes
    are sent unchanged unless ``max_side`` asks for a downscale (then re-encoded as PNG)."""
    if isinstance(ref, str):
        try:
            with open(ref, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ItemError(item_id, f"images[{index}]", f"cannot read image file: {e}") from e
    elif isinstance(ref, bytes | bytearray):
        data = bytes(ref)
    else:
        raise ItemError(item_id, f"images[{index}]", f"expected bytes or a path, got {type(ref).__name__}")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        mime = None
    if mime is None or max_side is not None:
        img = open_image(data, item_id, index)
        if max_side is not None and max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def render_generator_prompt(item: Item, kind: str = STRUCTURED, include_solution: bool = False) -> str:
    """The text part of the generator's user turn."""
    parts = [
        "Write a privileged hint for the problem below. The student will see the same image(s) and question, "
        "but not the answer.",
        f"Question:\n{format_question(item)}",
        f"Ground-truth answer (for you only, never reveal it): {item.answer.strip()}",
    ]
    if include_solution and item.solution:
        parts.append(f"Reference solution (for you only, never reveal its values): {item.solution.strip()}")
    parts.append(RULES)
    parts.append(SCHEMA_UNSTRUCTURED if kind == UNSTRUCTURED else SCHEMA_STRUCTURED)
    return "\n\n".join(parts)


def feedback_message(reasons: str) -> str:
    return (
        "Your hint was rejected:\n"
        f"{reasons}\n"
        "Write a new hint that fixes these problems and follows every zero-spoiler rule. "
        "Output only the JSON object."
    )


def generator_messages(
    item: Item,
    kind: str = STRUCTURED,
    feedback: str | None = None,
    previous_raw: str | None = None,
    include_solution: bool = False,
    image_max_side: int | None = None,
) -> list[dict[str, Any]]:
    """OpenAI-format chat messages for the generator: system rules, then the user turn with every image
    (as a data URL) followed by the text; with ``feedback`` the previous output and the rejection follow."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(ref, item.id, i, image_max_side)}}
        for i, ref in enumerate(item.images)
    ]
    content.append({"type": "text", "text": render_generator_prompt(item, kind, include_solution)})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]
    if feedback:
        messages.append({"role": "assistant", "content": previous_raw or ""})
        messages.append({"role": "user", "content": feedback_message(feedback)})
    return messages


def parse_generator_output(raw: str, item: Item, generator: dict[str, Any], kind: str = STRUCTURED) -> Hint:
    """The model's text as a validated Hint (tolerating fences, <think> blocks and prose); HintError otherwise."""
    return parse_hint(raw, item.id, generator=generator, kind=kind)
