"""Downsampling of metric series for charts: min/max per bucket (the M4 way), plain Python.

A series of N points (steps in order) becomes at most about `target` points: the points are cut
into target/4 buckets of equal count, and each bucket keeps its first, last, lowest and highest
point. So the series' first and last points and its global minimum and maximum always survive, and a
line drawn through what is kept covers the same pixels as one through every point, at a chart
about `target / 4` pixels wide or narrower.
"""
from __future__ import annotations

from collections.abc import Sequence


def downsample(steps: Sequence[int], values: Sequence[float], target: int = 1000) -> tuple[list[int], list[float]]:
    """The kept (steps, values), in step order; the input itself when it has at most `target` points."""
    n = len(steps)
    if n <= target or target < 4:
        return list(steps), list(values)
    buckets = max(1, target // 4)
    keep: list[int] = []
    for b in range(buckets):
        lo = b * n // buckets
        hi = (b + 1) * n // buckets
        if lo >= hi:
            continue
        low = high = lo
        low_value = high_value = values[lo]
        for i in range(lo + 1, hi):
            v = values[i]
            if v < low_value:
                low, low_value = i, v
            elif v > high_value:
                high, high_value = i, v
        keep.extend(sorted({lo, low, high, hi - 1}))
    return [steps[i] for i in keep], [values[i] for i in keep]
