"""The Pensia et al. (2020) Experiment 1 MIP, one model per instance, as a baseline.

objective "error" (the paper's formulation): binary x_i, continuous z >= 0,
    minimise z  s.t.  w - sum_i x_i a_i <= z,  sum_i x_i a_i - w <= z,
                      and, when eps is given, both differences <= eps;  relative MIP gap 0.01.
objective "size": minimise sum_i x_i  s.t.  |w - sum_i x_i a_i| <= eps (same gap).
Sums and errors of the returned subsets are recomputed with the exact solver's convention so
that the comparison is like for like.
"""

from __future__ import annotations

import numpy as np

from ..errors import SlthError

MIP_GAP = 0.01


def _canonical_sum(c, bits):
    n1 = c.shape[0] // 2
    sa = 0.0
    for i in range(n1):
        if bits[i]:
            sa += c[i]
    sb = 0.0
    for i in range(n1, c.shape[0]):
        if bits[i]:
            sb += c[i]
    return sa + sb


def _highs_one(a, w, objective, eps, time_limit):
    import highspy

    n = a.shape[0]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", MIP_GAP)
    if time_limit:
        h.setOptionValue("time_limit", float(time_limit))
    inf = highspy.kHighsInf
    # columns: x_0..x_{n-1} binary, z continuous
    cost = np.zeros(n + 1)
    if objective == "error":
        cost[n] = 1.0
    else:
        cost[:n] = 1.0
    lower = np.zeros(n + 1)
    upper = np.ones(n + 1)
    upper[n] = inf if eps is None else eps
    h.addVars(n + 1, lower, upper)
    h.changeColsCost(n + 1, np.arange(n + 1, dtype=np.int32), cost)
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32),
                            np.array([highspy.HighsVarType.kInteger] * n))
    idx = np.arange(n + 1, dtype=np.int32)
    # w - a.x - z <= 0  ->  -a.x - z <= -w ;  a.x - w - z <= 0 -> a.x - z <= w
    h.addRow(-inf, -w, n + 1, idx, np.concatenate([-a, [-1.0]]))
    h.addRow(-inf, w, n + 1, idx, np.concatenate([a, [-1.0]]))
    h.run()
    status = h.getModelStatus()
    if status in (highspy.HighsModelStatus.kInfeasible,):
        return None
    sol = h.getSolution().col_value
    if sol is None or len(sol) < n:
        return None
    return np.asarray(sol[:n]) > 0.5


def _gurobi_one(a, w, objective, eps, time_limit, env):
    import gurobipy as gp
    from gurobipy import GRB

    n = a.shape[0]
    m = gp.Model(env=env)
    m.Params.MIPGap = MIP_GAP
    if time_limit:
        m.Params.TimeLimit = float(time_limit)
    x = m.addVars(n, vtype=GRB.BINARY)
    z = m.addVar(vtype=GRB.CONTINUOUS, lb=0.0, ub=GRB.INFINITY if eps is None else eps)
    ax = gp.quicksum(float(a[i]) * x[i] for i in range(n))
    m.addConstr(w - ax <= z)
    m.addConstr(ax - w <= z)
    m.setObjective(z if objective == "error" else x.sum(), GRB.MINIMIZE)
    m.optimize()
    if m.SolCount == 0:
        m.dispose()
        return None
    bits = np.array([x[i].X > 0.5 for i in range(n)])
    m.dispose()
    return bits


def solve_mip(coeffs2, group, targets, objective, eps, backend, progress=None, time_limit=None):
    """Solve each instance with one MIP. Returns (bool mask [N, n], sums, errors, feasible)."""
    N, n = targets.shape[0], coeffs2.shape[1]
    env = None
    if backend == "gurobi":
        try:
            import gurobipy as gp
        except ImportError:
            raise SlthError("solver 'mip-gurobi' needs gurobipy: pip install 'slth[gurobi]'") from None
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
    elif backend == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise SlthError("solver 'mip-highs' needs highspy: pip install highspy") from None
    else:
        raise SlthError(f"unknown MIP backend {backend!r}; use 'highs' or 'gurobi'")
    mask = np.zeros((N, n), bool)
    sums = np.zeros(N)
    errs = np.zeros(N)
    feas = np.zeros(N, bool)
    for i in range(N):
        a = coeffs2[group[i]]
        w = float(targets[i])
        if backend == "gurobi":
            bits = _gurobi_one(a, w, objective, eps, time_limit, env)
        else:
            bits = _highs_one(a, w, objective, eps, time_limit)
        if bits is None:  # no subset within eps: report infeasible with the empty subset
            bits = np.zeros(n, bool)
            ok = False
        else:
            ok = True
        s = _canonical_sum(a, bits)
        mask[i], sums[i], errs[i] = bits, s, abs(w - s)
        feas[i] = ok and (eps is None or errs[i] <= eps)
        if progress:
            progress(i + 1)
    if env is not None:
        env.dispose()
    return mask, sums, errs, feas
