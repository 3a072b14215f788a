"""The KL-matched GRPO control: a short sweep of GRPO's KL coefficient, then the coefficient whose KL to
the reference (over every rollout) is expected to equal PTD-PO's.

The study's ``kl_sweep`` section::

    "kl_sweep": {"arm": "grpo_kl_matched", "target": "ptd_structured",
                 "coefs": [0.03, 0.1, 0.3, 1.0], "seed": 0, "tolerance": 0.2}

Phase 1 of the study runs every other arm over every seed, plus one branch per coefficient of ``coefs``
(the arm ``arm`` with that ``kl_coef``, seed ``seed``). The coefficient of phase 2 comes from
:func:`choose_kl_coef`: the target's KL (mean over its seeds of each run's mean ``kl_ref_true``) located on
the sweep's curve, interpolated linearly in log(coef) vs log(KL) between the two swept coefficients that
bracket it (or the nearest swept coefficient when none do).
Phase 2 runs ``arm`` with that coefficient over every seed; the report says whether its KL came within
``tolerance`` of the target's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SWEEP_ARM = "kl_sweep"  # the arm label of the sweep's branches (kept out of the study's arm tables)
SWEEP_KEYS = {"arm", "target", "coefs", "seed", "tolerance"}


def check_kl_sweep(cfg: Mapping[str, Any]) -> list[str]:
    """The problems of the study's ``kl_sweep`` section (none when absent)."""
    sweep = cfg.get("kl_sweep")
    if sweep is None:
        return []
    if not isinstance(sweep, Mapping):
        return [f"kl_sweep: must be an object with keys {sorted(SWEEP_KEYS)}, got {type(sweep).__name__}"]
    problems = []
    extra = sorted(set(sweep) - SWEEP_KEYS)
    if extra:
        problems.append(f"kl_sweep: unknown key(s) {extra}; known: {sorted(SWEEP_KEYS)}")
    arms = cfg.get("arms") or {}
    for key in ("arm", "target"):
        if sweep.get(key) not in arms:
            problems.append(f"kl_sweep.{key}: {sweep.get(key)!r} is not an arm of the study ({sorted(arms)})")
    if sweep.get("arm") == sweep.get("target"):
        problems.append("kl_sweep: arm and target must differ")
    coefs = sweep.get("coefs")
    if (not isinstance(coefs, list) or len(coefs) < 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in coefs)):
        problems.append(f"kl_sweep.coefs: at least two positive numbers are needed, got {coefs!r}")
    elif len(set(coefs)) != len(coefs):
        problems.append(f"kl_sweep.coefs: repeated values in {coefs}")
    tol = sweep.get("tolerance", 0.2)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 < tol < 1:
        problems.append(f"kl_sweep.tolerance: a number in (0, 1), got {tol!r}")
    if not isinstance(sweep.get("seed", 0), int) or isinstance(sweep.get("seed", 0), bool):
        problems.append(f"kl_sweep.seed: an integer, got {sweep.get('seed')!r}")
    return problems


def choose_kl_coef(sweep_kl: Mapping[float, float], target_kl: float) -> dict[str, Any]:
    """The KL coefficient expected to give ``target_kl``, from ``sweep_kl`` (coefficient -> measured KL).

    Linear interpolation of log(KL) against log(coef) between two neighbouring swept coefficients whose KLs
    bracket the target (the first such pair from the smallest coefficient). When no pair brackets it, the
    swept coefficient whose KL is nearest the target (in log), ``how`` = ``"nearest"``: a line through
    noisy points, followed past them, lands anywhere (the first 96-px run's sweep was flat, and the line
    through its two smallest coefficients pointed 40x past the range)."""
    pts = sorted((float(c), float(k)) for c, k in sweep_kl.items() if k is not None and math.isfinite(k) and k > 0)
    if len(pts) < 2:
        raise ValueError(f"kl sweep: need at least two coefficients with a positive KL, got {dict(sweep_kl)}")
    if not (math.isfinite(target_kl) and target_kl > 0):
        raise ValueError(f"kl sweep: the target KL must be positive, got {target_kl}")
    lt = math.log(target_kl)
    out = {"target_kl": target_kl, "sweep": {c: k for c, k in pts}}
    for (c0, k0), (c1, k1) in zip(pts, pts[1:]):
        lo, hi = sorted((math.log(k0), math.log(k1)))
        if lo <= lt <= hi:
            if math.isclose(k0, k1):
                coef = math.sqrt(c0 * c1)
            else:
                t = (lt - math.log(k0)) / (math.log(k1) - math.log(k0))
                coef = math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
            return {"kl_coef": coef, "how": "bracketed", **out}
    coef, _ = min(pts, key=lambda p: abs(math.log(p[1]) - lt))
    return {"kl_coef": coef, "how": "nearest", **out}
