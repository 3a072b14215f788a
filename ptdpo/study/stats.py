"""Intervals over seeds: the study's numbers are means over independent RL seeds, each a noisy run.

``t_interval`` is the two-sided Student-t interval of a mean (the seeds are few, 5 in the study, so the
normal quantile would be too narrow); ``binomial_interval`` the Wilson interval of a proportion over items
(the base model, which has no seeds). Pure functions; no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, df = 1..30 (beyond: the normal 1.96 is within 2%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean of ``values`` (NaNs dropped); with one
    value the interval is unknown (NaN bounds)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return float("nan"), float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    h = t_quantile_975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return m, m - h, m + h


def binomial_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(proportion, low, high): the Wilson 95% interval of a proportion of ``n`` trials."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, max(0.0, centre - h), min(1.0, centre + h)


def fmt_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``0.412 [0.371, 0.453]`` (or the mean alone when the interval is unknown)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def difference_interval(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float, float]:
    """(p2 - p1, low, high): Newcombe's 95% interval of a difference of two proportions from their Wilson
    intervals (method 10, independent samples). Two models scored on the SAME items are positively
    correlated, so this interval is wider than a paired one: conservative."""
    if n1 <= 0 or n2 <= 0:
        return float("nan"), float("nan"), float("nan")
    _, l1, u1 = binomial_interval(p1 * n1, n1)
    _, l2, u2 = binomial_interval(p2 * n2, n2)
    d = p2 - p1
    return d, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
