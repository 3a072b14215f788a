"""The gate of the learning-signal study (issue #16): before any RL arm runs, is the testbed able to tell
PTD-PO from its confounders?

Three measurements on held-out items, each a pure function of (model, processor, items):

- ``answer_margins``: for every item and prompt context (none = the student, the hint = PTD's teacher, the
  answer block = the answer-conditioned teacher), the log-probability of the whole response
  ``<think>R</think><answer>c</answer>`` for EVERY candidate answer c of an open answer set, and the
  margin log p(gold) - max over wrong c of log p(c). The teacher beats the student ON THE ANSWER when its
  margin is larger (the target: by at least 1 nat on average).
- ``group_outcomes``: G sampled rollouts per item without the hint (the student's first RL groups): the
  share of items whose G rollouts all fail (target: at least 40%), the rollout accuracy and pass@G.
- ``audit_pass_rate``: the share of items whose oracle hint passes the project's default zero-spoiler audit.

``gate_report`` puts them together with the verdict of each target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ptdpo.data.schema import Item, item_images
from ptdpo.hints import render_context
from ptdpo.hints.schema import Hint
from ptdpo.models.multimodal import completion_logprobs, encode_prompts, repeat_interleave_prompts
from ptdpo.prompts import build_messages
from ptdpo.rollout.records import collate_completions
from ptdpo.sft import format_target

GATE_MARGIN_NATS = 1.0  # the hinted teacher's answer margin over the student's, on average
GATE_ALL_FAIL = 0.4  # share of G = 8 groups that fail as a whole at the start


def candidate_answers(items: Sequence[Item], extra: Sequence[str] = ()) -> list[str]:
    """The open answer set the margins are taken over: every gold answer of ``items`` plus ``extra``
    (e.g. the full colour list of ``grid_color``), in a fixed order."""
    return sorted({it.answer.strip() for it in items} | {str(a).strip() for a in extra})


@torch.no_grad()
def candidate_logprobs(model, processor, items: Sequence[Item], contexts: Sequence[str | None],
                       candidates: Sequence[str], reasonings: Sequence[str], template: str = "answer_tags",
                       batch_items: int = 4) -> torch.Tensor:
    """[n_items, n_candidates] log p(``<think>reasonings[i]</think><answer>c</answer><eos>``) under item i's
    prompt with its context block: the whole response, so a multi-token answer counts in full."""
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model.eval()
    out = []
    for i in range(0, len(items), batch_items):
        chunk = list(items[i : i + batch_items])
        msgs = [build_messages(it, context_block=c, template=template) for it, c in zip(chunk, contexts[i : i + batch_items])]
        batch = repeat_interleave_prompts(encode_prompts(processor, msgs, [item_images(it) for it in chunk]),
                                          len(candidates))
        targets = [torch.tensor(tok.encode(format_target(r, c, template), add_special_tokens=False) + [eos])
                   for r in reasonings[i : i + batch_items] for c in candidates]
        ids, mask = collate_completions(targets, tok.pad_token_id)
        lp = completion_logprobs(model, batch, ids, mask).sum(-1)
        out.append(lp.view(len(chunk), len(candidates)))
    return torch.cat(out) if out else torch.zeros(0, len(candidates))


def margins_from_logprobs(lp: torch.Tensor, gold: Sequence[int]) -> dict[str, Any]:
    """Per item: log p(gold) - max over wrong candidates (the margin), the probability of gold among the
    candidates, and whether gold is the arg-max."""
    gold_t = torch.tensor(list(gold))
    rows = torch.arange(lp.shape[0])
    lp_gold = lp[rows, gold_t]
    wrong = lp.clone()
    wrong[rows, gold_t] = float("-inf")
    margin = lp_gold - wrong.max(-1).values
    p_gold = (lp_gold - lp.logsumexp(-1)).exp()
    return {"margin": margin.tolist(), "p_gold": p_gold.tolist(), "top1": (margin > 0).float().tolist()}


def think_options(item: Item, reasoning: str) -> list[str]:
    """The think blocks an answer is marginalised over: for ``corner`` reasoning on a grid item, the first
    corner of every square (where the model may say the dot is); otherwise the one target think block."""
    from ptdpo.study.base_model import reasoning_for

    if reasoning == "corner" and (item.meta or {}).get("template") == "marked_cell":
        return ["({},{})".format(*o["bbox"][:2]) for o in item.meta["objects"]]
    return [reasoning_for(item, reasoning)]


def answer_logprobs(model, processor, items: Sequence[Item], contexts: Sequence[str | None],
                    candidates: Sequence[str], reasoning: str = "look", template: str = "answer_tags") -> torch.Tensor:
    """[n_items, n_candidates] log p(answer = c) under each prompt, the think block marginalised over
    ``think_options``: log sum_r p(<think>r</think><answer>c</answer>). With one option it is that
    response's log-probability (the think block's share is the same for every candidate)."""
    rows = []
    for it, ctx in zip(items, contexts):
        opts = think_options(it, reasoning)
        lp = candidate_logprobs(model, processor, [it] * len(opts), [ctx] * len(opts), candidates, opts, template)
        rows.append(lp.logsumexp(0, keepdim=True))
    return torch.cat(rows) if rows else torch.zeros(0, len(candidates))


def answer_margins(model, processor, items: Sequence[Item], hints: dict[str, Hint], candidates: Sequence[str],
                   reasoning: str = "look", template: str = "answer_tags",
                   contexts: Sequence[str] = ("student", "hint", "answer")) -> dict[str, Any]:
    """Mean answer margin, p(gold) among the candidates and top-1 accuracy, per prompt context, on the
    items that have a hint; ``margin_gain`` = the hinted teacher's margin minus the student's (paired).
    The answer's log-probability is marginalised over the think blocks the model may write
    (``answer_logprobs``): what the prompt makes the model answer, not the answer given a right chain."""
    items = [it for it in items if it.id in hints]
    index = {c: j for j, c in enumerate(candidates)}
    missing = sorted({it.answer.strip() for it in items} - set(index))
    if missing:
        raise ValueError(f"answer_margins: gold answers {missing} are not among the candidates")
    gold = [index[it.answer.strip()] for it in items]
    blocks = {"student": [None] * len(items),
              "hint": [render_context(it, hints[it.id], "hint") for it in items],
              "answer": [render_context(it, None, "answer") for it in items]}
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))  # noqa: E731
    out: dict[str, Any] = {"n": len(items), "n_candidates": len(candidates)}
    per: dict[str, dict[str, list[float]]] = {}
    for name in contexts:
        lp = answer_logprobs(model, processor, items, blocks[name], candidates, reasoning, template)
        per[name] = margins_from_logprobs(lp, gold)
        for k, v in per[name].items():
            out[f"{k}_{name}"] = mean(v)
    if "student" in per and "hint" in per:
        gains = [h - s for h, s in zip(per["hint"]["margin"], per["student"]["margin"])]
        out["margin_gain"] = mean(gains)
        out["frac_hint_margin_higher"] = mean([float(g > 0) for g in gains])
        out["p_gold_gain"] = out["p_gold_hint"] - out["p_gold_student"]
    return out


@torch.no_grad()
def group_outcomes(model, processor, items: Sequence[Item], group_size: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 16, template: str = "answer_tags", seed: int = 0,
                   batch_rows: int = 64) -> dict[str, Any]:
    """G rollouts per item from the answer-free prompt: the share of all-fail groups, the rollout accuracy
    and pass@G (what the first RL step of an arm would see)."""
    from ptdpo.engines import SamplingConfig, TransformersEngine
    from ptdpo.models.sampling import mix_seed
    from ptdpo.rewards import score_batch

    model.eval()
    engine = TransformersEngine(model, processor, max_batch_rows=batch_rows)
    prompts = engine.encode([build_messages(it, template=template) for it in items], [item_images(it) for it in items])
    groups = engine.sample(prompts, group_size, SamplingConfig(max_new_tokens, temperature, 1.0),
                           [mix_seed(seed, i) for i in range(len(items))])
    texts = [s.text for g in groups for s in g]
    res = score_batch(texts, [it for it in items for _ in range(group_size)], max_workers=1, template=template)
    acc = [float(r.accuracy) for r in res]
    per_item = [sum(acc[j : j + group_size]) for j in range(0, len(acc), group_size)]
    n = max(len(items), 1)
    return {"n": len(items), "group_size": group_size, "all_fail_frac": sum(c == 0 for c in per_item) / n,
            "rollout_accuracy": sum(acc) / max(len(acc), 1), f"pass@{group_size}": sum(c > 0 for c in per_item) / n,
            "format": sum(float(r.format) for r in res) / max(len(res), 1)}


def audit_pass_rate(items: Sequence[Item]) -> dict[str, Any]:
    """The share of ``items`` whose oracle hint passes the default audit (``AuditConfig()``), and the
    reasons of those that fail."""
    from collections import Counter

    from ptdpo.hints import OracleGenerator, run_generation

    results = run_generation(OracleGenerator(), list(items))
    failed = [r for r in results if not r.ok]
    reasons = Counter(code for r in failed for code in (r.verdict.reasons if r.verdict else [r.status]))
    return {"n": len(results), "passed": len(results) - len(failed),
            "pass_rate": (len(results) - len(failed)) / max(len(results), 1), "fail_reasons": dict(reasons)}


def gate_verdict(margins: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    """Whether each target of the gate is met (``GATE_MARGIN_NATS``, ``GATE_ALL_FAIL``)."""
    gain = margins.get("margin_gain", float("nan"))
    p_gain = margins.get("p_gold_gain", float("nan"))
    fail = groups.get("all_fail_frac", float("nan"))
    # a margin gain must come with a more probable gold answer: a student that is confidently wrong alone
    # would raise the gain without the teacher knowing anything
    margin_met = bool(gain >= GATE_MARGIN_NATS and p_gain > 0)
    return {"margin_gain_nats": gain, "p_gold_gain": p_gain, "margin_target": GATE_MARGIN_NATS, "margin_met": margin_met,
            "all_fail_frac": fail, "all_fail_target": GATE_ALL_FAIL, "all_fail_met": bool(fail >= GATE_ALL_FAIL),
            "passed": bool(margin_met and fail >= GATE_ALL_FAIL)}
