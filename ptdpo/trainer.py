"""The PTD-PO training loop (METHOD.md section 2), readable top to bottom.

One step:
  1. sample ``prompts_per_step`` items; G rollouts each from the policy, answer-free prompt only;
  2. reward every rollout (accuracy, format); DAPO: overlong shaping, dynamic sampling with refill;
  3. group advantages; the PTD mask (failed rollouts of groups below tau_ptd that have a hint);
  4. teacher forward, no gradient, on PTD rollouts only: the frozen reference (or the old policy)
     re-scores the same completion tokens with the hint-augmented prompt and the same images;
  5. policy update over mini-batches: RL loss + kl_coef * KL(ref) + lambda_ptd * Top-K JSD, each
     normalised by its global token count in the optimizer step, gradient accumulation over
     micro-batches, data-parallel gradient sum, clipping, AdamW;
  6. metrics, and a checkpoint every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptdpo import distributed as dist_utils
from ptdpo.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ptdpo.config import TrainConfig
from ptdpo.data.schema import Item, ItemError, item_images
from ptdpo.hints.render import teacher_messages
from ptdpo.hints.schema import Hint
from ptdpo.models.multimodal import completion_hidden_states, encode_prompts
from ptdpo.objectives import (
    chunked_token_logprobs,
    chunked_topk_jsd_loss,
    get_advantage_fn,
    get_policy_loss_fn,
    group_stats,
    kl_penalty,
    overlong_reward_penalty,
    ptd_mask,
    reduce_ptd_loss,
    ref_kl_group_mask,
)
from ptdpo.prompts import build_messages
from ptdpo.rewards import score_batch
from ptdpo.rollout.base import RolloutBackend, SamplingConfig
from ptdpo.rollout.records import (
    EncodedPrompt,
    Rollout,
    collate_completions,
    collate_prompts,
    pad_rows,
    split_prompt_batch,
)
from ptdpo.sampler import EpochSampler


class TrainingError(RuntimeError):
    pass


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    rollouts: list[Rollout] = field(default_factory=list)


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    return model.get_output_embeddings().weight


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Owns the policy, the frozen reference, the optimizer and the data order of one run."""

    def __init__(
        self,
        cfg: TrainConfig,
        policy: torch.nn.Module,
        processor: Any,
        items: Sequence[Item],
        hints: dict[str, Hint] | None = None,
        backend: RolloutBackend | None = None,
        reference: torch.nn.Module | None = None,
        checkpoint_dir: str | Path | None = None,
        total_steps: int | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        reward_fn: Callable[[list[str], list[Item]], list[tuple[float, float]]] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
    ):
        """``reward_fn(texts, items) -> [(accuracy, format)]`` replaces the verifiable reward of
        ``ptdpo.rewards`` (accuracy must be 0 or 1: the PTD mask reads it)."""
        self.cfg = cfg
        self.processor = processor
        self.items = list(items)
        self.hints = hints or {}
        self.dist = dist_utils.DistInfo.current()
        self.policy = policy
        if cfg.freeze_vision:
            for name, p in policy.named_parameters():
                if ".visual." in f".{name}":
                    p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        if reference is None and cfg.needs_reference:
            reference = copy.deepcopy(policy)
        self.reference = reference
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        if backend is None:
            from ptdpo.rollout.hf import HFRolloutBackend

            backend = HFRolloutBackend(policy, processor, suppress_ids=None)
        self.backend = backend
        self.pad_id = processor.tokenizer.pad_token_id
        self.optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=tuple(cfg.adam_betas),
            weight_decay=cfg.weight_decay,
        )
        if total_steps is None and cfg.epochs:
            total_steps = math.ceil(cfg.epochs * len(self.items) / cfg.prompts_per_step)
        self.total_steps = total_steps or cfg.max_steps
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.sampler = EpochSampler(len(self.items), seed=cfg.seed)
        self.step = 0
        self.metrics: list[dict[str, float]] = []
        self.nonfinite_in_row = 0
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_step = on_step
        self.reward_fn = reward_fn
        self.on_checkpoint = on_checkpoint
        self.advantage_fn = get_advantage_fn(cfg.advantage)
        self.policy_loss_fn = get_policy_loss_fn("gspo" if cfg.algorithm == "gspo" else "ppo")

    # ------------------------------------------------------------------ prompts
    def _encode_messages(self, messages: list[list[dict]], items: list[Item]) -> list[EncodedPrompt]:
        images = [item_images(it) for it in items]
        think = self.cfg.enable_thinking
        batch = encode_prompts(self.processor, messages, images, enable_thinking=think)
        return split_prompt_batch(batch, batch["images_per_sample"], texts=batch["texts"], images=images)

    def _encode(self, items: list[Item]) -> list[EncodedPrompt]:
        prompts = self._encode_messages([build_messages(it) for it in items], items)
        for it, p in zip(items, prompts):
            # A multimodal prompt cannot be cut safely (the cut could fall inside the image tokens).
            if p.input_ids.numel() > self.cfg.max_prompt_length:
                raise ItemError(
                    it.id, "question",
                    f"the prompt is {p.input_ids.numel()} tokens with its images, more than "
                    f"train.max_prompt_length = {self.cfg.max_prompt_length}; raise the limit, lower "
                    "train.max_pixels, or filter the item out",
                )
        return prompts

    def _teacher_prompts(self, items: list[Item]) -> list[EncodedPrompt]:
        ctx = self.cfg.ptd.teacher_context
        return self._encode_messages([teacher_messages(it, self.hints.get(it.id), context=ctx) for it in items], items)

    def has_teacher_context(self, item: Item) -> bool:
        ctx = self.cfg.ptd.teacher_context
        if ctx == "hint":
            return item.id in self.hints
        if ctx == "solution":
            return bool(item.solution)
        return True

    # ------------------------------------------------------------------ rollouts
    def _rollout_round(self, item_indices: list[int], first_group: int, rnd: int) -> list[Rollout]:
        """G rollouts for each item. Each group samples with its own seed, a function of the step,
        the round and the group's GLOBAL index, so the rollouts are the same whichever rank draws
        them and however many ranks there are."""
        cfg = self.cfg
        items = [self.items[i] for i in item_indices]
        prompts = self._encode(items)
        groups = [[p] * cfg.group_size for p in prompts]
        seeds = [dist_utils.step_seed(cfg.seed, self.step, rnd, first_group + k) for k in range(len(items))]
        sampling = SamplingConfig(cfg.max_response_length, cfg.temperature, cfg.top_p, True)
        sampled = self.backend.generate_groups(groups, sampling, seeds)
        out = []
        for k, group in enumerate(sampled):
            for s in group:
                out.append(
                    Rollout(
                        item_index=item_indices[k],
                        group=first_group + k,
                        prompt=prompts[k],
                        completion=s.completion,
                        truncated=s.truncated,
                        text=s.text,
                    )
                )
        return out

    def _score(self, rollouts: list[Rollout]) -> None:
        cfg = self.cfg
        texts = [r.text for r in rollouts]
        items = [self.items[r.item_index] for r in rollouts]
        if self.reward_fn is not None:
            scores = self.reward_fn(texts, items)
        else:
            results = score_batch(
                texts, items, max_workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s,
                think_prefilled=cfg.think_prefilled or cfg.enable_thinking,
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

    @torch.no_grad()
    def _init_sharded(self) -> None:
        """FSDP2 initialises lazily on the first forward through the ROOT module; generation reaches
        the vision tower directly, so run one tiny root forward per sharded model first."""
        if getattr(self, "_sharded_ready", False):
            return
        self._sharded_ready = True
        models = [m for m in (self.policy, self.reference) if m is not None and dist_utils.is_sharded(m)]
        if not models:
            return
        prompt = self._encode([self.items[0]])[0]
        probe = Rollout(0, 0, prompt, torch.tensor([self.pad_id]), False, "")
        for model in models:
            self._hidden(model, [probe])

    def collect(self) -> list[Rollout]:
        """Rollouts of one step on this rank, scored, with advantages and the PTD mask set."""
        cfg = self.cfg
        self._init_sharded()
        world, rank = self.dist.world_size, self.dist.rank
        per_rank = max(1, cfg.prompts_per_step // world)
        rollouts: list[Rollout] = []
        self._reward_time = 0.0
        rounds = 1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)
        kept_groups = 0
        for rnd in range(rounds):
            # every rank draws the global batch so that the sampler state is identical everywhere
            indices = self.sampler.next(per_rank * world)[rank * per_rank : (rank + 1) * per_rank]
            new = self._rollout_round(indices, first_group=rnd * per_rank * world + rank * per_rank, rnd=rnd)
            t = time.perf_counter()
            self._score(new)
            self._reward_time += time.perf_counter() - t
            rollouts.extend(new)
            if not cfg.dynamic_sampling:
                break
            kept_groups = self._mark_uniform_groups(rollouts)
            if dist_utils.all_sum(kept_groups) >= cfg.prompts_per_step:
                break
        if cfg.dynamic_sampling:
            self._trim_groups(rollouts, per_rank)
        self._advantages_and_masks(rollouts)
        return rollouts

    def _mark_uniform_groups(self, rollouts: list[Rollout]) -> int:
        """DAPO dynamic sampling: groups whose accuracies are all equal leave the PG term."""
        by_group: dict[int, list[Rollout]] = {}
        for r in rollouts:
            by_group.setdefault(r.group, []).append(r)
        kept = 0
        for rs in by_group.values():
            uniform = len({r.accuracy for r in rs}) == 1
            for r in rs:
                r.in_pg = not uniform
            kept += not uniform
        return kept

    def _trim_groups(self, rollouts: list[Rollout], per_rank: int) -> None:
        # Keep at most ``per_rank`` informative groups for the PG term; surplus informative groups
        # leave it too. Uniform groups stay in the list: they can still feed PTD.
        seen: list[int] = []
        for r in rollouts:
            if r.in_pg and r.group not in seen:
                seen.append(r.group)
        surplus = set(seen[per_rank:])
        for r in rollouts:
            if r.group in surplus:
                r.in_pg = False

    def _advantages_and_masks(self, rollouts: list[Rollout]) -> None:
        cfg = self.cfg
        groups = torch.tensor([r.group for r in rollouts])
        rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
        adv = self.advantage_fn(rewards, groups)
        acc = torch.tensor([r.accuracy for r in rollouts])
        has_ctx = torch.tensor([self.has_teacher_context(self.items[r.item_index]) for r in rollouts])
        truncated = torch.tensor([r.truncated for r in rollouts])
        if cfg.ptd.selects_rollouts:
            pm = ptd_mask(
                acc,
                groups,
                has_ctx,
                tau_ptd=cfg.ptd.tau_ptd,
                all_trajectories=cfg.ptd.ptd_all_trajectories,
                skip_truncated=cfg.ptd.ptd_skip_truncated,
                truncated=truncated,
            )
        else:
            pm = torch.zeros(len(rollouts), dtype=torch.bool)
        kl_off = ref_kl_group_mask(pm, groups) if cfg.ptd.mask_ref_kl_on_ptd_groups else torch.zeros_like(pm)
        distill = cfg.ptd.distills
        for i, r in enumerate(rollouts):
            r.advantage = float(adv[i])
            r.ptd = distill and bool(pm[i]) and (r.in_pg or cfg.ptd.ptd_on_filtered_groups)
            r.ref_kl = not bool(kl_off[i])

    # ------------------------------------------------------------------ forwards
    def _hidden(self, model: torch.nn.Module, rollouts: list[Rollout], prompts: list[EncodedPrompt] | None = None):
        prompt_batch = collate_prompts(prompts or [r.prompt for r in rollouts], self.pad_id)
        ids, mask = collate_completions([r.completion for r in rollouts], self.pad_id)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        with self._autocast(device):
            hidden = completion_hidden_states(model, prompt_batch, ids, mask)
        return hidden, ids, mask.bool()

    def _autocast(self, device: torch.device):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _score_with(self, model: torch.nn.Module, rollouts: list[Rollout], attr: str) -> None:
        """Per-token log-probs of the sampled tokens under ``model`` (old policy or reference)."""
        weight = lm_head_weight(model)
        chunks = _chunks(rollouts, self.cfg.micro_batch_rollouts)
        for _ in range(dist_utils.lockstep_padding(len(chunks), model)):
            self._hidden(model, [self._any_rollout])
        for chunk in chunks:
            h, ids, m = self._hidden(model, chunk)
            lp, _ = chunked_token_logprobs(h[m], weight, ids[m], temperature=self.cfg.temperature)
            rows = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)
            rows[m] = lp
            for r, row in zip(chunk, rows):
                setattr(r, attr, row[: r.completion.numel()].clone())

    @torch.no_grad()
    def _teacher_forward(self, rollouts: list[Rollout]) -> dict[str, float]:
        """Teacher hidden states on PTD rollouts: same completion tokens and images, hint prompt."""
        ptd = [r for r in rollouts if r.ptd]
        if not dist_utils.all_sum(len(ptd)):
            return {}
        teacher = self.reference if self.cfg.ptd.teacher == "ref" else self.policy
        self._teacher_weight = lm_head_weight(teacher).detach().clone()
        self._any_rollout = rollouts[0]
        prompts = self._teacher_prompts([self.items[r.item_index] for r in ptd])
        sums = {"ent_ok": 0.0, "ent_fail": 0.0, "n_ok": 0, "n_fail": 0, "nll": 0.0}
        chunks = _chunks(list(range(len(ptd))), self.cfg.micro_batch_rollouts)
        for _ in range(dist_utils.lockstep_padding(len(chunks), teacher)):
            self._hidden(teacher, [self._any_rollout])
        for chunk_idx in chunks:
            chunk = [ptd[i] for i in chunk_idx]
            tprompts = [prompts[i] for i in chunk_idx]
            for r, tp in zip(chunk, tprompts):
                _assert_same_images(r.prompt, tp)
            h, ids, m = self._hidden(teacher, chunk, tprompts)
            lp, ent = chunked_token_logprobs(h[m], self._teacher_weight, ids[m], temperature=self.cfg.temperature)
            ok_tok = torch.tensor([r.accuracy >= 1.0 for r in chunk], device=m.device)[:, None].expand_as(m)[m]
            sums["ent_ok"] += float(ent[ok_tok].sum())
            sums["ent_fail"] += float(ent[~ok_tok].sum())
            sums["n_ok"] += int(ok_tok.sum())
            sums["n_fail"] += int((~ok_tok).sum())
            sums["nll"] += float(-lp.sum())
            for r, row, mrow in zip(chunk, h, m):
                r.teacher_hidden = row[mrow].clone()
        sums = {k: dist_utils.all_sum(v) for k, v in sums.items()}
        n = sums["n_ok"] + sums["n_fail"]
        return {
            "teacher_entropy": (sums["ent_ok"] + sums["ent_fail"]) / max(n, 1),
            "teacher_entropy_failed": sums["ent_fail"] / sums["n_fail"] if sums["n_fail"] else float("nan"),
            "teacher_entropy_correct": sums["ent_ok"] / sums["n_ok"] if sums["n_ok"] else float("nan"),
            "teacher_nll": sums["nll"] / max(n, 1),
        }

    # ------------------------------------------------------------------ update
    def _update(self, rollouts: list[Rollout]) -> dict[str, float]:
        cfg = self.cfg
        weight_fn = lambda: lm_head_weight(self.policy)  # noqa: E731 - re-read after FSDP/DDP wrapping
        n_prompts_local = len({r.group for r in rollouts})
        mb_groups = cfg.mini_batch_prompts or cfg.prompts_per_step
        mb_groups_local = max(1, mb_groups // self.dist.world_size)
        groups_sorted = sorted({r.group for r in rollouts})
        minibatches = [
            [r for r in rollouts if r.group in set(groups_sorted[i : i + mb_groups_local])]
            for i in range(0, max(n_prompts_local, 1), mb_groups_local)
        ]
        stats: dict[str, list[float]] = {}
        for _epoch in range(cfg.epochs_per_batch):
            for mb in minibatches:
                s = self._optimizer_step(mb, weight_fn)
                for k, v in s.items():
                    stats.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def _optimizer_step(self, mb: list[Rollout], weight_fn) -> dict[str, float]:
        cfg = self.cfg
        pg_rows = [r for r in mb if r.in_pg]
        # Global normalisers over the optimizer step, summed across data-parallel ranks, so that
        # neither gradient accumulation nor the number of ranks changes the loss (METHOD.md 2.7).
        n_pg_tokens = dist_utils.all_sum(sum(r.completion.numel() for r in pg_rows))
        n_pg_seqs = dist_utils.all_sum(len(pg_rows))
        n_kl_tokens = dist_utils.all_sum(sum(r.completion.numel() for r in pg_rows if r.ref_kl))
        n_ptd_tokens = dist_utils.all_sum(sum(r.completion.numel() for r in mb if r.ptd))
        use_kl = cfg.kl_coef > 0 and self.reference is not None
        self.optimizer.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        stat_weight = 0
        chunks = _chunks([r for r in mb if r.in_pg or r.ptd], cfg.micro_batch_rollouts)
        for _ in range(dist_utils.lockstep_padding(len(chunks), self.policy)):
            # FSDP: every rank must run as many forward/backward passes as the busiest one
            (self._hidden(self.policy, [mb[0]])[0].sum() * 0.0).backward()
        for chunk in chunks:
            h, ids, m = self._hidden(self.policy, chunk)
            dev = h.device
            weight = weight_fn()
            loss = h.new_zeros((), dtype=torch.float32)
            in_pg = torch.tensor([r.in_pg for r in chunk], device=dev)
            if in_pg.any():
                mpg = m & in_pg[:, None]
                lp, ent = chunked_token_logprobs(h[mpg], weight, ids[mpg], temperature=cfg.temperature)
                logp = torch.zeros(ids.shape, dtype=lp.dtype, device=dev).masked_scatter(mpg, lp)
                old = pad_rows([_old_or_detached(r, lp, mpg, i) for i, r in enumerate(chunk)], ids.shape[1])
                adv = torch.tensor([r.advantage for r in chunk], dtype=lp.dtype, device=dev)
                pg, pstats = self.policy_loss_fn(
                    logp,
                    old.to(device=dev, dtype=lp.dtype),
                    adv,
                    mpg,
                    clip_low=cfg.clip_low,
                    clip_high=cfg.clip_high,
                    loss_agg_mode=cfg.loss_agg,
                    global_normalizer=n_pg_seqs if cfg.loss_agg.startswith("seq-") else n_pg_tokens,
                    max_response_len=cfg.max_response_length,
                )
                loss = loss + pg
                acc["pg_loss_sum"] = acc.get("pg_loss_sum", 0.0) + float(pg.detach())
                w = int(mpg.sum())
                stat_weight += w
                for k, v in pstats.items():
                    acc[k] = acc.get(k, 0.0) + float(v) * w
                ok_tok = torch.tensor([r.accuracy >= 1.0 for r in chunk], device=dev)[:, None].expand_as(mpg)[mpg]
                for key, sel in (("ok", ok_tok), ("fail", ~ok_tok)):
                    acc[f"student_entropy_{key}_sum"] = acc.get(f"student_entropy_{key}_sum", 0.0) + float(ent[sel].sum())
                    acc[f"student_tokens_{key}_sum"] = acc.get(f"student_tokens_{key}_sum", 0.0) + float(sel.sum())
                if use_kl:
                    mkl = mpg & torch.tensor([r.ref_kl for r in chunk], device=dev)[:, None]
                    if mkl.any():
                        ref = pad_rows([_or_zeros(r.ref_logprobs, r) for r in chunk], ids.shape[1])
                        kl_tok = kl_penalty(logp, ref.to(device=dev, dtype=lp.dtype), cfg.kl_estimator)
                        kl_sum = torch.where(mkl, kl_tok, torch.zeros_like(kl_tok)).sum()
                        loss = loss + cfg.kl_coef * kl_sum / max(n_kl_tokens, 1)
                        acc["kl_ref_sum"] = acc.get("kl_ref_sum", 0.0) + float(kl_sum.detach())
            is_ptd = torch.tensor([r.ptd for r in chunk], device=dev)
            if is_ptd.any():
                mp = m & is_ptd[:, None]
                teacher_h = torch.cat([r.teacher_hidden for r in chunk if r.ptd]).to(device=dev, dtype=h.dtype)
                jsd = chunked_topk_jsd_loss(
                    h[mp],
                    weight,
                    teacher_hidden=teacher_h,
                    teacher_weight=self._teacher_weight.to(dev),
                    k=cfg.ptd.k,
                    support=cfg.ptd.support,
                    beta=cfg.ptd.beta,
                    divergence=cfg.ptd.divergence,
                    temperature=cfg.temperature,
                    chunk_size=cfg.ptd.chunk_size,
                )
                loss = loss + cfg.ptd.lambda_ptd * reduce_ptd_loss(jsd, n_ptd_tokens)
                acc["ptd_loss_sum"] = acc.get("ptd_loss_sum", 0.0) + float(jsd.detach().sum())
            if loss.requires_grad:
                (loss * dist_utils.loss_scale()).backward()
        dist_utils.sum_gradients(self.policy)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = dist_utils.clip_grad_norm(params, cfg.grad_clip)
        out = {k: v / max(stat_weight, 1) for k, v in acc.items() if not k.endswith("_sum")}
        ent_ok, ent_fail = (dist_utils.all_sum(acc.get(f"student_entropy_{k}_sum", 0.0)) for k in ("ok", "fail"))
        tok_ok, tok_fail = (dist_utils.all_sum(acc.get(f"student_tokens_{k}_sum", 0.0)) for k in ("ok", "fail"))
        out["student_entropy"] = (ent_ok + ent_fail) / max(tok_ok + tok_fail, 1)
        out["student_entropy_correct"] = ent_ok / tok_ok if tok_ok else float("nan")
        out["student_entropy_failed"] = ent_fail / tok_fail if tok_fail else float("nan")
        out["ptd_loss"] = dist_utils.all_sum(acc.get("ptd_loss_sum", 0.0)) / max(n_ptd_tokens, 1)
        out["kl_ref"] = dist_utils.all_sum(acc.get("kl_ref_sum", 0.0)) / max(n_kl_tokens, 1)
        out["pg_loss"] = dist_utils.all_sum(acc.get("pg_loss_sum", 0.0))
        out["grad_norm"] = float(grad_norm)
        if not math.isfinite(out["grad_norm"]):
            # Skip the update; a run of these stops training with a clear message.
            self.optimizer.zero_grad(set_to_none=True)
            out["skipped_nonfinite"] = 1.0
            return out
        self.optimizer.step()
        out["skipped_nonfinite"] = 0.0
        return out

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.backend.wake()
        self.policy.eval()
        rollouts = self.collect()
        self._any_rollout = rollouts[0]
        self.backend.sleep()
        t_rollout = time.perf_counter()
        ref_needed = cfg.kl_coef > 0 and self.reference is not None
        if ref_needed:
            self._score_with(self.reference, [r for r in rollouts if r.in_pg], "ref_logprobs")
        multi_update = cfg.epochs_per_batch > 1 or (cfg.mini_batch_prompts or cfg.prompts_per_step) < cfg.prompts_per_step
        if multi_update:
            self._score_with(self.policy, [r for r in rollouts if r.in_pg], "old_logprobs")
        t_ref = time.perf_counter()
        tstats = self._teacher_forward(rollouts)
        t_teacher = time.perf_counter()
        self.policy.train()
        ustats = self._update(rollouts)
        if not ustats.get("skipped_nonfinite"):
            self.scheduler.step()
        self.backend.sync_weights(self.policy)
        t_update = time.perf_counter()
        self.step += 1
        m = self._step_metrics(rollouts)
        m.update(tstats)
        m.update(ustats)
        m.update(
            step=self.step,
            lr=self.scheduler.get_last_lr()[0],
            time_rollout=t_rollout - t0 - self._reward_time,
            time_reward=self._reward_time,
            time_ref=t_ref - t_rollout,
            time_teacher=t_teacher - t_ref,
            time_update=t_update - t_teacher,
            time_step=t_update - t0,
        )
        m["tokens_per_s"] = m["response_tokens"] / max(m["time_step"], 1e-9)
        if m.get("skipped_nonfinite"):
            self.nonfinite_in_row += 1
            if self.nonfinite_in_row >= cfg.max_nonfinite_in_row:
                raise TrainingError(
                    f"step {self.step}: {self.nonfinite_in_row} updates in a row had a non-finite loss or "
                    "gradient; stopping (train.max_nonfinite_in_row). Lower train.lr or check the data."
                )
        else:
            self.nonfinite_in_row = 0
        self.metrics.append(m)
        result = StepResult(self.step, m, rollouts)
        if self.on_step:
            self.on_step(result)
        if self.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save()
        return result

    def _step_metrics(self, rollouts: list[Rollout]) -> dict[str, float]:
        acc = torch.tensor([r.accuracy for r in rollouts])
        groups = torch.tensor([r.group for r in rollouts])
        gs = group_stats(acc, groups)
        lengths = torch.tensor([r.completion.numel() for r in rollouts], dtype=torch.float)
        ptd = torch.tensor([r.ptd for r in rollouts])
        n_ptd_tok = float(lengths[ptd].sum()) if ptd.any() else 0.0
        local = {
            "reward": float(torch.tensor([r.reward for r in rollouts]).mean()),
            "accuracy": float(acc.mean()),
            "format": float(torch.tensor([r.format for r in rollouts]).mean()),
            "informative_groups": gs["frac_informative"],
            "all_fail_groups": gs["frac_all_fail"],
            "all_correct_groups": gs["frac_all_correct"],
            "ptd_rollout_frac": float(ptd.float().mean()),
            "ptd_token_frac": n_ptd_tok / max(float(lengths.sum()), 1.0),
            "response_length": float(lengths.mean()),
            "truncated_frac": float(torch.tensor([r.truncated for r in rollouts]).float().mean()),
            "pg_rollout_frac": float(torch.tensor([r.in_pg for r in rollouts]).float().mean()),
            "kl_masked_rollout_frac": float(torch.tensor([not r.ref_kl for r in rollouts]).float().mean()),
        }
        out = {k: dist_utils.all_mean(v) for k, v in local.items()}
        out["response_tokens"] = dist_utils.all_sum(float(lengths.sum()))
        return out

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "sampler": self.sampler.state_dict(),
            "step": self.step,
            "metrics": self.metrics,
            "nonfinite_in_row": self.nonfinite_in_row,
        }

    def save(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        model_state = dist_utils.full_state_dict(self.policy)
        path = None
        if self.dist.rank == 0:
            path = save_checkpoint(self.checkpoint_dir, self.step, model_state, self.state(), self.cfg.keep_checkpoints)
            if self.on_checkpoint is not None:
                self.on_checkpoint(path)
        dist_utils.barrier()
        return path

    def load(self, path: str | Path) -> None:
        model_state, state, step = load_checkpoint(path)
        dist_utils.load_full_state_dict(self.policy, model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step = step
        self.metrics = list(state["metrics"])
        self.nonfinite_in_row = state.get("nonfinite_in_row", 0)
        self.backend.sync_weights(self.policy)

    def resume_if_possible(self, source: str | Path | None = None) -> bool:
        """Load the newest complete checkpoint under ``source`` (or this run's own folder)."""
        root = Path(source) if source else self.checkpoint_dir
        if root is None:
            return False
        path = latest_checkpoint(root)
        if path is None:
            return False
        self.load(path)
        return True

    def fit(self, max_steps: int | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Train until ``max_steps`` (default: the config's), with a progress bar on rank 0."""
        from tqdm.auto import tqdm

        target = max_steps or self.total_steps
        bar = tqdm(total=target, initial=self.step, disable=not progress or self.dist.rank != 0, desc="train")
        while self.step < target:
            m = self.train_step().metrics
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.3f}", acc=f"{m['accuracy']:.3f}", ptd=f"{m['ptd_loss']:.4f}")
        bar.close()
        final_save = bool(self.checkpoint_dir and self.cfg.checkpoint_every and (
            latest_checkpoint(self.checkpoint_dir) is None or self.step % self.cfg.checkpoint_every
        ))
        if dist_utils.is_distributed():
            # save() is a collective; rank 0 (the rank that writes checkpoints) decides for all: on other
            # nodes checkpoint_dir is another filesystem, where no checkpoint ever appears.
            final_save = dist_utils.all_sum(float(final_save) if self.dist.rank == 0 else 0.0) > 0
        if final_save:
            self.save()
        return self.metrics


def _chunks(xs: list, n: int) -> list[list]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def _old_or_detached(r: Rollout, lp: torch.Tensor, mpg: torch.Tensor, row: int) -> torch.Tensor:
    if r.old_logprobs is not None:
        return r.old_logprobs
    # One update per batch: pi_old is the current policy, so the ratio is exactly 1 at this point.
    start = int(mpg[:row].sum())
    return lp.detach()[start : start + r.completion.numel()] if r.in_pg else torch.zeros(r.completion.numel())


def _or_zeros(t: torch.Tensor | None, r: Rollout) -> torch.Tensor:
    return t if t is not None else torch.zeros(r.completion.numel())


def _assert_same_images(student: EncodedPrompt, teacher: EncodedPrompt) -> None:
    """METHOD.md 2.5: the teacher must see exactly the student's pixels and image grid."""
    if (student.pixel_values is None) != (teacher.pixel_values is None):
        raise TrainingError("teacher prompt and student prompt disagree on having images")
    if student.pixel_values is not None and not (
        torch.equal(student.pixel_values, teacher.pixel_values)
        and torch.equal(student.image_grid_thw, teacher.image_grid_thw)
    ):
        raise TrainingError("teacher prompt was encoded with different pixel values or image grid than the student's")
