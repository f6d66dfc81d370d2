"""Success rates of closed-loop evaluations with 95 % Wilson score intervals: one definition for
the built-in task's evaluation (`builtin_task.evaluate`) and LIBERO's (`libero_eval.results`,
which imports no JAX). Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

WILSON_Z = 1.959963984540054  # 95 %, two-sided


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0 and n successes, unlike the
    normal approximation; n = 0 gives the uninformative [0, 1])."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def success_stats(outcomes: Iterable[bool]) -> dict[str, Any]:
    """Episode outcomes -> {"successes", "episodes", "rate" (0.0 without episodes), "ci95":
    [lo, hi]}, one row of a results.json."""
    values = [bool(v) for v in outcomes]
    k, n = sum(values), len(values)
    return {
        "successes": k,
        "episodes": n,
        "rate": k / n if n else 0.0,
        "ci95": list(wilson_interval(k, n)),
    }
