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


def paired_counts(base: Sequence[float], trained: Sequence[float]) -> tuple[int, int, int, int]:
    """(both right, base only, trained only, both wrong): the 2x2 table of two models' 0/1 scores on the
    same items (``base[i]`` and ``trained[i]`` are item i's scores; a score >= 0.5 counts as right)."""
    if len(base) != len(trained):
        raise ValueError(f"paired scores need the same items: {len(base)} base vs {len(trained)} trained scores")
    a = b = c = d = 0
    for x, y in zip(base, trained):
        rx, ry = float(x) >= 0.5, float(y) >= 0.5
        a += rx and ry
        b += rx and not ry
        c += ry and not rx
        d += not rx and not ry
    return a, b, c, d


def paired_difference_interval(a: int, b: int, c: int, d: int, z: float = 1.96) -> tuple[float, float, float]:
    """(p2 - p1, low, high): Newcombe's square-and-add 95% interval (1998, paired method 10) of the difference
    of two proportions measured on the SAME n = a+b+c+d items, from the 2x2 table ``a`` both right, ``b``
    right under 1 only, ``c`` right under 2 only, ``d`` both wrong; p1 = (a+b)/n, p2 = (a+c)/n.

    The Wilson intervals of the two proportions are combined with the correlation of the two scores
    (``phi``, with Newcombe's continuity correction: 0 for a weak positive association), so agreement
    between the two models on most items narrows the interval: the right interval for base vs trained
    scored on one benchmark's items. With n = 0 every value is NaN."""
    n = a + b + c + d
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    r1, r2 = a + b, a + c  # right under 1, right under 2
    p1, p2 = r1 / n, r2 / n
    _, l1, u1 = binomial_interval(r1, n, z)
    _, l2, u2 = binomial_interval(r2, n, z)
    phi = 0.0
    if min(r1, n - r1, r2, n - r2) > 0:  # any empty margin: no correlation is estimable, take 0
        det = a * d - b * c
        root = math.sqrt(r1 * (n - r1) * r2 * (n - r2))
        phi = (det - n / 2) / root if det > n / 2 else 0.0 if det >= 0 else det / root
    diff = p2 - p1
    # the lower bound combines how far p2 can fall and p1 rise, the upper the opposite
    low = diff - math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    high = diff + math.sqrt(max(0.0, (u2 - p2) ** 2 + (p1 - l1) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1)))
    return diff, max(-1.0, low), min(1.0, high)
