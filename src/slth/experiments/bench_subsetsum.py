"""Benchmark of the SubsetSum engine on Pensia et al.'s workloads.

Workload ``pensia-exp1`` (Experiment 1, as in the authors' code): every parameter of a 784-500-10
ReLU net is a target; coefficients are drawn Uniform[low, high] with low = min(0, min W) and
high = max(0, max W) over all parameters; n = 21 coefficients; one coefficient vector per
weight-matrix row, reused along the row (a bias entry gets its own vector).

Workload ``pensia-construction`` (what the real network construction solves): every parameter is
a target twice (w and -w, the two halves of the ReLU pair), each with its own n coefficients
b * a, b ~ Uniform[-1, 1] per weight and a ~ Uniform(0, 1] per input column, both drawn in
float32 and multiplied in float64 - the construction's distribution, with its own seeded draws.

The MIP baselines solve a seeded random sample of the *same* instances in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..subsetsum import solve
from ..targets import MLP

PAPER_EXP1 = {
    "instances": 397_000,
    "n": 21,
    "eps": 0.01,
    "coefficients_total": 8_337_000,
    "coefficients_kept": 3_725_871,
    "seconds": 77_266,
    "cores": 36,
    "solver": "Gurobi MIP, MIPGap 0.01",
    "accuracy_reported": 0.9719,
}


@dataclass
class Workload:
    """N instances: coeffs [G, n] shared through groups [N]; targets [N]; layer of each row."""

    coeffs: np.ndarray
    groups: np.ndarray
    targets: np.ndarray
    low: float
    high: float
    coefficients: str = ""

    @property
    def n(self) -> int:
        return int(self.coeffs.shape[1])


def pensia_exp1_workload(mlp: MLP, n: int = 21, seed: int = 0) -> Workload:
    """Targets = every parameter of ``mlp`` (row-major, layer order; biases after each weight)."""
    params = []
    for w, b in zip(mlp.weights, mlp.biases):
        params.append(w)
        if b is not None:
            params.append(b)
    low = min(0.0, min(float(p.min()) for p in params))
    high = max(0.0, max(float(p.max()) for p in params))
    targets, groups = [], []
    g0 = 0
    for p in params:
        if p.ndim == 2:  # one vector per row, reused along the row
            rows, cols = p.shape
            groups.append(g0 + np.repeat(np.arange(rows), cols))
            g0 += rows
        else:  # a bias entry gets its own vector, as in the authors' code
            groups.append(g0 + np.arange(p.size))
            g0 += p.size
        targets.append(p.ravel())
    rng = np.random.default_rng(seed)
    coeffs = rng.uniform(low, high, size=(g0, n))
    return Workload(coeffs, np.concatenate(groups).astype(np.int64),
                    np.concatenate(targets).astype(np.float64), low, high,
                    f"Uniform[{low:.3f}, {high:.3f}], {g0:,} shared vectors")


def pensia_construction_workload(mlp: MLP, n: int = 21, seed: int = 0) -> Workload:
    """Targets = every parameter of ``mlp``, then their negatives; each with its own n
    coefficients b * a (b per weight, a per input column and block position; float32 draws)."""
    rng = np.random.default_rng(seed)
    coeffs, targets = [], []
    for half in (1.0, -1.0):
        for w, b in zip(mlp.weights, mlp.biases):
            for p in ([w] if b is None else [w, b.reshape(-1, 1)]):
                p = np.asarray(p, np.float64)
                rows, cols = p.shape
                a = (1.0 - rng.random((n, cols), dtype=np.float32)).astype(np.float64)
                bb = rng.uniform(-1, 1, (rows, cols, n)).astype(np.float32).astype(np.float64)
                coeffs.append((bb * a.T[None, :, :]).reshape(-1, n))
                targets.append(half * p.ravel())
    coeffs = np.concatenate(coeffs)
    N = coeffs.shape[0]
    return Workload(coeffs, np.arange(N, dtype=np.int64), np.concatenate(targets), -1.0, 1.0,
                    "b * a with b ~ Uniform[-1, 1], a ~ Uniform(0, 1] (float32), one vector "
                    "per instance")


WORKLOADS = {"pensia-exp1": pensia_exp1_workload,
             "pensia-construction": pensia_construction_workload}


def compare_baselines(wl: Workload, ours, sample_idx: np.ndarray, backend: str, objective: str,
                      eps: float | None, ours_per_instance_s: float, progress=None,
                      time_limit: float | None = None) -> dict:
    """Run one MIP baseline on ``sample_idx`` and compare with our answers there."""
    t0 = time.perf_counter()
    r = solve(wl.coeffs, wl.targets[sample_idx], groups=wl.groups[sample_idx],
              objective=objective, eps=eps, solver=f"mip-{backend}", progress=progress,
              time_limit=time_limit)
    dt = time.perf_counter() - t0
    our_err = ours.errors[sample_idx]
    our_size = ours.mask[sample_idx].sum(1)
    their_size = r.mask.sum(1)
    tol = 1e-12
    if objective == "error":
        worse = int(((r.errors > our_err + tol) | ~r.feasible & ours.feasible[sample_idx]).sum())
        better = int((r.errors < our_err - tol).sum())
    else:
        ok_t, ok_o = r.feasible, ours.feasible[sample_idx]
        worse = int(((ok_o & ~ok_t) | (ok_o & ok_t & (their_size > our_size))).sum())
        better = int(((ok_t & ~ok_o) | (ok_o & ok_t & (their_size < our_size))).sum())
    per = dt / len(sample_idx)
    return {
        "solver": f"mip-{backend}",
        "sample": int(len(sample_idx)),
        "seconds": dt,
        "per_instance_s": per,
        "mean_abs_error": float(r.errors.mean()),
        "max_abs_error": float(r.errors.max()),
        "ours_mean_abs_error_on_sample": float(our_err.mean()),
        "coefficients_kept_per_instance": float(their_size.mean()),
        "ours_coefficients_kept_per_instance_on_sample": float(our_size.mean()),
        "all_within_eps": bool(r.feasible.all()),
        "speedup": per / ours_per_instance_s,
        "worse_than_ours": worse,
        "better_than_ours": better,
    }
