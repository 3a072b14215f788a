"""A hint-sensitive base model for the learning-signal study (issue #8, part 2).

A random tiny Qwen3-VL has none of a real VLM's in-context ability: put a hint in its prompt and
nothing changes. PTD-PO needs a teacher whose distribution WITH the hint differs from the one
without it, in the right direction. This module gives the tiny model that ability with a short
supervised warm start on a mixture of

    (prompt + rendered oracle hint -> <think>..</think><answer>gold</answer>)   with prob. hint_frac
    (prompt alone                 -> <think>..</think><answer>gold</answer>)   otherwise

on synthetic families where the hint carries information a tiny model can read off the TEXT.
The hints stay answer-free (they pass the project's zero-spoiler audit): for the ``spatial``
relation questions ("Is the red circle left of the blue square?") the hint gives the two objects'
boxes, so the answer follows from comparing two coordinates; it never says "yes" or "no".

Everything here is a pure function: ``build_base_model`` returns the trained model and its report,
``hint_ability`` measures greedy accuracy with vs without the hint on held-out items.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ptdpo.data.schema import Item, item_images
from ptdpo.data.synthetic import generate_synthetic
from ptdpo.hints import OracleGenerator, render_context, render_hint, run_generation, to_unstructured
from ptdpo.hints.schema import Hint
from ptdpo.prompts import build_messages
from ptdpo.rewards import score_batch
from ptdpo.sft import format_target, sft_warm_start


@dataclass
class DataSpec:
    """Where the study's items come from (``generate_synthetic`` arguments)."""

    families: list[str] = field(default_factory=lambda: ["spatial"])
    difficulty: list[int] = field(default_factory=lambda: [2, 2])
    image_size: int = 64
    seed: int = 0

    def generate(self, n: int, split: str, ood: bool = False, start: int = 0) -> list[Item]:
        return generate_synthetic(
            n, seed=self.seed, families=self.families, split=split, difficulty=tuple(self.difficulty),
            image_size=self.image_size, ood=ood, start=start,
        )


@dataclass
class WarmStartSpec:
    """The warm-start recipe: model size, SFT mixture and schedule."""

    size: str = "0.5m"
    model_seed: int = 0
    n_items: int = 512
    hint_frac: float = 0.5  # fraction of SFT examples whose prompt carries the hint
    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 16
    # the <think> content of the targets (a chain of thought, not part of the hint): a fixed word (e.g.
    # "look"), or for spatial relation items a value a reader of the hint can copy from its boxes:
    # "coords" the leading digit of the relevant edge coordinate of each object ("a 1 b 4"), "coords_rel"
    # the same after the relation ("left of 1 4"), "boxes" the relation and the first corner of both boxes
    # verbatim ("left of (109,62) (328,62)"; many copied tokens per item, the one a 0.5M model learned);
    # for grid_color items "corner" is the first corner of the hint's box ("(333,0)"): locate, then read
    reasoning: str = "look"
    unstructured_frac: float = 0.0  # of the hinted examples, the fraction that see the paragraph form
    # fraction of examples whose prompt carries the ANSWER block ("Reference answer: yes"), as a real
    # VLM can read an answer put in its context: what the answer-conditioned teacher relies on
    answer_frac: float = 0.0
    eval_items: int = 128
    eval_max_new_tokens: int = 16  # greedy decoding budget of the hint-ability check (must fit the think block)
    # grid_color items: "keep" their images; "random": redraw them with white dots on random squares, so that
    # only the hint's box tells which square is answered (``grid_warmup``; the student starts weak)
    dots: str = "keep"
    dot_prob: float = 0.5
    template: str = "answer_tags"  # the prompt template (ptdpo.prompts) of the warm start and of RL after it


def oracle_hints(items: Sequence[Item]) -> dict[str, Hint]:
    """Audited, answer-free oracle hints by item id (items whose hint failed the audit are absent)."""
    return {r.item_id: r.hint for r in run_generation(OracleGenerator(), list(items)) if r.ok and r.hint is not None}


def unstructured_hints(hints: dict[str, Hint]) -> dict[str, Hint]:
    return {k: to_unstructured(h) for k, h in hints.items()}


def hint_block(hint: Hint | None) -> str | None:
    return render_hint(hint) if hint is not None else None


@torch.no_grad()
def greedy_responses(
    model, processor, items: Sequence[Item], contexts: Sequence[str | None] | None = None,
    max_new_tokens: int = 16, batch_size: int = 32, template: str = "answer_tags",
) -> tuple[list[str], list[float]]:
    """Greedy responses (the transformers engine, ``batch_size`` rows per pass) and their accuracy (0/1)
    per item, with ``contexts[i]`` as the prompt's context block."""
    from ptdpo.engines.hf import TransformersEngine

    contexts = list(contexts) if contexts is not None else [None] * len(items)
    model.eval()
    engine = TransformersEngine(model, processor, max_batch_rows=batch_size)
    msgs = [build_messages(it, context_block=c, template=template) for it, c in zip(items, contexts)]
    prompts = engine.encode(msgs, [item_images(it) for it in items])
    texts = [s.text for s in engine.greedy(prompts, max_new_tokens)]
    correct = [float(r.accuracy) for r in score_batch(texts, list(items), max_workers=1, template=template)]
    return texts, correct


def greedy_correct(
    model, processor, items: Sequence[Item], contexts: Sequence[str | None] | None = None,
    max_new_tokens: int = 16, batch_size: int = 32,
) -> list[float]:
    """Greedy accuracy (0/1) per item, with ``contexts[i]`` as the prompt's context block."""
    return greedy_responses(model, processor, items, contexts, max_new_tokens, batch_size)[1]


_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def think_of(response: str) -> str | None:
    m = _THINK.search(response)
    return m.group(1).strip() if m else None


def hint_ability(model, processor, items: Sequence[Item], hints: dict[str, Hint], max_new_tokens: int = 16,
                 reasoning: str | None = None, template: str = "answer_tags") -> dict[str, Any]:
    """Greedy accuracy on ``items`` with the structured hint, the unstructured hint, the answer block and
    no context. With ``reasoning`` (a ``WarmStartSpec.reasoning`` mode whose think block depends on the
    item), also the fraction of responses whose think block is exactly the target one (``think_match_*``):
    whether the model reads the hint at all, even where its answer does not follow."""
    items = [it for it in items if it.id in hints]
    contexts = {
        "without_hint": None,
        "with_hint": [render_hint(hints[it.id]) for it in items],
        "with_unstructured_hint": [render_hint(to_unstructured(hints[it.id])) for it in items],
        "with_answer": [render_context(it, None, "answer") for it in items],
    }
    res = {k: greedy_responses(model, processor, items, c, max_new_tokens, template=template)
           for k, c in contexts.items()}
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    without, with_s = res["without_hint"][1], res["with_hint"][1]
    out: dict[str, Any] = {"n": len(items)}
    out.update({f"acc_{k}": mean(r[1]) for k, r in res.items()})
    out.update({
        "hint_gain": mean(with_s) - mean(without),
        # items the student gets wrong alone but right with the hint: where PTD can help
        "frac_fixed_by_hint": mean([float(w > o) for w, o in zip(with_s, without)]),
        "frac_broken_by_hint": mean([float(w < o) for w, o in zip(with_s, without)]),
    })
    if reasoning is not None:
        targets = [reasoning_for(it, reasoning) for it in items]
        for k in ("without_hint", "with_hint", "with_unstructured_hint"):
            out[f"think_match_{k}"] = mean([float(think_of(t) == g) for t, g in zip(res[k][0], targets)])
    return out


_REL_AXIS = {"left of": 0, "right of": 0, "above": 1, "below": 1}


def reasoning_for(item: Item, mode: str) -> str:
    """The think-block text of an item's warm-start target (see ``WarmStartSpec.reasoning``)."""
    if mode not in ("coords", "coords_rel", "boxes", "corner"):
        return mode
    q = item.meta.get("query") or {}
    ev = item.meta.get("evidence") or []
    if mode == "corner":  # the first corner of the (one) evidence box: where the hint says to look
        if q.get("type") != "marked" or not ev:
            return "look"
        return "({},{})".format(*ev[0]["bbox"][:2])
    if q.get("type") != "relation" or len(ev) < 2:
        return "look"
    axis = _REL_AXIS[q["relation"]]
    a, b = (int(e["bbox"][axis]) // 100 for e in ev[:2])
    if mode == "coords_rel":
        return f"{q['relation']} {a} {b}"
    if mode == "boxes":
        ba, bb = (e["bbox"] for e in ev[:2])
        return f"{q['relation']} ({ba[0]},{ba[1]}) ({bb[0]},{bb[1]})"
    return f"a {a} b {b}"


def warm_start_examples(
    items: Sequence[Item], hints: dict[str, Hint], spec: WarmStartSpec, seed: int = 0
) -> tuple[list[Item], list[str], list[str | None]]:
    """The SFT mixture: every item once, with the answer block (prob. ``answer_frac``), the hint
    (prob. ``hint_frac``) or no context (the rest)."""
    from ptdpo.study.grid_warmup import redraw_uninformative

    if spec.dots not in ("keep", "random"):
        raise ValueError(f"base.dots must be 'keep' or 'random', got {spec.dots!r}")
    rng = random.Random(f"warm|{seed}")
    dot_rng = random.Random(f"warm-dots|{seed}")
    xs, ys, cs = [], [], []
    for it in items:
        if spec.dots == "random":
            it = redraw_uninformative(it, dot_rng, spec.dot_prob)
        target = format_target(reasoning_for(it, spec.reasoning), it.answer, spec.template)
        ctx = None
        u = rng.random()
        if spec.answer_frac and u < spec.answer_frac:
            ctx = render_context(it, None, "answer")
        elif it.id in hints and u < spec.answer_frac + spec.hint_frac:
            h = hints[it.id]
            if spec.unstructured_frac and rng.random() < spec.unstructured_frac:
                h = to_unstructured(h)
            ctx = render_hint(h)
        xs.append(it)
        ys.append(target)
        cs.append(ctx)
    return xs, ys, cs


def build_base_model(spec: WarmStartSpec, data: DataSpec, measure: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Build the tiny model, warm-start it on the hint/no-hint mixture, and measure its hint ability
    on held-out items (split ``"val"``). Returns ``(model, processor, report)``."""
    from ptdpo.models.tiny import build_tiny_qwen3vl

    t0 = time.perf_counter()
    model, processor = build_tiny_qwen3vl(spec.size, seed=spec.model_seed)
    items = data.generate(spec.n_items, split="warm")
    hints = oracle_hints(items)
    xs, ys, cs = warm_start_examples(items, hints, spec, seed=spec.model_seed)
    losses = sft_warm_start(model, processor, xs, ys, steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size,
                            contexts=cs, seed=spec.model_seed, template=spec.template)
    report: dict[str, Any] = {
        "spec": asdict(spec), "data": asdict(data), "sft_loss_first": losses[0], "sft_loss_last": losses[-1],
        "sft_losses": losses, "n_warm_items": len(items), "n_warm_hinted": sum(c is not None for c in cs),
        "time_warm_s": time.perf_counter() - t0,
    }
    if measure:
        held = data.generate(spec.eval_items, split="val")
        report["hint_ability"] = hint_ability(model, processor, held, oracle_hints(held),
                                             max_new_tokens=spec.eval_max_new_tokens, reasoning=spec.reasoning,
                                             template=spec.template)
    report["time_s"] = time.perf_counter() - t0
    return model, processor, report
