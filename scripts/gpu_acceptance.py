"""GPU acceptance check of the sharded training path, on the tiny Qwen3-VL, with nothing but this repository.

    python scripts/gpu_acceptance.py                      # one GPU: FSDP2 over a world of one (NCCL)
    python scripts/gpu_acceptance.py --device cpu         # the same checks on CPU (gloo)
    torchrun --nproc_per_node 2 scripts/gpu_acceptance.py --device cpu   # 2 ranks (what the tests run)

No download: the tiny model, its tokenizer and the synthetic items are built locally. It runs on the
machine's own torch and transformers (APIs newer than torch 2.6 / transformers 5.17 are avoided or
guarded). Checks, each a row of the printed table (and of ``--out`` JSON):

- collectives: ``all_sum``/``all_max`` over the group (``cpu:gloo,cuda:nccl`` on GPU), their helper
  tensors on the device the backend needs, and the device check refusing a CPU tensor for an NCCL-only
  group (on GPU also torch's own refusal, so the rule is known to be real there);
- masters: policy and reference loaded and sharded by FSDP2 with the bf16 policy: parameters float32,
  the forward computes in bf16, Adam moments float32;
- memory: loading policy + reference (tiny:10m, from a saved folder) peaks near one shard of each per
  rank (CUDA: max_memory_allocated; CPU: tracked tensor bytes); for comparison, the peak of loading
  whole models and sharding them afterwards;
- foreach: AdamW with ``foreach=True`` steps over the FSDP2 shards; one group mixing DTensor and plain
  tensors fails on this torch (the failure the per-kind groups avoid);
- lr 1e-6: three PTD-PO steps; the float32 masters move (almost) every element whose gradient Adam
  sees (|g| > 1e-7, ten times its eps), while the same gradients applied to bf16 weights move few;
- resume: three PTD-PO steps with a checkpoint per step, killed after step 2 and resumed, equal the
  uninterrupted run (metrics and final weights: bit-exact on CPU; on CUDA, where some backward kernels
  round differently run to run, metrics to 1e-3 and every tensor's update to 1%), for sharded (DCP,
  per rank) and gathered checkpoints.

Exit code 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ptdpo import collectives  # noqa: E402
from ptdpo import distributed as dist_utils  # noqa: E402

CHECKS: list[dict] = []


def check(name: str, ok: bool, **numbers) -> bool:
    CHECKS.append({"check": name, "ok": bool(ok), **numbers})
    return bool(ok)


def _init(device: str) -> None:
    if "RANK" not in os.environ:  # a world of one, without torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    collectives.init_from_env("cpu:gloo,cuda:nccl" if device == "cuda" else "gloo", force=True)


def _rank() -> int:
    return dist.get_rank()


def _device(device: str) -> str:
    return f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu"


def _items_and_hints(n: int = 4):
    from ptdpo.data.synthetic import generate_synthetic
    from ptdpo.hints.schema import Hint, Region

    items = generate_synthetic(n, seed=1, families=["count_attr"], image_size=64)
    hints = {
        it.id: Hint(item_id=it.id, regions=[Region(bbox=[100, 100, 500, 500], label="shapes", why="what to count")],
                    steps=["Look at every shape.", "Keep the ones the question names."], traps=["Other colours."],
                    generator={"name": "acceptance", "model": "none", "prompt_version": "0"})
        for it in items
    }
    return items, hints


def _train_cfg(**kw):
    from ptdpo.config import PTDConfig, TrainConfig

    base = dict(policy="tiny:0.5m", group_size=4, prompts_per_step=2 * dist.get_world_size(),
                micro_batch_rollouts=3, max_response_length=10, lr=1e-2, weight_decay=0.0, kl_coef=0.01,
                seed=7, sharding="fsdp", precision="bf16", optimizer_foreach=True)
    ptd = kw.pop("ptd", {})
    base.update(kw)
    return TrainConfig(**base, ptd=PTDConfig(**{"k": 8, "lambda_ptd": 1.0, **ptd})).resolved()


# ---------------------------------------------------------------------- checks
def check_collectives(device: str) -> None:
    ws = dist.get_world_size()
    t = torch.tensor([float(_rank() + 1)], device=collectives.collective_device())
    summed = float(collectives.all_reduce(t.clone()).item())
    biggest = float(collectives.all_reduce(t.clone(), "max").item())
    helper = collectives.collective_device().type
    ok = summed == ws * (ws + 1) / 2 and biggest == ws and helper == device
    ok = ok and collectives.all_sum(1.0) == ws and collectives.all_max(_rank()) == ws - 1
    refused = False
    torch_refused = "n/a (no NCCL here)"
    if device == "cuda":
        nccl_only = dist.new_group(backend="nccl")
        try:
            collectives.all_reduce(torch.ones(1), group=nccl_only)
        except collectives.CollectiveDeviceError:
            refused = True
        try:
            dist.all_reduce(torch.ones(1), group=nccl_only)
            torch_refused = False
        except Exception:  # noqa: BLE001 - whatever torch raises for a CPU tensor on NCCL
            torch_refused = True
        ok = ok and torch_refused is True
    else:
        try:
            collectives.check_collective_devices("all_reduce", [torch.ones(1)], collectives.parse_backend_config("nccl"))
        except collectives.CollectiveDeviceError:
            refused = True
    check("collectives", ok and refused, all_sum=summed, all_max=biggest, helper_device=helper,
          backends=",".join(f"{d}:{b}" for d, b in collectives.backend_devices().items()),
          cpu_tensor_on_nccl_refused=refused, torch_also_refuses=torch_refused)


def check_masters_and_lr(device: str, items, hints) -> None:
    """Load and shard policy + reference (bf16 policy), then three PTD-PO steps at lr 1e-6 with foreach."""
    from ptdpo.trainer import Trainer
    from steps.train import load_models

    cfg = _train_cfg(lr=1e-6, kl_coef=0.0)
    model, processor, reference = load_models(cfg)
    shards = [p for p in model.parameters() if hasattr(p, "to_local")]
    all_fp32 = all(p.dtype == torch.float32 for p in model.parameters())
    seen: list[torch.dtype] = []
    mlp = model.model.language_model.layers[0].mlp.down_proj
    handle = mlp.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    trainer = Trainer(cfg, model, processor, items, hints=hints, reference=reference)
    grads: list[dict[int, torch.Tensor]] = []

    def capture(optimizer, *_):
        grads.append({id(p): p.grad.to_local().detach().clone() for p in shards if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    before = {id(p): p.to_local().detach().clone() for p in shards}
    bf16 = {i: t.to(torch.bfloat16) for i, t in before.items()}
    bf16_before = {i: t.clone() for i, t in bf16.items()}
    plain = torch.optim.AdamW([torch.nn.Parameter(t) for t in bf16.values()], lr=1e-6, weight_decay=0.0)
    plain_params = dict(zip(bf16.keys(), plain.param_groups[0]["params"]))
    stepped, ptd = 0, 0.0
    error = ""
    try:
        for _ in range(3):
            m = trainer.train_step().metrics
            ptd = max(ptd, m.get("ptd_rollout_frac", 0.0))
            for i, g in grads[-1].items():
                plain_params[i].grad = g.to(torch.bfloat16)
            plain.step()
            stepped += 1
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    handle.remove()
    state = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    moments_fp32 = bool(state) and all(s["exp_avg"].dtype == torch.float32 for s in state)
    check("masters", all_fp32 and seen and all(d == torch.bfloat16 for d in seen) and moments_fp32 and not error,
          params="float32" if all_fp32 else "NOT float32", compute=str(seen[0]).removeprefix("torch.") if seen else "?",
          adam_moments="float32" if moments_fp32 else "?", sharded_tensors=len(shards))
    check("foreach", stepped == 3 and not error, optimizer_steps=stepped, foreach=cfg.optimizer_foreach,
          error=error or None, mixed_group_fails=_mixed_group_fails(shards[0], device))
    got_grad = moved = moved_bf16 = 0
    for p in shards:
        steps = [step[id(p)] for step in grads if id(p) in step]
        if not steps:
            continue
        # Elements whose gradient Adam sees (well above its eps = 1e-8: smaller ones scale the step down)
        g = torch.stack(steps).abs().amax(0) > 1e-7
        got_grad += int(g.sum())
        moved += int((p.to_local().detach() != before[id(p)])[g].sum())
        moved_bf16 += int((plain_params[id(p)].detach() != bf16_before[id(p)])[g].sum())
    got_grad = collectives.all_sum(got_grad)
    frac = collectives.all_sum(moved) / max(got_grad, 1)
    frac_bf16 = collectives.all_sum(moved_bf16) / max(got_grad, 1)
    check("lr 1e-6", stepped == 3 and frac > 0.99 and frac_bf16 < 0.2 and ptd > 0,
          moved_fp32_masters=f"{frac:.4%}", moved_plain_bf16=f"{frac_bf16:.4%}", elements_with_grad=int(got_grad),
          ptd_rollout_frac=ptd)


def _mixed_group_fails(shard: torch.Tensor, device: str) -> bool:
    """AdamW(foreach=True) over ONE group holding a DTensor shard and a plain tensor fails on this torch."""
    a = torch.nn.Parameter(shard.detach().clone())
    b = torch.nn.Parameter(torch.zeros(3, device=a.to_local().device))
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    try:
        torch.optim.AdamW([a, b], lr=1e-3, foreach=True).step()
    except (RuntimeError, TypeError, NotImplementedError):
        return True
    return False


def check_memory(device: str, workdir: Path) -> None:
    """Peak bytes per rank while loading the tiny:10m policy and its reference, sharded."""
    from ptdpo.models import load_policy, save_policy
    from steps.train import load_models

    folder = workdir / "tiny10m"
    if _rank() == 0 and not folder.exists():
        save_policy(*load_policy("tiny:10m"), folder)
    dist_utils.barrier()
    cfg = _train_cfg(policy=str(folder))
    measure = _peak_bytes(device)
    if measure is None:
        check("memory", True, note="no memory tracker on this torch: not measured")
        return
    with measure as peak:
        model, _, reference = load_models(cfg)
    total = sum(p.numel() * 4 for p in model.parameters()) + sum(p.numel() * 4 for p in reference.parameters())
    del model, reference
    # For comparison, what loading whole models and sharding them afterwards costs (the old way).
    with _peak_bytes(device) as naive:
        model, _ = load_policy(str(folder), dtype=torch.float32, device=_device(device))
        reference = copy.deepcopy(model)
        model = dist_utils.shard_model(model, "fsdp", "bf16")
        reference = dist_utils.shard_model(reference, "fsdp", "bf16")
    del model, reference
    per_rank = total / dist.get_world_size()
    ratio = peak.value / per_rank
    check("memory", ratio < 1.3, peak_MB=round(peak.value / 1e6, 1), shard_of_both_MB=round(per_rank / 1e6, 1),
          both_models_MB=round(total / 1e6, 1), peak_over_shard=round(ratio, 3),
          whole_then_shard_over_shard=round(naive.value / per_rank, 3))


class _Peak:
    value = 0


def _peak_bytes(device: str):
    """A context manager measuring the peak bytes of tensors allocated inside it on ``device``."""
    import contextlib

    if device == "cuda":
        @contextlib.contextmanager
        def cuda_peak():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            out = _Peak()
            yield out
            torch.cuda.synchronize()
            out.value = torch.cuda.max_memory_allocated() - start
        return cuda_peak()
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None

    @contextlib.contextmanager
    def cpu_peak():
        tracker, out = MemTracker(), _Peak()
        with tracker:
            yield out
        snapshot = tracker.get_tracker_snapshot("peak")
        out.value = sum(v["Total"] for dev, v in snapshot.items() if torch.device(dev).type == "cpu")
    return cpu_peak()


def check_resume(device: str, workdir: Path, items, hints) -> None:
    """Three PTD-PO steps with a checkpoint after each: uninterrupted, and killed after step 2 then resumed."""
    from ptdpo.models import load_policy
    from steps.train import InjectedFailure, run_training

    cols = ["reward", "pg_loss", "ptd_loss", "kl_ref", "grad_norm", "response_length", "teacher_entropy"]
    full = run_training(_train_cfg(max_steps=3, checkpoint_every=1), items, hints, workdir / "uninterrupted",
                        progress=False)
    for fmt in ("sharded", "full"):
        cfg = _train_cfg(max_steps=3, checkpoint_every=1, checkpoint_format=fmt)
        out = workdir / f"killed-{fmt}"
        killed = False
        try:
            run_training(cfg, items, hints, out, fail_after_step=2, progress=False)
        except InjectedFailure:
            killed = True
        files = _checkpoint_files(out / "checkpoints")
        resumed = run_training(cfg, items, hints, out, progress=False)
        a = torch.tensor(full.metrics[[c for c in cols if c in full.metrics]].values, dtype=torch.float64)
        b = torch.tensor(resumed.metrics[[c for c in cols if c in full.metrics]].values, dtype=torch.float64)
        rel = (a - b).abs() / a.abs().clamp(min=1e-6)
        metric_diff = float(torch.where(a.isnan() & b.isnan(), torch.zeros_like(rel), rel).max())
        weight_diff = update_diff = 0.0
        if _rank() == 0:
            m0, _ = load_policy("tiny:0.5m")
            m1, _ = load_policy(str(full.model_dir))
            m2, _ = load_policy(str(resumed.model_dir))
            for p0, p1, p2 in zip(m0.parameters(), m1.parameters(), m2.parameters()):
                weight_diff = max(weight_diff, float((p1 - p2).abs().max()))
                update_diff = max(update_diff, float((p1 - p2).norm() / (p1 - p0).norm().clamp(min=1e-12)))
        weight_diff, update_diff = collectives.all_max(weight_diff), collectives.all_max(update_diff)
        # CPU: bit-exact. CUDA: some kernels (atomic adds in backward passes) round differently run to run,
        # so the runs must agree to rounding: metrics to 1e-3 and each tensor's update to 1%.
        exact = device == "cpu"
        same = (metric_diff == 0.0 and weight_diff == 0.0) if exact else (metric_diff < 1e-3 and update_diff < 1e-2)
        check(f"resume ({fmt})", killed and resumed.resumed_from_step == 2 and resumed.final_step == 3 and same,
              killed_after=2 if killed else None, resumed_from=resumed.resumed_from_step, steps=resumed.final_step,
              max_metric_rel_diff=metric_diff, max_weight_diff=weight_diff, max_update_rel_diff=round(update_diff, 6),
              required="bit-exact" if exact else "to rounding", checkpoint_files=files,
              ptd_rollout_frac=float(full.metrics["ptd_rollout_frac"].max()))


def _checkpoint_files(root: Path) -> list[str]:
    from ptdpo.checkpoint import checkpoint_files, latest_checkpoint

    path = latest_checkpoint(root)
    return checkpoint_files(path) if path else []


# ---------------------------------------------------------------------- report
def _table() -> str:
    rows = []
    for c in CHECKS:
        numbers = ", ".join(f"{k}={v}" for k, v in c.items() if k not in ("check", "ok") and v is not None
                            and k != "checkpoint_files")
        rows.append(f"| {c['check']:<17} | {'PASS' if c['ok'] else 'FAIL'} | {numbers} |")
    head = "| check             | result | numbers |\n|---|---|---|"
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", help="write the checks as JSON here (rank 0)")
    parser.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu")
        return 2
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)) if args.device == "cuda" else 1)
    if args.device == "cuda":  # deterministic kernels where torch has them: resumed vs uninterrupted runs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    _init(args.device)
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device,
           "world_size": dist.get_world_size(),
           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ptdpo-acceptance-"))
    if _rank() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    items, hints = _items_and_hints(2 * dist.get_world_size() + 2)
    for name, fn in (("collectives", lambda: check_collectives(args.device)),
                     ("memory", lambda: check_memory(args.device, workdir)),
                     ("masters", lambda: check_masters_and_lr(args.device, items, hints)),
                     ("resume", lambda: check_resume(args.device, workdir, items, hints))):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            traceback.print_exc()
            check(name, False, error=f"{type(e).__name__}: {e}")
    env["seconds"] = round(time.perf_counter() - start, 1)
    ok = all(c["ok"] for c in CHECKS)
    if _rank() == 0:
        print(f"\nptdpo GPU acceptance: {json.dumps(env)}\n{_table()}\n{'ALL PASS' if ok else 'FAILED'}")
        if args.out:
            Path(args.out).write_text(json.dumps({"env": env, "checks": CHECKS, "ok": ok}, indent=1, default=str))
    # every rank past its last collective before any tears its group down: a rank that destroys the group
    # while its peer still has gloo work in flight aborted once at exit under load (SIGABRT after ALL PASS)
    dist_utils.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
