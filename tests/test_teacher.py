"""The PTD teacher streamed per micro-batch (ptdpo.teacher): no teacher tensor lives across the update,
and training is the same as with every teacher hidden state computed before the update (the old way,
still used, offloaded to the CPU, for the old-policy teacher of a batch that feeds several updates)."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from test_trainer import _cfg, _hints, _items, _parity_reward, _zero_reward

from ptdpo.rollout.records import Rollout
from ptdpo.teacher import TeacherStream
from ptdpo.trainer import Trainer


def test_no_teacher_tensor_is_alive_across_the_update(tiny_policy, monkeypatch):
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = _items(4, seed=1)
    cfg = _cfg(ptd={"lambda_ptd": 0.5}, micro_batch_rollouts=3, kl_coef=0.01)
    # every rollout fails: all get PTD, so every micro-batch is taught
    trainer = Trainer(cfg, model, processor, items, hints=_hints(items), reward_fn=_zero_reward)
    made: list[weakref.ref] = []
    real = TeacherStream.states

    def recording(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if out is not None:
            made.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(TeacherStream, "states", recording)
    alive_at_step: list[int] = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: alive_at_step.append(sum(r() is not None for r in made)) and None)
    result = trainer.train_step()
    assert result.metrics["ptd_rollout_frac"] > 0 and len(made) >= 2  # several micro-batches were taught
    assert alive_at_step == [0], "teacher hidden states outlived their micro-batch"
    assert "teacher_hidden" not in {f for f in Rollout.__dataclass_fields__}
    tensors = {k for r in result.rollouts for k, v in vars(r).items() if torch.is_tensor(v)}
    assert tensors <= {"completion", "ref_logprobs", "old_logprobs"}, tensors


@pytest.mark.parametrize("teacher", ["ref", "old_policy"])
def test_streamed_teacher_trains_like_the_precomputed_one(tiny_policy, monkeypatch, teacher):
    """Three steps with the teacher streamed (the default) equal three steps with all teacher states
    computed before the update and offloaded (float32: the metrics and weights agree to rounding)."""
    items = _items(4, seed=1)
    cfg = _cfg(ptd={"lambda_ptd": 0.5, "teacher": teacher}, micro_batch_rollouts=3, kl_coef=0.01)

    def run(offload: bool):
        model = copy.deepcopy(tiny_policy[0])
        trainer = Trainer(cfg, model, tiny_policy[1], items, hints=_hints(items), reward_fn=_parity_reward)
        if offload:
            real = Trainer._teacher

            def precomputed(self, rollouts):
                self.multi_update, saved = True, self.multi_update  # the offload rule's trigger
                try:
                    stream = real(self, rollouts) if teacher == "old_policy" else None
                    if stream is None:
                        ptd = [r for r in rollouts if r.ptd]
                        stream = TeacherStream(self.reference, self._hidden, self._teacher_prompts,
                                               cfg.temperature, offload=True)
                        stream.offload_all(ptd, cfg.micro_batch_rollouts, rollouts[0])
                    assert stream.offload
                    return stream
                finally:
                    self.multi_update = saved

            monkeypatch.setattr(Trainer, "_teacher", precomputed)
        rows = [trainer.train_step().metrics for _ in range(3)]
        monkeypatch.undo()
        return rows, [p.detach().clone() for p in model.parameters()]

    streamed, w_streamed = run(offload=False)
    offloaded, w_offloaded = run(offload=True)
    keys = ["ptd_loss", "teacher_entropy", "teacher_nll", "pg_loss", "kl_ref", "grad_norm", "reward"]
    for a, b in zip(streamed, offloaded):
        assert a["ptd_rollout_frac"] > 0
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-9), (k, a[k], b[k])
    for p, q in zip(w_streamed, w_offloaded):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_old_policy_teacher_of_several_updates_is_offloaded(tiny_policy):
    """The policy moves after the first optimizer step, so the old-policy teacher cannot be streamed
    there: it is computed before the update, held on the CPU."""
    items = _items(4, seed=1)
    cfg = _cfg(ptd={"lambda_ptd": 0.5, "teacher": "old_policy"}, mini_batch_prompts=1, epochs_per_batch=2)
    trainer = Trainer(cfg, copy.deepcopy(tiny_policy[0]), tiny_policy[1], items, hints=_hints(items),
                      reward_fn=_parity_reward)
    rollouts = trainer.collect()
    stream = trainer._teacher(rollouts)
    assert stream is not None and stream.offload
    assert all(t.device.type == "cpu" for t in stream._offloaded.values())
    assert len(stream._offloaded) == sum(r.ptd for r in rollouts)
    one_update = _cfg(ptd={"lambda_ptd": 0.5, "teacher": "old_policy"})
    trainer = Trainer(one_update, copy.deepcopy(tiny_policy[0]), tiny_policy[1], items, hints=_hints(items),
                      reward_fn=_parity_reward)
    assert not trainer._teacher(trainer.collect()).offload  # one optimizer step: streamed
