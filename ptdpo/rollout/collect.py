"""Rollout collection of one training step (METHOD.md 2.1-2.4): sample G rollouts per prompt from the
answer-free prompt, reward them, refill with new prompts while DAPO's dynamic sampling lacks informative
groups, then set advantages, the PTD mask and the reference-KL mask; with HDPO, add the correct privileged
rollouts of the cliff groups (``ptdpo.rollout.privileged``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptdpo import distributed as dist_utils
from ptdpo.config import TrainConfig
from ptdpo.data.schema import Item, ItemError, item_images
from ptdpo.engines.base import GenerationEngine, SamplingConfig
from ptdpo.engines.prompts import encode_chats
from ptdpo.hints.schema import Hint
from ptdpo.objectives import get_advantage_fn, overlong_reward_penalty
from ptdpo.prompts import build_messages
from ptdpo.rewards import score_batch
from ptdpo.rollout.groups import assign_advantages_and_masks, mark_uniform_groups, trim_groups
from ptdpo.rollout.privileged import privileged_round
from ptdpo.rollout.records import EncodedPrompt, Rollout
from ptdpo.sampler import EpochSampler

RewardFn = Callable[[list[str], list[Item]], list[tuple[float, float]]]


def encode_messages(processor: Any, messages: list[list[dict]], items: Sequence[Item], enable_thinking: bool
                    ) -> list[EncodedPrompt]:
    """One EncodedPrompt per chat, each with its item's images."""
    return encode_chats(processor, messages, [item_images(it) for it in items], enable_thinking)


def encode_student_prompts(processor: Any, items: Sequence[Item], cfg: TrainConfig) -> list[EncodedPrompt]:
    """The answer-free prompts of ``items``; an item over ``train.max_prompt_length`` is an ItemError."""
    prompts = encode_messages(processor, [build_messages(it, template=cfg.prompt_template) for it in items], items, cfg.enable_thinking)
    for it, p in zip(items, prompts):
        # A multimodal prompt cannot be cut safely (the cut could fall inside the image tokens).
        if p.input_ids.numel() > cfg.max_prompt_length:
            raise ItemError(
                it.id, "question",
                f"the prompt is {p.input_ids.numel()} tokens with its images, more than "
                f"train.max_prompt_length = {cfg.max_prompt_length}; raise the limit, lower "
                "train.max_pixels, or filter the item out",
            )
    return prompts


def has_teacher_context(item: Item, hints: dict[str, Hint], context: str) -> bool:
    """The teacher's privileged context exists for ``item``: an audited hint, a solution, or (``answer``)
    always. Items without one never get PTD."""
    if context == "hint":
        return item.id in hints
    if context == "solution":
        return bool(item.solution)
    return True


def score_rollouts(rollouts: list[Rollout], items: Sequence[Item], cfg: TrainConfig,
                   reward_fn: RewardFn | None = None) -> None:
    """Set ``accuracy``, ``format`` and ``reward`` (with DAPO's overlong shaping) of each rollout.
    ``reward_fn(texts, items) -> [(accuracy, format)]`` replaces the verifiable reward of ``ptdpo.rewards``."""
    texts = [r.text for r in rollouts]
    its = [items[r.item_index] for r in rollouts]
    if reward_fn is not None:
        scores = reward_fn(texts, its)
    else:
        results = score_batch(
            texts, its, max_workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s,
            think_prefilled=cfg.think_prefilled or cfg.enable_thinking, template=cfg.prompt_template,
        )
        scores = [(res.accuracy, res.format) for res in results]
    for r, (accuracy, fmt) in zip(rollouts, scores):
        r.accuracy = float(accuracy)
        r.format = float(fmt)
        r.reward = cfg.acc_weight * r.accuracy + cfg.format_weight * r.format
        if cfg.overlong_buffer:
            r.reward += float(
                overlong_reward_penalty(
                    [r.completion.numel()], cfg.max_response_length, cfg.overlong_buffer, cfg.overlong_penalty
                )[0]
            )


@dataclass
class Collected:
    rollouts: list[Rollout]
    reward_time: float  # seconds spent scoring (inside the collection time)
    counts: dict[str, float] = field(default_factory=dict)  # this rank's counts to sum over ranks (HDPO's)


class RolloutCollector:
    """Collects the rollouts of one step on this rank. ``sampler`` (the data order) is the trainer's:
    its state is checkpointed with the run."""

    def __init__(self, cfg: TrainConfig, items: list[Item], processor: Any, engine: GenerationEngine,
                 sampler: EpochSampler, hints: dict[str, Hint], reward_fn: RewardFn | None = None):
        self.cfg = cfg
        self.items = items
        self.processor = processor
        self.engine = engine
        self.sampler = sampler
        self.hints = hints
        self.reward_fn = reward_fn
        self.dist = dist_utils.DistInfo.current()
        self.advantage_fn = get_advantage_fn(cfg.advantage)

    def collect(self, step: int) -> Collected:
        """Rollouts scored, with advantages and the PTD mask set. With dynamic sampling, rounds of new
        prompts are drawn until ``prompts_per_step`` informative groups (over all ranks) or
        ``max_resample_rounds`` refills."""
        cfg, dist = self.cfg, self.dist
        per_rank = max(1, cfg.prompts_per_step // dist.world_size)
        rollouts: list[Rollout] = []
        reward_time = 0.0
        rounds = 1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)
        for rnd in range(rounds):
            # every rank draws the global batch so that the sampler state is identical everywhere
            indices = self.sampler.next(per_rank * dist.world_size)[dist.rank * per_rank : (dist.rank + 1) * per_rank]
            first_group = rnd * per_rank * dist.world_size + dist.rank * per_rank
            new = self._sample(indices, step, first_group, rnd)
            t = time.perf_counter()
            score_rollouts(new, self.items, cfg, self.reward_fn)
            reward_time += time.perf_counter() - t
            rollouts.extend(new)
            if not cfg.dynamic_sampling:
                break
            if dist_utils.all_sum(mark_uniform_groups(rollouts)) >= cfg.prompts_per_step:
                break
        if cfg.dynamic_sampling:
            trim_groups(rollouts, per_rank)
        context = [has_teacher_context(self.items[r.item_index], self.hints, cfg.ptd.teacher_context) for r in rollouts]
        assign_advantages_and_masks(rollouts, self.advantage_fn, context, cfg.ptd, cfg.policy_gradient)
        counts: dict[str, float] = {}
        if cfg.hdpo.enabled:
            scoring = [0.0]
            extra = self._privileged(rollouts, step, scoring)
            reward_time += scoring[0]
            rollouts.extend(extra.kept)
            counts = extra.metrics()
        return Collected(rollouts, reward_time, counts)

    def _privileged(self, rollouts: list[Rollout], step: int, scoring: list[float]):
        """HDPO's extra round: privileged rollouts of the cliff groups, the correct ones kept; the seconds
        spent scoring them are added to ``scoring[0]``."""
        cfg = self.cfg

        def encode(messages: list[list[dict]], items: list[Item]) -> list[EncodedPrompt]:
            return encode_messages(self.processor, messages, items, cfg.enable_thinking)

        def score(new: list[Rollout]) -> None:
            t = time.perf_counter()
            score_rollouts(new, self.items, cfg, self.reward_fn)
            scoring[0] += time.perf_counter() - t

        return privileged_round(rollouts, self.items, self.hints, self.engine, cfg, step, encode, score,
                                has_context=lambda it: has_teacher_context(it, self.hints, cfg.hdpo.context))

    def _sample(self, item_indices: list[int], step: int, first_group: int, rnd: int) -> list[Rollout]:
        """G rollouts for each item, all in one engine call. Each group samples with its own seed, a
        function of the step, the round and the group's GLOBAL index, and the engine keeps a group's
        samples independent of the rest of the call, so the rollouts are the same whichever rank draws
        them, however many ranks there are and however they are batched."""
        cfg = self.cfg
        prompts = encode_student_prompts(self.processor, [self.items[i] for i in item_indices], cfg)
        seeds = [dist_utils.step_seed(cfg.seed, step, rnd, first_group + k) for k in range(len(prompts))]
        sampling = SamplingConfig(cfg.max_response_length, cfg.temperature, cfg.top_p, True)
        sampled = self.engine.sample(prompts, cfg.group_size, sampling, seeds)
        return [
            Rollout(item_index=item_indices[k], group=first_group + k, prompt=prompts[k],
                    completion=s.completion, truncated=s.truncated, text=s.text)
            for k, group in enumerate(sampled)
            for s in group
        ]
