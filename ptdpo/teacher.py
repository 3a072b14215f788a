"""The hinted PTD teacher of one training step, streamed per micro-batch (METHOD.md 2.5).

The teacher (the frozen reference, or the old policy) re-scores a PTD rollout's completion tokens with
the hint-augmented prompt and the same images. Its final hidden states are needed only by the PTD term
of the micro-batch that holds the rollout, so they are computed inside the update loop, for that
micro-batch, and dropped with it: no teacher tensor lives across the update (at the 8B recipe, keeping
them all until the update cost up to ~13 GB per GPU). With several passes over the batch
(``epochs_per_batch``) the frozen reference is simply run again in each pass.

One case cannot stream: the old policy as teacher when the batch feeds several optimizer steps (the
policy has moved after the first one). Its hidden states are computed before the update and kept on
the CPU (offloaded), and each micro-batch moves its own rows to the device.

Under FSDP every rank must run as many forwards through a sharded model as the others, in the same
order, so each micro-batch iteration runs exactly one teacher forward on every rank (a dummy one on a
probe rollout where the micro-batch has no PTD rollout).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ptdpo import distributed as dist_utils
from ptdpo.metrics import OutcomeEntropy
from ptdpo.objectives import chunked_token_logprobs
from ptdpo.rollout.records import EncodedPrompt, Rollout

# (model, rollouts, prompts or None) -> (hidden [B, T, H], completion ids [B, T], completion mask [B, T])
Forward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# PTD rollouts -> their teacher prompts (hint context, same images), checked against the student's
TeacherPrompts = Callable[[list[Rollout]], list[EncodedPrompt]]


class TeacherStream:
    """Teacher hidden states, one micro-batch at a time, and the step's teacher metrics."""

    def __init__(self, model: torch.nn.Module, forward: Forward, prompts: TeacherPrompts, temperature: float,
                 offload: bool = False):
        self.model = model
        self.forward = forward
        self.prompts = prompts
        self.temperature = temperature
        self.offload = offload
        self.entropy = OutcomeEntropy()
        self.nll = 0.0
        self.seconds = 0.0
        self.recording = True  # metrics are taken in the first pass over the batch only
        self._offloaded: dict[int, torch.Tensor] = {}
        self._offloaded_weight: torch.Tensor | None = None

    @torch.no_grad()
    def _run(self, ptd: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher hidden states of the PTD tokens of ``ptd``, in order; the teacher's LM-head weight)."""
        h, ids, m = self.forward(self.model, ptd, self.prompts(ptd))
        weight = dist_utils.output_weight(self.model).detach()  # right after the forward: gathered
        if self.recording:
            lp, ent = chunked_token_logprobs(h[m], weight, ids[m], temperature=self.temperature)
            correct = torch.tensor([r.accuracy >= 1.0 for r in ptd], device=m.device)
            self.entropy.add(ent, correct[:, None].expand_as(m)[m])
            self.nll += float(-lp.sum())
        return h[m], weight

    def offload_all(self, ptd: list[Rollout], chunk_size: int, probe: Rollout | None) -> None:
        """Offload mode: run the teacher on every PTD rollout of this rank now and keep the results on the
        CPU. Every rank runs as many forwards as the busiest one (FSDP)."""
        t = time.perf_counter()
        chunks = [ptd[i : i + chunk_size] for i in range(0, len(ptd), chunk_size)]
        for _ in range(dist_utils.lockstep_padding(len(chunks), self.model)):
            self._dummy(probe)
        for chunk in chunks:
            hidden, weight = self._run(chunk)
            rows = [int(n) for n in _ptd_token_counts(chunk)]
            for r, part in zip(chunk, hidden.split(rows)):
                self._offloaded[id(r)] = part.cpu()
            if self._offloaded_weight is None:
                self._offloaded_weight = weight.cpu().clone()
        dist_utils.release(self.model)
        self.recording = False
        self.seconds += time.perf_counter() - t

    @torch.no_grad()
    def _dummy(self, probe: Rollout | None) -> None:
        if probe is None:
            raise RuntimeError("FSDP lock-step padding needs a rollout on every rank; this rank has none")
        self.forward(self.model, [probe], None)
        dist_utils.output_weight(self.model)

    def states(self, chunk: list[Rollout] | None, probe: Rollout | None, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Teacher hidden states [N_ptd_tokens, H] of ``chunk``'s PTD rollouts (the order of the student's
        ``h[ptd mask]``) and the teacher weight; None when the chunk has none. ``chunk`` None: a padding
        iteration. Called once per micro-batch iteration on every rank."""
        ptd = [r for r in chunk or [] if r.ptd]
        if self.offload:
            if not ptd:
                return None
            hidden = torch.cat([self._offloaded[id(r)] for r in ptd]).to(device)
            return hidden, self._offloaded_weight.to(device)
        t = time.perf_counter()
        try:
            if ptd:
                return self._run(ptd)
            if dist_utils.is_sharded(self.model):
                self._dummy(probe)
            return None
        finally:
            self.seconds += time.perf_counter() - t

    def done_with_micro_batch(self, policy: torch.nn.Module) -> None:
        """Free the teacher's gathered parameters (a separate sharded model only)."""
        if self.model is not policy and not self.offload:
            dist_utils.release(self.model)

    def end_pass(self) -> None:
        self.recording = False

    def metrics(self) -> dict[str, float]:
        """The step's teacher metrics over all ranks (a collective)."""
        entropy = self.entropy.reduce(dist_utils.all_sum)
        nll = dist_utils.all_sum(self.nll)
        return {**entropy.metrics("teacher_entropy"), "teacher_nll": nll / max(entropy.n, 1)}


def _ptd_token_counts(rollouts: list[Rollout]) -> list[int]:
    return [r.completion.numel() for r in rollouts]
