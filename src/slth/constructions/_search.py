"""Size search shared by the malach and orseau constructions and the width study.

``ok(sizes) -> bool`` says whether G with these sizes (one per target layer) meets the error
target (its certified bound is <= eps). Errors shrink as a size grows (every construction here
draws G so that a smaller G is a prefix of a larger one), so the smallest size is found by
doubling and then bisection; a greedy mask rule is not strictly monotone in the size, so the
answer is the boundary the bisection finds, not a proof that no smaller size works.
"""

from __future__ import annotations

import math
from typing import Callable


def smallest(ok: Callable[[int], bool], start: int, hi: int, lo: int = 1,
             grow: float = 2.0, rel_tol: float = 0.0) -> int | None:
    """Smallest s in [lo, hi] with ok(s): growing by ``grow`` from ``start``, then bisection
    until the bracket is <= rel_tol * s (0: exact). None when even ok(hi) fails."""
    s = max(lo, min(start, hi))
    bad, good = lo - 1, s
    if not ok(s):
        while True:
            bad = s
            if s >= hi:
                return None
            s = min(hi, max(s + 1, math.ceil(grow * s)))
            if ok(s):
                good = s
                break
    while good - bad > max(1.0, rel_tol * good):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def search_sizes(L: int, ok: Callable[[list[int]], bool], start: int, hi: int,
                 order: list[int] | None = None, refine: bool = True,
                 on_fail: Callable[[], None] | None = None) -> list[int]:
    """One size per layer: the smallest uniform size, then (``refine``) each layer lowered on
    its own, in ``order`` (largest layers first saves the most). ``on_fail`` is called (and
    should raise) when even size ``hi`` in every layer fails."""
    cache: dict[tuple[int, ...], bool] = {}

    def test(ns: list[int]) -> bool:
        key = tuple(ns)
        if key not in cache:
            cache[key] = ok(list(ns))
        return cache[key]

    k = smallest(lambda s: test([s] * L), start, hi)
    if k is None:
        if on_fail is not None:
            on_fail()
        raise RuntimeError("size search failed")
    ns = [k] * L
    if refine and L > 1:
        for i in order or range(L):
            def ok_i(s, i=i):
                trial = list(ns)
                trial[i] = s
                return test(trial)
            ns[i] = smallest(ok_i, max(1, ns[i] // 2), ns[i]) or ns[i]
    return ns
