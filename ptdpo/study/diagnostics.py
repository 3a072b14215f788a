"""Does the teacher's distribution WITH the hint differ from the student's, and in the right direction?

For each item, score the gold response (``<think>..</think><answer>gold</answer>``, the warm-start
format) and the same response with the wrong answer (for yes/no items) under the model with three
prompts: no context (the student), the hint (the PTD teacher), the answer (the answer-conditioned
teacher). The right direction: the hint raises log p(gold answer tokens) relative to the student,
and the margin log p(gold) - log p(wrong) grows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ptdpo.data.schema import Item, item_images
from ptdpo.hints import render_context
from ptdpo.hints.schema import Hint
from ptdpo.models.multimodal import completion_logprobs, encode_prompts
from ptdpo.prompts import build_messages
from ptdpo.rollout.records import collate_completions
from ptdpo.sft import format_target
from ptdpo.study.base_model import reasoning_for, think_of

_FLIP = {"yes": "no", "no": "yes"}


@torch.no_grad()
def _response_logprob(model, processor, items, contexts, responses) -> torch.Tensor:
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    msgs = [build_messages(it, context_block=c) for it, c in zip(items, contexts)]
    batch = encode_prompts(processor, msgs, [item_images(it) for it in items])
    ids, mask = collate_completions([torch.tensor(tok.encode(r, add_special_tokens=False) + [eos]) for r in responses],
                                    tok.pad_token_id)
    return completion_logprobs(model, batch, ids, mask).sum(-1)


@torch.no_grad()
def teacher_signal(model, processor, items: Sequence[Item], hints: dict[str, Hint], reasoning: str = "look",
                   batch_size: int = 32) -> dict[str, Any]:
    """Mean log p(gold response) and the gold-vs-wrong margin under student / hint / answer prompts."""
    model.eval()
    items = [it for it in items if it.id in hints]
    sums: dict[str, list[float]] = {}
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        gold = [format_target(reasoning_for(it, reasoning), it.answer) for it in chunk]
        wrong = [format_target(reasoning_for(it, reasoning), _FLIP.get(it.answer.strip().lower(), "0")) for it in chunk]
        for name, ctx in (("student", [None] * len(chunk)),
                          ("hint", [render_context(it, hints[it.id], "hint") for it in chunk]),
                          ("answer", [render_context(it, None, "answer") for it in chunk])):
            lg = _response_logprob(model, processor, chunk, ctx, gold)
            lw = _response_logprob(model, processor, chunk, ctx, wrong)
            sums.setdefault(f"logp_gold_{name}", []).extend(lg.tolist())
            sums.setdefault(f"margin_{name}", []).extend((lg - lw).tolist())
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))  # noqa: E731
    out = {k: mean(v) for k, v in sums.items()}
    out["n"] = len(items)
    out["frac_hint_raises_gold"] = mean([float(h > s) for h, s in zip(sums["logp_gold_hint"], sums["logp_gold_student"])])
    out["frac_hint_margin_positive"] = mean([float(m > 0) for m in sums["margin_hint"]])
    out["frac_student_margin_positive"] = mean([float(m > 0) for m in sums["margin_student"]])
    return out


_CORNER = re.compile(r"\((\d+),(\d+)\)")


def box_reasoning_error(responses: Sequence[str], items: Sequence[Item]) -> dict[str, float]:
    """How well think blocks of the ``"boxes"`` form ("left of (x,y) (x,y)") locate the two objects of
    spatial relation items, answer-free (no hint in the prompt): the share of responses with two corners,
    the share whose think block is exactly the target, and the mean absolute error of the corner
    coordinates (0..1000 scale, guesses clipped to it; 333 is what uniform guessing gives) over the responses that have them.
    This is where PTD's teacher (which reads the boxes off the hint) knows more than the student."""
    parsed, exact, errs = 0, 0, []
    for text, it in zip(responses, items):
        target = reasoning_for(it, "boxes")
        think = think_of(text) or ""
        exact += think == target
        got = _CORNER.findall(think)
        if len(got) >= 2:
            parsed += 1
            want = _CORNER.findall(target)
            # a drifted policy can write any digit string: clip to the 0..1000 box scale so one such
            # response counts as one bad guess, not as an error of 10^7
            errs += [abs(min(int(g), 1000) - int(w)) for gc, wc in zip(got[:2], want) for g, w in zip(gc, wc)]
    n = max(len(items), 1)
    return {"think_parsed": parsed / n, "think_exact": exact / n,
            "corner_abs_error": float(sum(errs) / len(errs)) if errs else float("nan"), "n": len(items)}
