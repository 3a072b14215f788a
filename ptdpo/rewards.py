"""Verifiable rewards: the format check and R = a*acc + f*fmt (METHOD.md section 2, step 2).

Each rollout gets ``accuracy`` in {0, 1} and ``format`` in {0, 1}; the paper's reward is
``R = 0.9 * accuracy + 0.1 * format`` (both weights are arguments). Accuracy is
:func:`ptdpo.answers.match_answer` on the extracted answer. How the answer is found and what the format
check demands follow the prompt template (``ptdpo.prompts``), so prompt and check cannot disagree:

``boxed`` (the paper's; EasyR1 / PTD-PO release, ``examples/reward_function``):
    format: the output (chat special tokens removed) matches, as a whole, the regular expression
    ``<think>.*</think>.*\\\\boxed\\{.*\\}.*`` (DOTALL), or ``.*</think>.*\\\\boxed\\{.*\\}.*`` with
    ``think_prefilled=True`` (the chat template opened ``<think>``, as Qwen3-VL-Thinking's does: the
    released ``qwen3_vl_think`` reward). So a ``\\boxed{...}`` must follow a ``</think>``; text after the
    box, several boxes, a box inside the think block as well are all accepted, exactly as the regex is.
    accuracy: the last ``\\boxed{...}`` only (:func:`ptdpo.answers.extract.extract_boxed`).
``answer_tags``:
    format: after stripping surrounding whitespace and trailing chat special tokens, exactly
    ``<think>T</think>`` + optional whitespace + ``<answer>A</answer>`` with T and A not blank and each of
    the four tags present once (``think_prefilled``: the leading ``<think>`` may be absent).
    accuracy: :func:`ptdpo.answers.extract` (answer tag, box, answer line, bare answer).

Nothing here raises on model output: garbage scores 0 with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ptdpo.answers.extract import SPECIAL_TOKENS, extract, extract_boxed, strip_special_tokens
from ptdpo.answers.judge import DEFAULT_TIMEOUT_S, math_workers
from ptdpo.answers.match import ANSWER_TYPES, match_answer
from ptdpo.answers.normalize import as_text
from ptdpo.prompts import LIBRARY_TEMPLATE, get_template

__all__ = ["ACCURACY_WEIGHT", "FORMAT_WEIGHT", "RewardResult", "check_format", "check_format_answer_tags",
           "check_format_boxed", "extract_for", "score_batch", "score_response"]

ACCURACY_WEIGHT = 0.9
FORMAT_WEIGHT = 0.1


def check_format(text: Any, think_prefilled: bool = False, template: str = LIBRARY_TEMPLATE) -> tuple[bool, str]:
    """(well formed?, reason) for the prompt template ``template`` (module docstring)."""
    get_template(template)
    if template == "boxed":
        return check_format_boxed(text, think_prefilled)
    return check_format_answer_tags(text, think_prefilled)


# EasyR1's math format reward and the PTD-PO release's qwen3_vl_think one, as re.fullmatch patterns.
_BOXED_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
_BOXED_FORMAT_PREFILLED = re.compile(r".*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def _without_special_tokens(text: str) -> str:
    # The released reward decodes with skip_special_tokens=True: chat special tokens are gone, nothing else.
    for tok in SPECIAL_TOKENS:
        text = text.replace(tok, "")
    return text


def check_format_boxed(text: Any, think_prefilled: bool = False) -> tuple[bool, str]:
    """The paper's format reward (module docstring). The verdict is the regular expression's alone; the
    reason of a failure (empty, no_think_close, text_before_think, no_box_after_think, error) only
    explains it."""
    try:
        t = _without_special_tokens(as_text(text))
        pattern = _BOXED_FORMAT_PREFILLED if think_prefilled else _BOXED_FORMAT
        if pattern.fullmatch(t):
            return True, "ok"
        if not t.strip():
            return False, "empty"
        if "</think>" not in t:
            return False, "no_think_close"
        if not think_prefilled and not t.startswith("<think>"):
            return False, "text_before_think"
        return False, "no_box_after_think"
    except Exception:  # noqa: BLE001
        return False, "error"


def check_format_answer_tags(text: Any, think_prefilled: bool = False) -> tuple[bool, str]:
    """(well formed?, reason) for ``answer_tags``. Reasons: ok, empty, think_tags, answer_tags,
    text_before_think, empty_think, text_between_think_and_answer, text_after_answer, empty_answer, error."""
    try:
        t = strip_special_tokens(as_text(text)).strip()
        if not t:
            return False, "empty"
        n_open, n_close = t.count("<think>"), t.count("</think>")
        if n_close != 1 or n_open > 1 or (n_open == 0 and not think_prefilled):
            return False, "think_tags"
        if t.count("<answer>") != 1 or t.count("</answer>") != 1:
            return False, "answer_tags"
        start = 0
        if n_open == 1:
            if not t.startswith("<think>"):
                return False, "text_before_think"
            start = len("<think>")
        end = t.index("</think>")
        if end < start or not t[start:end].strip():
            return False, "empty_think"
        rest = t[end + len("</think>") :].strip()
        if not rest.startswith("<answer>"):
            return False, "text_between_think_and_answer"
        if not rest.endswith("</answer>"):
            return False, "text_after_answer"
        if not rest[len("<answer>") : -len("</answer>")].strip():
            return False, "empty_answer"
        return True, "ok"
    except Exception:  # noqa: BLE001
        return False, "error"


@dataclass(frozen=True)
class RewardResult:
    """One scored output. ``reason`` explains accuracy (see :func:`match_answer`), ``format_reason`` the
    format check; ``extracted_by`` says which extraction rule found the answer."""

    reward: float
    accuracy: float
    format: float
    extracted: str | None
    reason: str
    format_reason: str = ""
    extracted_by: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_response(
    text: Any,
    answer: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    think_prefilled: bool = False,
    accuracy_weight: float = ACCURACY_WEIGHT,
    format_weight: float = FORMAT_WEIGHT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_bare: bool = True,
    template: str = LIBRARY_TEMPLATE,
) -> RewardResult:
    """Score one model output against its gold answer: R = accuracy_weight*acc + format_weight*fmt, the
    answer found and the format checked as ``template`` says (``allow_bare``: ``answer_tags`` only)."""
    try:
        extracted, how = extract_for(text, template, allow_bare=allow_bare)
    except Exception as e:  # noqa: BLE001
        extracted, how = None, f"error:{type(e).__name__}"
    fmt_ok, fmt_reason = check_format(text, think_prefilled=think_prefilled, template=template)
    if extracted is None:
        ok, reason = False, "no_answer"
    else:
        ok, reason = match_answer(
            extracted, answer, choices, answer_type=answer_type, precision=precision, timeout_s=timeout_s
        )
    acc, fmt = float(ok), float(fmt_ok)
    return RewardResult(
        reward=accuracy_weight * acc + format_weight * fmt,
        accuracy=acc,
        format=fmt,
        extracted=extracted,
        reason=reason,
        format_reason=fmt_reason,
        extracted_by=how,
    )


def extract_for(text: Any, template: str = LIBRARY_TEMPLATE, allow_bare: bool = True) -> tuple[str | None, str]:
    """(answer, how) as the template reads it: the last box for ``boxed``, the lenient rules otherwise."""
    get_template(template)
    if template == "boxed":
        return extract_boxed(text)
    return extract(text, allow_bare=allow_bare)


def _item_field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, dict):
        return item.get(name, default)
    return getattr(item, name, default)


def score_batch(
    texts: Sequence[Any],
    items: Sequence[Any],
    *,
    max_workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_type: str | Sequence[str | None] | None = None,
    think_prefilled: bool = False,
    accuracy_weight: float = ACCURACY_WEIGHT,
    format_weight: float = FORMAT_WEIGHT,
    allow_bare: bool = True,
    template: str = LIBRARY_TEMPLATE,
) -> list[RewardResult]:
    """Score ``texts[i]`` against ``items[i]`` (``Item``s or dicts with ``answer``, ``choices``, ``meta``),
    in parallel threads, order preserved. Per item, ``meta["precision"]`` is used when present, and
    ``meta["answer_type"]`` when it is one of :data:`ANSWER_TYPES` and ``answer_type`` (one for all, or one
    per item) is None. ``template``: the run's prompt template (``ptdpo.prompts``)."""
    get_template(template)
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts but {len(items)} items")
    if isinstance(answer_type, str) or answer_type is None:
        types: list[str | None] = [answer_type] * len(items)
    else:
        types = list(answer_type)
        if len(types) != len(items):
            raise ValueError(f"{len(types)} answer types but {len(items)} items")

    def one(i: int) -> RewardResult:
        item = items[i]
        meta = _item_field(item, "meta", None) or {}
        atype = types[i]
        if atype is None and isinstance(meta, dict) and meta.get("answer_type") in ANSWER_TYPES:
            atype = meta["answer_type"]
        precision = meta.get("precision") if isinstance(meta, dict) else None
        try:
            return score_response(
                texts[i],
                _item_field(item, "answer", ""),
                _item_field(item, "choices", None),
                answer_type=atype,
                precision=precision,
                think_prefilled=think_prefilled,
                accuracy_weight=accuracy_weight,
                format_weight=format_weight,
                timeout_s=timeout_s,
                allow_bare=allow_bare,
                template=template,
            )
        except Exception as e:  # noqa: BLE001
            return RewardResult(0.0, 0.0, 0.0, None, f"error:{type(e).__name__}", "error")

    n = len(texts)
    if n == 0:
        return []
    workers = max(1, min(max_workers or math_workers(), n))
    if workers == 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptdpo-reward") as ex:
        return list(ex.map(one, range(n)))
