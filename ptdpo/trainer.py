"""The PTD-PO training loop (METHOD.md section 2), readable top to bottom.

One step (:meth:`Trainer.train_step`):
  1. collect: ``prompts_per_step`` items, G rollouts each from the policy on the answer-free prompt,
     rewarded; DAPO's dynamic sampling refills; group advantages; the PTD mask (``ptdpo.rollout``);
  2. log-probs of the sampled tokens under the frozen reference (KL term) and the old policy (when
     the batch is used for several optimizer steps);
  3. update over mini-batches: for each micro-batch, the teacher forward (no gradient, its PTD rollouts
     only: the frozen reference or the old policy re-scores the same completion tokens with the
     hint-augmented prompt and the same images; ``ptdpo.teacher``), then its share of L = L_RL + kl_coef *
     KL_ref + lambda_ptd * L_PTD (``ptdpo.objectives.ptdpo_loss``, global counts) and its backward;
     then the data-parallel gradient sum, clipping and AdamW (float32 master weights, ``ptdpo.optim``);
     the baselines (docs/baselines.md) use the same loop: OPSD's and HDPO's distillation take the PTD
     term's place (``TrainConfig.distillation``), PAPO adds a masked-image forward (``ptdpo.papo``);
  4. the rollout engine takes the new weights; metrics (``ptdpo.metrics``); a checkpoint every
     ``checkpoint_every`` steps.
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
from ptdpo.checkpoint import latest_checkpoint, rng_state, set_rng_state
from ptdpo.config import Distillation, TrainConfig
from ptdpo.data.schema import Item
from ptdpo.engines.base import GenerationEngine
from ptdpo.engines.prompts import distinct_prompts
from ptdpo.hints.render import teacher_messages
from ptdpo.hints.schema import Hint
from ptdpo.metrics import UpdateTotals, hdpo_metrics, mean_over_updates
from ptdpo.models.multimodal import completion_hidden_states
from ptdpo.models.shared_prompt import shared_prompt_hidden_states
from ptdpo.objectives import (
    LossCounts,
    chunked_full_divergence,
    chunked_token_logprobs,
    chunked_topk_jsd_loss,
    get_policy_loss_fn,
    ptdpo_loss,
)
from ptdpo.optim import check_fp32_masters, make_optimizer, make_scheduler
from ptdpo.papo import MaskedImages
from ptdpo.rollout.collect import RewardFn, RolloutCollector, encode_messages, encode_student_prompts
from ptdpo.rollout.groups import minibatches, rollout_stats
from ptdpo.rollout.records import EncodedPrompt, Rollout, collate_completions, collate_prompts, pad_rows
from ptdpo.sampler import EpochSampler
from ptdpo.teacher import TeacherStream
from ptdpo.train_state import load_train_state, save_train_state


class TrainingError(RuntimeError):
    pass


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    rollouts: list[Rollout] = field(default_factory=list)


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The full LM-head weight (gathered under FSDP: call it right after a forward of ``model``)."""
    return dist_utils.output_weight(model)


class _Laps:
    """Wall-clock seconds of the phases of one step."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now


class Trainer:
    """Owns the policy, the frozen reference, the optimizer and the data order of one run."""

    def __init__(
        self,
        cfg: TrainConfig,
        policy: torch.nn.Module,
        processor: Any,
        items: Sequence[Item],
        hints: dict[str, Hint] | None = None,
        engine: GenerationEngine | None = None,
        reference: torch.nn.Module | None = None,
        checkpoint_dir: str | Path | None = None,
        total_steps: int | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        reward_fn: RewardFn | None = None,
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
        if engine is None:
            from ptdpo.engines.hf import TransformersEngine

            engine = TransformersEngine(policy, processor)
        self.engine = engine
        self.pad_id = processor.tokenizer.pad_token_id
        trainable = [p for p in policy.parameters() if p.requires_grad]
        check_fp32_masters(trainable, {id(p): n for n, p in policy.named_parameters()})
        self.optimizer = make_optimizer(trainable, cfg)
        if total_steps is None and cfg.epochs:
            total_steps = math.ceil(cfg.epochs * len(self.items) / cfg.prompts_per_step)
        self.total_steps = total_steps or cfg.max_steps
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.sampler = EpochSampler(len(self.items), seed=cfg.seed)
        self.collector = RolloutCollector(cfg, self.items, processor, engine, self.sampler, self.hints, reward_fn)
        self.step = 0
        self.metrics: list[dict[str, float]] = []
        self.nonfinite_in_row = 0
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.policy_loss_fn = get_policy_loss_fn("gspo" if cfg.algorithm == "gspo" else "ppo")
        self.use_kl = cfg.kl_coef > 0 and self.reference is not None
        # PTD's, OPSD's or HDPO's distillation term: its teacher, context and weight (PTD's settings when the
        # run has none: the teacher diagnostics still work)
        self.distill = cfg.distillation or Distillation.of_ptd(cfg.ptd)
        self.papo = MaskedImages(cfg.papo, processor, cfg.seed) if cfg.papo.enabled else None
        self._collect_counts: dict[str, float] = {}  # this rank's counts of the step's collection (HDPO's)
        # The batch is used for several optimizer steps: pi_old must be scored before the first one.
        self.multi_update = cfg.epochs_per_batch > 1 or (cfg.mini_batch_prompts or cfg.prompts_per_step) < cfg.prompts_per_step

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepResult:
        """One step (module docstring): collect, reference and old log-probs, update (with the teacher
        streamed into it), weight sync, metrics, checkpoint."""
        laps = _Laps()
        self.engine.wake()
        self.policy.eval()
        rollouts = self.collect()  # sample, reward, refill, advantages, PTD mask
        self.engine.sleep()
        laps.lap("rollout")
        self._reference_and_old_logprobs(rollouts)  # log pi_ref for the KL term, log pi_old for several updates
        laps.lap("ref")
        self.policy.train()
        teacher = self._teacher(rollouts)  # the hinted teacher on the PTD rollouts (None: there are none)
        update = self._update(rollouts, teacher)  # optimizer steps on L = L_RL + kl_coef KL_ref + lambda_ptd L_PTD
        if not update.get("skipped_nonfinite"):
            self.scheduler.step()
        # the next rollouts sample the new weights (a sleeping vLLM engine wakes its weights to load them)
        self.engine.sync_weights(self.policy)
        laps.lap("update")
        laps.seconds["teacher"] = teacher.seconds if teacher else 0.0
        laps.seconds["update"] -= laps.seconds["teacher"]
        self.step += 1
        m = self._step_metrics(rollouts, teacher.metrics() if teacher else {}, update, laps)
        self._stop_after_nonfinite_updates(m)
        self.metrics.append(m)
        result = StepResult(self.step, m, rollouts)
        if self.on_step:
            self.on_step(result)
        self._checkpoint_if_due()
        return result

    def collect(self) -> list[Rollout]:
        """Rollouts of one step on this rank, scored, with advantages and the PTD mask set (and HDPO's
        privileged rollouts added)."""
        self._init_sharded()
        collected = self.collector.collect(self.step)
        self._reward_time = collected.reward_time
        self._collect_counts = collected.counts
        return collected.rollouts

    def _reference_and_old_logprobs(self, rollouts: list[Rollout]) -> None:
        pg = [r for r in rollouts if r.in_pg]
        if self.use_kl:
            self._score_with(self.reference, pg, "ref_logprobs", probe=rollouts[0])
        if self.multi_update:
            self._score_with(self.policy, pg, "old_logprobs", probe=rollouts[0])

    def _step_metrics(self, rollouts: list[Rollout], teacher: dict[str, float], update: dict[str, float],
                      laps: _Laps) -> dict[str, float]:
        """The step's row of ``metrics`` (names and meanings: ``ptdpo.metrics``)."""
        local = rollout_stats(rollouts)
        m = {k: dist_utils.all_sum(v) if k == "response_tokens" else dist_utils.all_mean(v) for k, v in local.items()}
        m.update(hdpo_metrics({k: dist_utils.all_sum(v) for k, v in self._collect_counts.items()}))
        if self.papo is not None:
            m.update(self.papo.metrics())
        m.update(teacher)
        m.update(update)
        s = laps.seconds
        m.update(
            step=self.step,
            lr=self.scheduler.get_last_lr()[0],
            time_rollout=s["rollout"] - self._reward_time,
            time_reward=self._reward_time,
            time_ref=s["ref"],
            time_teacher=s["teacher"],
            time_update=s["update"],
            time_step=laps.last - laps.start,
        )
        m["tokens_per_s"] = m["response_tokens"] / max(m["time_step"], 1e-9)
        return m

    def _stop_after_nonfinite_updates(self, m: dict[str, float]) -> None:
        if not m.get("skipped_nonfinite"):
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_in_row:
            raise TrainingError(
                f"step {self.step}: {self.nonfinite_in_row} updates in a row had a non-finite loss or "
                "gradient; stopping (train.max_nonfinite_in_row). Lower train.lr or check the data."
            )

    def _checkpoint_if_due(self) -> None:
        if self.checkpoint_dir and self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            self.save()

    # ------------------------------------------------------------------ forwards
    def _hidden(self, model: torch.nn.Module, rollouts: list[Rollout], prompts: list[EncodedPrompt] | None = None):
        prompts = prompts or [r.prompt for r in rollouts]
        ids, mask = collate_completions([r.completion for r in rollouts], self.pad_id)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        with self._autocast(model, device):
            if torch.is_grad_enabled():
                hidden = completion_hidden_states(model, collate_prompts(prompts, self.pad_id), ids, mask)
            else:  # scoring (reference, old policy, teacher): each distinct prompt's forward runs once
                distinct, rows = distinct_prompts(prompts)
                hidden = shared_prompt_hidden_states(model, collate_prompts(distinct, self.pad_id), rows, ids, mask)
        return hidden, ids, mask.bool()

    def _autocast(self, model: torch.nn.Module, device: torch.device):
        """bf16 compute over the float32 weights, unless an FSDP2 bf16 policy already casts them."""
        if dist_utils.autocast_needed(model, self.cfg.precision):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _dummy_pass(self, model: torch.nn.Module, probe: Rollout | None, backward: bool = False) -> None:
        """One pass on ``probe`` that changes nothing: FSDP lock-step padding. An update pass with PAPO
        runs the masked forward too, as a real micro-batch does."""
        if probe is None:
            raise TrainingError("FSDP lock-step padding needs a rollout on every rank; this rank has none")
        with contextlib.nullcontext() if backward else torch.no_grad():
            hidden = self._hidden(model, [probe])[0].sum()
            weight = lm_head_weight(model)  # as a real pass does, so that every rank gathers the same units
            if backward and self.papo is not None:
                hidden = hidden + self._masked_pass_anchor(model, [probe])
            if backward:
                # the LM head gets a (zero) gradient as in a real pass: FSDP reduce-scatters the same tensors
                (hidden * 0.0 + weight.sum() * 0.0).backward()

    def _pad_lockstep(self, model: torch.nn.Module, n_passes: int, probe: Rollout | None, backward: bool = False):
        """FSDP: every rank must run as many forward (and backward) passes through a sharded model as the
        busiest rank, or the ranks that stop early leave the others waiting in an all-gather."""
        for _ in range(dist_utils.lockstep_padding(n_passes, model)):
            self._dummy_pass(model, probe, backward)

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
        prompt = encode_student_prompts(self.processor, [self.items[0]], self.cfg)[0]
        probe = Rollout(0, 0, prompt, torch.tensor([self.pad_id]), False, "")
        for model in models:
            self._hidden(model, [probe])
            dist_utils.release(model)

    @torch.no_grad()
    def _score_with(self, model: torch.nn.Module, rollouts: list[Rollout], attr: str, probe: Rollout) -> None:
        """Per-token log-probs of the sampled tokens under ``model`` (old policy or reference)."""
        chunks = _chunks(rollouts, self.cfg.micro_batch_rollouts)
        self._pad_lockstep(model, len(chunks), probe)
        for chunk in chunks:
            h, ids, m = self._hidden(model, chunk)
            weight = lm_head_weight(model)  # after the forward: gathered under FSDP
            lp, _ = chunked_token_logprobs(h[m], weight, ids[m], temperature=self.cfg.temperature)
            rows = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)
            rows[m] = lp
            for r, row in zip(chunk, rows):
                setattr(r, attr, row[: r.completion.numel()].clone())
        dist_utils.release(model)

    def _teacher_prompts(self, rollouts: list[Rollout]) -> list[EncodedPrompt]:
        """The teacher's prompts of ``rollouts``: the privileged context, exactly the student's images."""
        ctx = self.distill.context
        items = [self.items[r.item_index] for r in rollouts]
        messages = [teacher_messages(it, self.hints.get(it.id), context=ctx, template=self.cfg.prompt_template)
                    for it in items]
        prompts = encode_messages(self.processor, messages, items, self.cfg.enable_thinking)
        for r, tp in zip(rollouts, prompts):
            _assert_same_images(r.prompt, tp)
        return prompts

    def _teacher(self, rollouts: list[Rollout]) -> TeacherStream | None:
        """The step's teacher (``ptdpo.teacher``), or None when no rank has a PTD rollout. The old policy
        as teacher of a batch used for several optimizer steps is run now and offloaded to the CPU."""
        ptd = [r for r in rollouts if r.ptd]
        if not dist_utils.all_sum(len(ptd)):
            return None
        model = self.reference if self.distill.teacher == "ref" else self.policy
        offload = model is self.policy and self.multi_update
        teacher = TeacherStream(model, self._hidden, self._teacher_prompts, self.cfg.temperature, offload)
        if offload:
            teacher.offload_all(ptd, self.cfg.micro_batch_rollouts, rollouts[0] if rollouts else None)
        return teacher

    def teacher_hidden_states(self, rollouts: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher hidden states of every completion token of ``rollouts``, in order; teacher LM-head
        weight): a diagnostic outside the training step."""
        model = self.reference if self.distill.teacher == "ref" else self.policy
        teacher = TeacherStream(model, self._hidden, self._teacher_prompts, self.cfg.temperature)
        teacher.recording = False
        return teacher._run(rollouts)

    # ------------------------------------------------------------------ update
    def _update(self, rollouts: list[Rollout], teacher: TeacherStream | None = None) -> dict[str, float]:
        """``epochs_per_batch`` passes over the mini-batches of whole groups, one optimizer step each."""
        cfg = self.cfg
        groups_per_rank = max(1, (cfg.mini_batch_prompts or cfg.prompts_per_step) // self.dist.world_size)
        batches = minibatches(rollouts, groups_per_rank)
        probe = rollouts[0] if rollouts else None
        if self.papo is not None:
            self.papo.start_step(self.step)
        updates = []
        for _ in range(cfg.epochs_per_batch):
            updates += [self._optimizer_step(mb, teacher, probe) for mb in batches]
            if teacher is not None:
                teacher.end_pass()
        return mean_over_updates(updates)

    def _step_counts(self, mb: list[Rollout]) -> LossCounts:
        """The normalisers of one optimizer step, over its micro-batches and all data-parallel ranks, so
        that neither gradient accumulation nor the number of ranks changes the loss (METHOD.md 2.7)."""
        pg = [r for r in mb if r.in_pg]
        return LossCounts(
            pg_tokens=dist_utils.all_sum(sum(r.completion.numel() for r in pg)),
            pg_seqs=dist_utils.all_sum(len(pg)),
            kl_tokens=dist_utils.all_sum(sum(r.completion.numel() for r in pg if r.ref_kl)),
            ptd_tokens=dist_utils.all_sum(sum(r.completion.numel() for r in mb if r.ptd)),
        )

    def _optimizer_step(self, mb: list[Rollout], teacher: TeacherStream | None, probe: Rollout | None
                        ) -> dict[str, float]:
        cfg = self.cfg
        counts = self._step_counts(mb)
        self.optimizer.zero_grad(set_to_none=True)
        totals = UpdateTotals(papo=self.papo is not None, true_kl=self.use_kl)
        chunks = _chunks([r for r in mb if r.in_pg or r.ptd], cfg.micro_batch_rollouts)
        # FSDP: every rank runs as many micro-batch iterations (teacher forward, then policy forward and
        # backward) as the busiest one; the extra ones are dummies on the probe.
        padding = dist_utils.lockstep_padding(len(chunks), self.policy)
        for chunk in chunks + [None] * padding:
            self._micro_batch(chunk, counts, totals, teacher, probe)
        dist_utils.sum_gradients(self.policy)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = dist_utils.clip_grad_norm(params, cfg.grad_clip)
        out = totals.metrics(counts, self.distill.weight, dist_utils.all_sum)
        out["grad_norm"] = float(grad_norm)
        if not math.isfinite(out["grad_norm"]):
            # Skip the update; a run of these stops training with a clear message.
            self.optimizer.zero_grad(set_to_none=True)
            out["skipped_nonfinite"] = 1.0
            return out
        self.optimizer.step()
        out["skipped_nonfinite"] = 0.0
        return out

    def _micro_batch(self, chunk: list[Rollout] | None, counts: LossCounts, totals: UpdateTotals,
                     teacher: TeacherStream | None, probe: Rollout | None) -> None:
        """One micro-batch: its teacher states, its loss share, its backward. Everything it computed,
        the teacher's hidden states included, is released when it returns."""
        device = next(self.policy.parameters()).device
        taught = teacher.states(chunk, probe, device) if teacher is not None else None
        loss = None if chunk is None else self._micro_batch_loss(chunk, counts, totals, taught)
        if chunk is None:
            self._dummy_pass(self.policy, probe, backward=True)
        elif loss.requires_grad:
            (loss * dist_utils.loss_scale(self.policy)).backward()
        if teacher is not None:  # after the backward: the full-vocabulary divergence re-reads the teacher's LM head
            teacher.done_with_micro_batch(self.policy)

    def _micro_batch_loss(self, chunk: list[Rollout], counts: LossCounts, totals: UpdateTotals,
                          taught: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """This micro-batch's share of the step's loss (``ptdpo_loss``), from one policy forward;
        ``taught``: the teacher's (hidden states of the chunk's PTD tokens, LM-head weight)."""
        cfg = self.cfg
        h, ids, m = self._hidden(self.policy, chunk)
        dev = h.device
        weight = lm_head_weight(self.policy)  # read after the forward: FSDP/DDP wrap the module
        inputs: dict[str, torch.Tensor] = {}
        in_pg = torch.tensor([r.in_pg for r in chunk], device=dev)
        pg_mask = m & in_pg[:, None]
        if in_pg.any():
            lp, ent = chunked_token_logprobs(h[pg_mask], weight, ids[pg_mask], temperature=cfg.temperature)
            old = pad_rows([_old_or_detached(r, lp, pg_mask, i) for i, r in enumerate(chunk)], ids.shape[1])
            inputs.update(
                log_prob=torch.zeros(ids.shape, dtype=lp.dtype, device=dev).masked_scatter(pg_mask, lp),
                old_log_prob=old.to(device=dev, dtype=lp.dtype),
                advantages=torch.tensor([r.advantage for r in chunk], dtype=lp.dtype, device=dev),
                pg_mask=pg_mask,
            )
            totals.student_entropy.add(ent, _correct_tokens(chunk, pg_mask))
            if self.papo is not None:
                inputs["masked_log_prob"] = self._masked_log_prob(chunk, pg_mask, lp.dtype)
            if self.use_kl:
                ref = pad_rows([_or_zeros(r.ref_logprobs, r) for r in chunk], ids.shape[1])
                inputs["ref_log_prob"] = ref.to(device=dev, dtype=lp.dtype)
                inputs["kl_mask"] = pg_mask & torch.tensor([r.ref_kl for r in chunk], device=dev)[:, None]
        if any(r.ptd for r in chunk):
            if taught is None:
                raise TrainingError("a micro-batch with PTD rollouts got no teacher hidden states")
            inputs["ptd_divergence"] = self._ptd_divergence(chunk, h, m, weight, *taught)
        loss, parts = ptdpo_loss(counts, **inputs, policy_loss=self.policy_loss_fn, **cfg.loss_options())
        totals.add(parts, pg_tokens=int(pg_mask.sum()))
        if self.papo is not None and not in_pg.any() and dist_utils.is_sharded(self.policy):
            loss = loss + 0.0 * self._masked_pass_anchor(self.policy, chunk)  # FSDP: as many passes as a rank with PG
        return loss

    def _masked_log_prob(self, chunk: list[Rollout], pg_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """PAPO: [B, T] log-probs of the policy-gradient tokens with the masked images (``ptdpo.papo``),
        from a second policy forward: with gradient, or without (``papo.masked_gradient``)."""
        with contextlib.nullcontext() if self.cfg.papo.masked_gradient else torch.no_grad():
            h, ids, _ = self._hidden(self.policy, chunk, self.papo.prompts(chunk))
            weight = lm_head_weight(self.policy)
            lp, _ = chunked_token_logprobs(h[pg_mask], weight, ids[pg_mask], temperature=self.cfg.temperature,
                                           return_entropy=False)
        return torch.zeros(ids.shape, dtype=dtype, device=h.device).masked_scatter(pg_mask, lp.to(dtype))

    def _masked_pass_anchor(self, model: torch.nn.Module, rollouts: list[Rollout]) -> torch.Tensor:
        """A masked forward whose result counts for nothing (0 when it runs without gradient): FSDP lock-step."""
        with contextlib.nullcontext() if self.cfg.papo.masked_gradient else torch.no_grad():
            h = self._hidden(model, rollouts, self.papo.prompts(rollouts))[0]
            lm_head_weight(model)
        return h.sum() if self.cfg.papo.masked_gradient else h.new_zeros(())

    def _ptd_divergence(self, chunk: list[Rollout], h: torch.Tensor, m: torch.Tensor, weight: torch.Tensor,
                        teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor):
        """Divergence D_t of every PTD (distillation) token of the micro-batch, student against the teacher:
        Top-K with tail, or over the whole vocabulary (``ptd.support: full``, OPSD)."""
        ptd = self.cfg.ptd
        mp = m & torch.tensor([r.ptd for r in chunk], device=h.device)[:, None]
        if ptd.support == "full":
            return chunked_full_divergence(
                h[mp], weight, teacher_hidden.to(device=h.device, dtype=h.dtype), teacher_weight.to(h.device),
                beta=ptd.beta, divergence=ptd.divergence, temperature=self.cfg.temperature, chunk_size=ptd.chunk_size,
            )
        return chunked_topk_jsd_loss(
            h[mp], weight, teacher_hidden=teacher_hidden.to(device=h.device, dtype=h.dtype),
            teacher_weight=teacher_weight.to(h.device), k=ptd.k, support=ptd.support, beta=ptd.beta,
            divergence=ptd.divergence, temperature=self.cfg.temperature, chunk_size=ptd.chunk_size,
        )

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything but the model and optimizer (``ptdpo.train_state`` writes those, per rank or gathered)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "sampler": self.sampler.state_dict(),
            "step": self.step,
            "metrics": self.metrics,
            "nonfinite_in_row": self.nonfinite_in_row,
        }

    def save(self) -> Path | None:
        """Checkpoint this step (a collective: every rank calls it); the folder on rank 0, else None."""
        if self.checkpoint_dir is None:
            return None
        path = save_train_state(self.checkpoint_dir, self.step, self.policy, self.optimizer, self.state(),
                                self.cfg.keep_checkpoints, self.cfg.checkpoint_format)
        if path is not None and self.on_checkpoint is not None:
            self.on_checkpoint(path)
        dist_utils.barrier()
        return path

    def load(self, path: str | Path) -> None:
        state, step = load_train_state(path, self.policy, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step = step
        self.metrics = list(state["metrics"])
        self.nonfinite_in_row = state.get("nonfinite_in_row", 0)
        self.engine.sync_weights(self.policy)

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


def _correct_tokens(chunk: list[Rollout], mask: torch.Tensor) -> torch.Tensor:
    """[N] bool over the masked tokens of ``chunk``: the token's rollout is correct (the entropy split)."""
    correct = torch.tensor([r.accuracy >= 1.0 for r in chunk], device=mask.device)
    return correct[:, None].expand_as(mask)[mask]


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
