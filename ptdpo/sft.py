"""A short supervised warm start: teach a fresh policy the response format (and, optionally, to use
a context block) before RL, as tiny random models have no instruction-following to start from.

Trains cross-entropy on target completions with the same prompt builder, the same multimodal
batching and the same chunked log-prob path as the RL trainer, so what the warm start teaches is
exactly what RL then samples from.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ptdpo.data.schema import Item, item_images
from ptdpo.models.multimodal import completion_hidden_states, encode_prompts
from ptdpo.objectives import chunked_token_logprobs
from ptdpo.prompts import LIBRARY_TEMPLATE, build_messages, get_template
from ptdpo.rollout.records import collate_completions


def format_target(reasoning: str, answer: str, template: str = LIBRARY_TEMPLATE) -> str:
    """A response in the format the reward checks for the prompt ``template``: the think block, then the
    answer block (``answer_tags``) or the box (``boxed``, the paper's)."""
    if template == "boxed":
        return f"<think>{reasoning}</think>\\boxed{{{answer}}}"
    get_template(template)  # an unknown name is an error here, not a silently wrong target
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def sft_warm_start(
    model: torch.nn.Module,
    processor,
    items: Sequence[Item],
    targets: Sequence[str],
    steps: int = 50,
    lr: float = 3e-3,
    batch_size: int = 8,
    contexts: Sequence[str | None] | None = None,
    seed: int = 0,
    template: str = LIBRARY_TEMPLATE,
) -> list[float]:
    """Train ``model`` in place on (prompt of ``items[i]`` [+ ``contexts[i]``], ``targets[i]``)
    pairs, prompts built with the prompt ``template``; return the per-step mean token NLL."""
    if len(items) != len(targets):
        raise ValueError(f"{len(items)} items but {len(targets)} targets")
    contexts = list(contexts) if contexts is not None else [None] * len(items)
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id
    encoded_targets = [torch.tensor(tok.encode(t, add_special_tokens=False) + [eos]) for t in targets]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            extra = list(range(len(items)))
            rng.shuffle(extra)
            order.extend(extra)
        idx, order = order[:batch_size], order[batch_size:]
        batch_items = [items[i] for i in idx]
        messages = [build_messages(it, context_block=contexts[i], template=template) for it, i in zip(batch_items, idx)]
        prompts = encode_prompts(processor, messages, [item_images(it) for it in batch_items])
        ids, mask = collate_completions([encoded_targets[i] for i in idx], pad)
        h = completion_hidden_states(model, prompts, ids, mask)
        m = mask.bool().to(h.device)
        lp, _ = chunked_token_logprobs(h[m], model.get_output_embeddings().weight, ids.to(h.device)[m],
                                       return_entropy=False)
        loss = -lp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
