"""Step bodies of the learning-signal study (``flows/study_flow.py``), plain functions without Metaflow.

    prepare_study   the dataset (train / held-out in-distribution / out-of-distribution) and the hints
    build_base      the hint-sensitive base model (warm start) + its with/without-hint accuracy
    train_branch    one (arm, seed): RL from the base model, per-step metrics and per-item group accuracy
    evaluate_policy greedy accuracy, sampled avg@k, response length and format on ID and OOD items
    summarize       the per-arm tables of the report
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ptdpo.data.schema import Item, item_images
from ptdpo.hints.schema import Hint
from ptdpo.study.base_model import DataSpec, WarmStartSpec, build_base_model, oracle_hints


def set_threads() -> None:
    """One torch thread per task (the study runs several branches side by side on a small machine)."""
    import os

    torch.set_num_threads(int(os.environ.get("PTDPO_NUM_THREADS", "1")))


def data_spec(cfg: dict[str, Any]) -> DataSpec:
    return DataSpec(**(cfg.get("data") or {}))


def prepare_study(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train items, their audited oracle hints (as dicts), and the ID / OOD evaluation items."""
    ds = data_spec(cfg)
    train = ds.generate(int(cfg.get("n_train", 64)), split="train")
    n_eval = int(cfg.get("n_eval", 128))
    hints = oracle_hints(train)
    from ptdpo.study.gate import audit_pass_rate

    audit = audit_pass_rate(train)  # the project's default audit (AuditConfig()), as the hints above
    return {
        "train_items": train,
        "hints": {k: h.to_dict() for k, h in hints.items()},
        "eval_items": {"id": ds.generate(n_eval, split="test"), "ood": ds.generate(n_eval, split="test", ood=True)},
        "manifest": {"n_train": len(train), "n_hinted": len(hints), "n_eval": n_eval, "data": cfg.get("data"),
                     "audit": audit},
    }


def build_base(cfg: dict[str, Any], out_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Warm-start the base model, save it (``save_policy``) under ``out_dir``, return (dir, report)."""
    from ptdpo.models import save_policy
    from ptdpo.study.diagnostics import teacher_signal

    spec = WarmStartSpec(**(cfg.get("base") or {}))
    ds = data_spec(cfg)
    model, processor, report = build_base_model(spec, ds)
    held = ds.generate(spec.eval_items, split="val")  # the items of report["hint_ability"]
    held_hints = oracle_hints(held)
    if all(it.answer.strip().lower() in ("yes", "no") for it in held):
        report["teacher_signal"] = teacher_signal(model, processor, held, held_hints, reasoning=spec.reasoning)
    report["gate"] = gate_report(model, processor, held, held_hints, spec, cfg)
    path = save_policy(model, processor, Path(out_dir) / "base_model",
                       metadata={"study": cfg.get("name"), "warm_start": report["spec"]})
    return Path(path), report


def gate_report(model, processor, held: Sequence[Item], hints: dict[str, Hint], spec: WarmStartSpec,
                cfg: dict[str, Any]) -> dict[str, Any]:
    """The gate (``ptdpo.study.gate``) on the held-out items: the answer margins of student, hinted teacher
    and answer teacher over the open answer set, the first groups' outcomes at the arms' G and
    temperature, and the verdict."""
    from ptdpo.data.synthetic.grid import GRID_COLOR_NAMES
    from ptdpo.study.gate import answer_margins, candidate_answers, gate_verdict, group_outcomes

    train = cfg.get("train") or {}
    grid = any((it.meta or {}).get("template") == "marked_cell" for it in held)
    candidates = candidate_answers(held, GRID_COLOR_NAMES if grid else ())
    margins = answer_margins(model, processor, held, hints, candidates, reasoning=spec.reasoning,
                             template=train.get("prompt_template", "answer_tags"))
    groups = group_outcomes(model, processor, held, group_size=int(train.get("group_size", 8)),
                            temperature=float(train.get("temperature", 1.0)),
                            max_new_tokens=int(train.get("max_response_length", 16)),
                            template=train.get("prompt_template", "answer_tags"))
    return {"margins": margins, "groups": groups, "verdict": gate_verdict(margins, groups)}


def hints_for(kind: str | None, hint_dicts: dict[str, dict], seed: int = 0) -> dict[str, Hint]:
    """The trainer's hints of an arm (``ptdpo.study.hint_modes``; ``seed`` shuffles ``"shuffled"`` ones)."""
    from ptdpo.study.hint_modes import prepare_hints

    return prepare_hints(kind, hint_dicts, seed)


def train_branch(
    branch: dict[str, Any], base_model_dir: str | Path, items: Sequence[Item], hint_dicts: dict[str, dict],
    out_dir: str | Path, progress: bool = False,
) -> dict[str, Any]:
    """RL for one (arm, seed) from the base model. Returns the per-step metrics, the per-item group
    accuracy table, the all-fail -> solvable statistics and the saved model's folder."""
    from ptdpo.config import train_config_from_dict
    from ptdpo.models import load_policy, save_policy
    from ptdpo.study.tracking import GroupTracker, solvable_stats
    from ptdpo.trainer import Trainer

    set_threads()
    cfg = train_config_from_dict(branch["train"])
    torch.manual_seed(cfg.seed)
    model, processor = load_policy(str(base_model_dir))
    trainer = Trainer(cfg, model, processor, list(items), hints=hints_for(branch.get("hints"), hint_dicts, branch["seed"]))
    tracker = GroupTracker()
    t0 = time.perf_counter()
    while trainer.step < cfg.max_steps:
        res = trainer.train_step()
        tracker.update(res.step, res.rollouts)
        if progress:
            m = res.metrics
            print(f"[{branch['arm']}/{branch['seed']}] step {res.step}: acc {m['accuracy']:.3f} "
                  f"ptd {m.get('ptd_loss', 0):.4f} len {m['response_length']:.1f}", flush=True)
    metrics = pd.DataFrame(trainer.metrics)
    metrics.insert(0, "arm", branch["arm"])
    metrics.insert(1, "seed", branch["seed"])
    groups = tracker.table()
    model_dir = save_policy(trainer.policy, processor, Path(out_dir) / "model",
                            metadata={"arm": branch["arm"], "seed": branch["seed"], "step": trainer.step})
    return {"metrics": metrics, "groups": groups, "solvable": solvable_stats(groups),
            "model_dir": Path(model_dir), "time_s": time.perf_counter() - t0}


def kl_sweep_choice(cfg: dict[str, Any], train_metrics: pd.DataFrame, sweep_runs: Sequence[dict[str, Any]],
                    column: str = "kl_ref_true") -> dict[str, Any] | None:
    """The KL-matched arm's coefficient (``ptdpo.study.kl_sweep.choose_kl_coef``): the target arm's KL to the
    reference over every rollout (each run's mean over its steps, then the mean over seeds) located on the
    sweep's curve (each swept coefficient's run mean). None without a ``kl_sweep`` in ``cfg``."""
    from ptdpo.study.kl_sweep import choose_kl_coef

    sweep = cfg.get("kl_sweep")
    if not sweep:
        return None
    target = train_metrics[train_metrics["arm"] == sweep["target"]]
    if not len(target):
        raise ValueError(f"kl sweep: the target arm {sweep['target']!r} has no training metrics")
    target_kl = float(target.groupby("seed")[column].mean().mean())
    swept = {float(r["kl_coef"]): float(r["metrics"][column].mean()) for r in sweep_runs}
    try:
        out = choose_kl_coef(swept, target_kl)
    except ValueError as e:  # e.g. no KL measured in a run this short; the study still runs the arm, and says so
        import math

        coefs = sorted(swept)
        out = {"kl_coef": math.exp(sum(math.log(c) for c in coefs) / len(coefs)), "target_kl": target_kl,
               "sweep": swept, "how": f"not located ({e}): the geometric middle of the swept coefficients"}
    return {**out, "target_arm": sweep["target"], "arm": sweep["arm"], "column": column, "seed": sweep.get("seed", 0),
            "target_seeds": sorted(int(s) for s in target["seed"].unique())}


@torch.no_grad()
def evaluate_policy(model, processor, items: Sequence[Item], k: int = 4, temperature: float = 1.0,
                    max_new_tokens: int = 16, seed: int = 0, batch_size: int = 32,
                    reasoning: str | None = None) -> dict[str, float]:
    """Greedy accuracy, sampled avg@k and pass@k (temperature ``temperature``), mean response length
    (tokens, sampled) and format rate (sampled) on ``items``, answer-free prompts. With ``reasoning ==
    "boxes"`` (the base model's think form), also how well the greedy think blocks of the spatial relation
    items locate the objects (``diagnostics.box_reasoning_error``: think_exact, corner_abs_error)."""
    from ptdpo.answers import extract_answer, normalize_text
    from ptdpo.engines import SamplingConfig, TransformersEngine
    from ptdpo.models.sampling import mix_seed
    from ptdpo.prompts import build_messages
    from ptdpo.rewards import score_batch
    from ptdpo.study.base_model import greedy_responses, reasoning_for, think_of
    from ptdpo.study.diagnostics import box_reasoning_error

    set_threads()
    greedy_texts, greedy = greedy_responses(model, processor, items, None, max_new_tokens, batch_size)
    engine = TransformersEngine(model, processor, max_batch_rows=batch_size)
    prompts = engine.encode([build_messages(it) for it in items], [item_images(it) for it in items])
    groups = engine.sample(prompts, k, SamplingConfig(max_new_tokens, temperature, 1.0),
                           [mix_seed(seed, i) for i in range(len(items))])
    res = score_batch([s.text for g in groups for s in g], [it for it in items for _ in range(k)], max_workers=1)
    acc, fmt = [r.accuracy for r in res], [r.format for r in res]
    lens = [float(s.completion.numel()) for g in groups for s in g]
    passk = [float(any(r.accuracy for r in res[j : j + k])) for j in range(0, len(res), k)]
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))  # noqa: E731
    answers = Counter(normalize_text(extract_answer(t) or "") for t in greedy_texts)
    sampled = [[normalize_text(extract_answer(s.text) or "") for s in g] for g in groups]
    out = {"greedy_accuracy": mean(greedy), f"avg@{k}": mean(acc), f"pass@{k}": mean(passk),
           "response_length": mean(lens), "format": mean(fmt),
           # 1.0: one greedy answer for every item, i.e. the policy ignores the image and the question
           "greedy_top_answer_share": max(answers.values(), default=0) / max(len(items), 1),
           # how varied an item's k sampled answers are (nats; 0: the same answer k times)
           "sampled_answer_entropy": mean([_entropy(Counter(a)) for a in sampled]), "n": len(items)}
    if reasoning == "corner":  # did the policy locate the marked square on its own (no hint)?
        out["think_exact"] = mean([float(think_of(t) == reasoning_for(it, "corner")) for t, it in zip(greedy_texts, items)])
    if reasoning == "boxes":
        rel = [(t, it) for t, it in zip(greedy_texts, items) if (it.meta.get("query") or {}).get("type") == "relation"]
        box = box_reasoning_error([t for t, _ in rel], [it for _, it in rel])
        out.update(think_exact=box["think_exact"], corner_abs_error=box["corner_abs_error"])
    return out


def _entropy(counts: Counter) -> float:
    import math

    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values() if c) if n else 0.0


def evaluate_model(model_dir: str | Path, eval_items: dict[str, Sequence[Item]], eval_cfg: dict[str, Any] | None = None,
                   labels: dict[str, Any] | None = None, reasoning: str | None = None) -> list[dict[str, Any]]:
    """Long rows (labels..., split, metric, value) for every evaluation split."""
    from ptdpo.models import load_policy

    model, processor = load_policy(str(model_dir))
    eval_cfg = dict(eval_cfg or {})
    rows = []
    for split, items in eval_items.items():
        for metric, value in evaluate_policy(model, processor, items, reasoning=reasoning, **eval_cfg).items():
            rows.append({**(labels or {}), "split": split, "metric": metric, "value": float(value)})
    return rows
