"""SubsetSum: choose the subset of n coefficients whose sum is closest to a target.

>>> import numpy as np
>>> from slth.subsetsum import solve
>>> r = solve(np.array([0.5, -0.25, 0.125]), np.array([0.375, 1.0]))
>>> r.mask.astype(int).tolist(), r.errors.tolist()
([[1, 0, 0], [1, 0, 1]], [0.125, 0.375])

``solve`` is the one entry point. The default solver is exact (meet-in-the-middle, compiled with
numba, all cores); ``"bruteforce"`` (n <= 20) is the reference used by the tests; ``"mip-highs"``
and ``"mip-gurobi"`` are the Pensia et al. Experiment 1 MIP, kept as baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import SlthError

__all__ = ["SubsetSumResult", "solve", "MAX_EXACT_N", "MAX_BRUTEFORCE_N"]

MAX_EXACT_N = 40
MAX_BRUTEFORCE_N = 20
MAX_ABS = 1e250
OBJECTIVES = ("error", "size")
SOLVERS = ("exact", "bruteforce", "mip-highs", "mip-gurobi")


@dataclass
class SubsetSumResult:
    """Answer for N instances of n coefficients.

    mask: bool [N, n], the chosen subset. sums: float64 [N], its sum (see the kernel's summation
    convention). errors: float64 [N], |target - sum|. feasible: bool [N], error <= eps (all True
    when no eps is given). For infeasible instances the mask is the error-optimal subset.
    """

    mask: np.ndarray
    sums: np.ndarray
    errors: np.ndarray
    feasible: np.ndarray
    objective: str
    eps: float | None
    solver: str

    @property
    def kept(self) -> int:
        """Total number of coefficients kept over all instances."""
        return int(self.mask.sum())


def _validate(coeffs, targets, objective, eps, solver, groups):
    if objective not in OBJECTIVES:
        raise SlthError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if solver not in SOLVERS:
        raise SlthError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if objective == "size" and eps is None:
        raise SlthError("objective='size' needs eps (the largest allowed error), e.g. eps=0.01")
    if eps is not None:
        eps = float(eps)
        if not np.isfinite(eps) or eps < 0:
            raise SlthError(f"eps must be a finite number >= 0, got {eps}")
    coeffs = np.asarray(coeffs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 1:
        raise SlthError(f"targets must have shape [N], got shape {list(targets.shape)}")
    N = targets.shape[0]
    if coeffs.ndim == 1:
        coeffs2 = coeffs[None, :]
        if groups is not None:
            raise SlthError("groups= needs coeffs of shape [G, n], got a single vector")
        group = np.zeros(N, dtype=np.int64)
    elif coeffs.ndim == 2:
        coeffs2 = coeffs
        if groups is None:
            if coeffs.shape[0] != N:
                raise SlthError(
                    f"coeffs has {coeffs.shape[0]} rows but targets has {N} entries; "
                    "give coeffs of shape [N, n], a shared vector [n], or groups=")
            group = np.arange(N, dtype=np.int64)
        else:
            group = np.asarray(groups)
            if group.shape != (N,) or not np.issubdtype(group.dtype, np.integer):
                raise SlthError(f"groups must be integers of shape [{N}], got "
                                f"{group.dtype} {list(group.shape)}")
            group = group.astype(np.int64)
            if N and (group.min() < 0 or group.max() >= coeffs.shape[0]):
                raise SlthError(f"groups must index rows 0..{coeffs.shape[0] - 1} of coeffs")
    else:
        raise SlthError(f"coeffs must have shape [n] or [N, n], got shape {list(coeffs.shape)}")
    if not np.all(np.isfinite(coeffs2)):
        raise SlthError("coeffs contain NaN or inf; SubsetSum needs finite coefficients")
    if not np.all(np.isfinite(targets)):
        raise SlthError("targets contain NaN or inf; SubsetSum needs finite targets")
    if coeffs2.size and np.abs(coeffs2).max() > MAX_ABS or targets.size and np.abs(targets).max() > MAX_ABS:
        raise SlthError(f"coeffs and targets must be at most {MAX_ABS:g} in magnitude (larger "
                        "values overflow subset sums); rescale the problem")
    n = coeffs2.shape[1]
    limit = {"exact": MAX_EXACT_N, "bruteforce": MAX_BRUTEFORCE_N}.get(solver, MAX_EXACT_N)
    if n > limit:
        raise SlthError(f"solver {solver!r} supports n <= {limit} coefficients per instance, "
                        f"got n = {n}; use fewer coefficients (or solver='exact' up to {MAX_EXACT_N})")
    return np.ascontiguousarray(coeffs2), np.ascontiguousarray(targets), group, eps


def _unpack(masks: np.ndarray, n: int) -> np.ndarray:
    """bool [N, n]: bit i of masks[k] in column i."""
    b = np.ascontiguousarray(masks, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(b, axis=1, bitorder="little")[:, :n].astype(bool)


def solve(coeffs, targets, *, objective: str = "error", eps: float | None = None,
          solver: str = "exact", groups=None, threads: int | None = None,
          batch_size: int = 1 << 16, memory_mb: float = 512.0,
          progress: Callable[[int], None] | None = None,
          time_limit: float | None = None) -> SubsetSumResult:
    """Solve N SubsetSum instances.

    coeffs: [N, n] (own coefficients per instance), [n] (one vector shared by all instances), or
      [G, n] with ``groups`` [N] giving each instance's row (shared vectors, never copied).
    targets: [N].
    objective: "error" - the exact minimum |target - sum| over all 2^n subsets (ties: fewer
      elements, then the smaller mask integer); "size" - the fewest elements with error <= eps
      (ties: smaller error, then mask). eps with "error" only sets ``feasible``.
    solver: "exact" (n <= 40), "bruteforce" (n <= 20), "mip-highs", "mip-gurobi".
    threads: numba threads for the exact solver (default: all cores). Answers never depend on it,
      nor on batch_size / memory_mb, which only bound the working memory.
    progress: called with the number of instances finished after each batch.
    time_limit: seconds per instance for the MIP solvers.
    """
    coeffs2, targets, group, eps = _validate(coeffs, targets, objective, eps, solver, groups)
    n = coeffs2.shape[1]
    if solver == "bruteforce":
        from ._reference import bruteforce
        masks, sums, errs, feas = bruteforce(coeffs2, group, targets, objective, eps)
    elif solver.startswith("mip-"):
        from ._mip import solve_mip
        masks, sums, errs, feas = solve_mip(coeffs2, group, targets, objective, eps,
                                            backend=solver[4:], progress=progress,
                                            time_limit=time_limit)
        return SubsetSumResult(masks, sums, errs, feas, objective, eps, solver)
    else:
        masks, sums, errs, feas = _solve_exact(coeffs2, group, targets, objective, eps, threads,
                                               batch_size, memory_mb, progress)
    return SubsetSumResult(_unpack(masks, n), sums, errs, feas, objective, eps, solver)


def _solve_exact(coeffs2, group, targets, objective, eps, threads, batch_size, memory_mb,
                 progress, shared=None, mode=0):
    """shared / mode pick the path (tests only; answers never depend on them): shared tables
    (default when instances reuse vectors, N >= 2G) or tables per instance; mode 0 chooses,
    1 forces per-target queries on sorted tables, 2 the walk (shared) / bucketed B (per instance).
    """
    import numba

    from . import _kernel as K

    N, n = targets.shape[0], coeffs2.shape[1]
    by_size = objective == "size"
    eps_k = np.inf if eps is None else eps
    out_mask = np.zeros(N, np.uint64)
    out_sum = np.zeros(N, np.float64)
    out_err = np.zeros(N, np.float64)
    out_feas = np.zeros(N, np.bool_)
    if N == 0:
        return out_mask, out_sum, out_err, out_feas
    prev_threads = numba.get_num_threads()
    nth = max(1, min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(nth)
    try:
        G = coeffs2.shape[0]
        # Shared tables pay off when instances reuse coefficient vectors.
        if shared or (shared is None and N >= 2 * G):
            order = np.argsort(group, kind="stable")
            g_sorted = group[order]
            bounds = np.flatnonzero(np.diff(g_sorted)) + 1
            starts = np.concatenate([[0], bounds])
            ends = np.concatenate([bounds, [N]])
            if by_size:
                _shared_size(coeffs2, targets, order, g_sorted, starts, ends, n, eps_k,
                             memory_mb, progress, out_mask, out_sum, out_err, out_feas)
            else:
                # segments of at most SEG_MAX instances of one vector, one table build each
                nseg = (ends - starts + K.SEG_MAX - 1) // K.SEG_MAX
                offs = np.arange(nseg.sum()) - np.repeat(np.cumsum(nseg) - nseg, nseg)
                seg_s = np.repeat(starts, nseg) + offs * K.SEG_MAX
                seg_e = np.minimum(seg_s + K.SEG_MAX, np.repeat(ends, nseg))
                ids = g_sorted[seg_s]
                b0 = 0
                while b0 < len(seg_s):
                    # a batch: segments until batch_size instances (progress after each)
                    b1 = int(np.searchsorted(seg_e, seg_s[b0] + batch_size, side="left")) + 1
                    b1 = min(max(b1, b0 + 1), len(seg_s))
                    bstarts = np.append(seg_s[b0:b1], seg_e[b1 - 1])
                    K.solve_groups_error(coeffs2, ids[b0:b1], bstarts, order, targets, eps_k, nth,
                                         mode, out_mask, out_sum, out_err, out_feas)
                    b0 = b1
                    if progress:
                        progress(int(seg_e[b1 - 1]))
        else:
            for b0 in range(0, N, batch_size):
                sl = slice(b0, min(N, b0 + batch_size))
                if by_size:
                    K.solve_each_size(coeffs2, group[sl], targets[sl], eps_k, 64,
                                      out_mask[sl], out_sum[sl], out_err[sl], out_feas[sl])
                else:
                    K.solve_each_error(coeffs2, group[sl], targets[sl], eps_k, 64, mode,
                                       out_mask[sl], out_sum[sl], out_err[sl], out_feas[sl])
                if progress:
                    progress(sl.stop)
    finally:
        numba.set_num_threads(prev_threads)
    return out_mask, out_sum, out_err, out_feas


def _shared_size(coeffs2, targets, order, g_sorted, starts, ends, n, eps_k, memory_mb, progress,
                 out_mask, out_sum, out_err, out_feas):
    """Size objective, shared vectors: tables for a batch of vectors, then their instances."""
    from . import _kernel as K

    n1 = n // 2
    n2 = n - n1
    per_group_bytes = ((1 << n1) + (1 << n2)) * 12 + 64
    groups_per_batch = max(1, int(memory_mb * 2**20 // per_group_bytes))
    done = 0
    for b0 in range(0, len(starts), groups_per_batch):
        gs = slice(b0, min(len(starts), b0 + groups_per_batch))
        ids = g_sorted[starts[gs]]
        idx = order[starts[gs][0]:ends[gs][-1]]
        slot = np.repeat(np.arange(len(ids)), ends[gs] - starts[gs])
        G = len(ids)
        tabs = [np.empty((G, 1 << n1), np.float64), np.empty((G, 1 << n1), np.uint32),
                np.zeros((G, n1 + 2), np.int64), np.zeros((G, n1 + 1), np.int64),
                np.empty((G, 1 << n2), np.float64), np.empty((G, 1 << n2), np.uint32),
                np.zeros((G, n2 + 2), np.int64), np.zeros((G, n2 + 1), np.int64)]
        K.build_size_tables(coeffs2, ids, *tabs)
        m, s, e, f = (np.empty(len(idx), np.uint64), np.empty(len(idx)), np.empty(len(idx)),
                      np.empty(len(idx), np.bool_))
        K.scan_size_tables(slot, targets[idx], n, eps_k, 256, *tabs, m, s, e, f)
        out_mask[idx], out_sum[idx], out_err[idx], out_feas[idx] = m, s, e, f
        done += len(idx)
        if progress:
            progress(done)


