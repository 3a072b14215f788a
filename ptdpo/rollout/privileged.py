"""HDPO's privileged rollouts (arXiv 2603.23871), the extra sampling round of a step.

After the step's rollouts are scored, every "cliff" group (all of its rollouts failed: its advantages,
and so its RL gradient, are zero) gets ``hdpo.num_samples`` rollouts from the same policy on the
PRIVILEGED prompt: the student's prompt with the ground truth (``hdpo.context``: the answer, or the
reference solution) added after the question, exactly as the answer-conditioned teacher sees it
(``ptdpo.hints.render.teacher_messages``), with the same images. They are scored with the run's reward;
only the correct ones are kept (HDPO's R = 1 filter; at most ``hdpo.max_kept_per_prompt`` each).

A kept rollout joins the step as a distillation-only rollout: ``prompt`` is the STUDENT's answer-free
prompt (the student is scored on tokens it did not produce, without the answer), the teacher re-scores
the same tokens with the privileged prompt, it is in no policy-gradient or KL term (``in_pg`` false),
and it travels in its cliff group's mini-batch. Nothing here imports the collector: it hands in how to
encode prompts and how to score rollouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ptdpo import distributed as dist_utils
from ptdpo.config import TrainConfig
from ptdpo.data.schema import Item
from ptdpo.engines.base import GenerationEngine, SamplingConfig
from ptdpo.hints.render import teacher_messages
from ptdpo.hints.schema import Hint
from ptdpo.models.sampling import mix_seed
from ptdpo.objectives import cliff_mask
from ptdpo.rollout.records import EncodedPrompt, Rollout

# Mixed into a cliff group's step seed, so that its privileged samples draw other numbers than its rollouts.
PRIVILEGED_SALT = 0x48445030

Encode = Callable[[list[list[dict]], list[Item]], list[EncodedPrompt]]
Score = Callable[[list[Rollout]], None]


@dataclass
class PrivilegedRound:
    kept: list[Rollout]  # the correct privileged rollouts, ready for the distillation term
    cliff_groups: int  # this rank's cliff groups with a ground truth to show
    sampled: int  # privileged rollouts drawn on this rank
    correct: int  # how many of them were correct

    def metrics(self) -> dict[str, float]:
        """This rank's counts, to be summed over ranks (``ptdpo.metrics``: the ``hdpo_*`` rows)."""
        return {"hdpo_cliff_groups": float(self.cliff_groups), "hdpo_privileged_rollouts": float(self.sampled),
                "hdpo_privileged_correct": float(self.correct), "hdpo_kept_rollouts": float(len(self.kept))}


def privileged_round(
    rollouts: list[Rollout],
    items: Sequence[Item],
    hints: dict[str, Hint],
    engine: GenerationEngine,
    cfg: TrainConfig,
    step: int,
    encode: Encode,
    score: Score,
    has_context: Callable[[Item], bool],
) -> PrivilegedRound:
    """The privileged rollouts of this rank's cliff groups (module docstring). ``has_context(item)``: the
    item carries the ground truth ``hdpo.context`` names (an item without a solution gets none)."""
    hd = cfg.hdpo
    acc = torch.tensor([r.accuracy for r in rollouts])
    cliff = cliff_mask(acc, torch.tensor([r.group for r in rollouts])) if rollouts else torch.zeros(0, dtype=torch.bool)
    firsts: dict[int, Rollout] = {}
    for r, on in zip(rollouts, cliff.tolist()):
        if on and r.group not in firsts and has_context(items[r.item_index]):
            firsts[r.group] = r
    reps = list(firsts.values())
    # The transformers engine generates through the (possibly FSDP-sharded) policy: every rank must make the
    # same generate passes, so each one asks for as many prompts as the busiest (copies, discarded).
    n_calls = len(reps)
    if dist_utils.is_distributed() and engine.name == "transformers":
        n_calls = int(dist_utils.all_max(len(reps)))
    if n_calls == 0:
        return PrivilegedRound([], 0, 0, 0)
    its = [items[r.item_index] for r in reps]
    messages = [teacher_messages(it, hints.get(it.id), context=hd.context, template=cfg.prompt_template) for it in its]
    prompts = encode(messages, its) if reps else []
    seeds = [mix_seed(dist_utils.step_seed(cfg.seed, step, 0, r.group), PRIVILEGED_SALT) for r in reps]
    filler = prompts[0] if prompts else rollouts[0].prompt
    prompts += [filler] * (n_calls - len(reps))
    seeds += [PRIVILEGED_SALT] * (n_calls - len(reps))
    sampling = SamplingConfig(cfg.max_response_length, cfg.temperature, cfg.top_p, True)
    groups = engine.sample(prompts, hd.num_samples, sampling, seeds)[: len(reps)]
    candidates = [
        Rollout(item_index=r.item_index, group=r.group, prompt=r.prompt, completion=s.completion,
                truncated=s.truncated, text=s.text, in_pg=False, ref_kl=False, privileged=True)
        for r, group in zip(reps, groups)
        for s in group
    ]
    score(candidates)
    kept: list[Rollout] = []
    per_group: dict[int, int] = {}
    for c in candidates:
        if c.accuracy >= 1.0 and per_group.get(c.group, 0) < (hd.max_kept_per_prompt or hd.num_samples):
            per_group[c.group] = per_group.get(c.group, 0) + 1
            c.ptd = True  # the distillation term (HDPO's, in PTD's place)
            kept.append(c)
    return PrivilegedRound(kept, len(reps), len(candidates), sum(c.accuracy >= 1.0 for c in candidates))
