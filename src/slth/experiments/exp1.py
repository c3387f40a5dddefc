"""Pensia et al.'s Experiment 1, twice: their procedure, and the real network construction.

1. The paper's procedure (as in the authors' code): coefficients Uniform[low, high] over all the
   target's weights (low <= 0 <= high), one vector of n = 21 per weight-matrix row, every weight
   approximated by the best subset sum (we solve exactly what their MIP solved approximately),
   and the sums written back into the target's own shape. We then measure that written-back
   network's accuracy - the figure the paper meant to report (its 97.19% was computed on the
   target by mistake).
2. Our construction: the random network G of depth 2l with Pensia's blocks, the mask, and the
   pruned network evaluated for real, with a certified output bound.
"""

from __future__ import annotations

import time


from ..certify import Domain
from ..constructions import construct
from ..report import evaluate
from ..subsetsum import solve
from ..targets import MLP, accuracy
from .bench_subsetsum import PAPER_EXP1, pensia_exp1_workload


def paper_procedure(target: MLP, n: int = 21, eps: float = 0.01, seed: int = 0, data=None) -> dict:
    """Run the paper's SubsetSum procedure with the exact solver; returns its figures."""
    t0 = time.perf_counter()
    wl = pensia_exp1_workload(target, n=n, seed=seed)
    r = solve(wl.coeffs, wl.targets, groups=wl.groups, eps=eps)
    approx_w, approx_b = [], []
    pos = 0
    for w, b in zip(target.weights, target.biases):
        approx_w.append(r.sums[pos:pos + w.size].reshape(w.shape))
        pos += w.size
        if b is not None:
            approx_b.append(r.sums[pos:pos + b.size])
            pos += b.size
        else:
            approx_b.append(None)
    approx = MLP(approx_w, approx_b)
    out = {
        "weights": len(wl.targets),
        "n": n,
        "eps": eps,
        "coefficients_total": len(wl.targets) * n,
        "coefficients_distinct": int(wl.coeffs.size),
        "coefficients_kept": r.kept,
        "all_within_eps": bool((r.errors <= eps).all()),
        "max_weight_error": float(r.errors.max()),
        "seconds_subsetsum": None,
    }
    out["seconds_subsetsum"] = time.perf_counter() - t0
    if data is not None:
        out["target_accuracy"] = accuracy(target.forward, data.x_test, data.y_test)
        out["approximated_accuracy"] = accuracy(approx.forward, data.x_test, data.y_test)
        ft = target.forward(data.x_test).argmax(1)
        fa = approx.forward(data.x_test).argmax(1)
        out["agreement"] = float((ft == fa).mean())
    out["seconds"] = time.perf_counter() - t0
    return out


def reproduce(target: MLP, data=None, n: int = 21, eps: float = 0.01, seed: int = 0,
              domain: Domain | None = None, progress=None) -> dict:
    """Both halves of the reproduction on one target."""
    say = progress or (lambda msg: None)
    say("paper's procedure")
    paper = paper_procedure(target, n=n, eps=eps, seed=seed, data=data)
    say("network construction")
    t0 = time.perf_counter()
    domain = domain or Domain("box")
    con = construct(target, method="pensia", n=n, seed=seed, domain=domain, progress=say)
    rep = evaluate(target, con, domain, data, seed=seed, progress=say)
    rep["seconds"] = time.perf_counter() - t0
    return {"paper_reported": PAPER_EXP1, "paper_procedure": paper, "construction": rep}
