"""The paper's MIP baselines solve the same instances, and never beat the exact solver."""

import importlib.util

import numpy as np
import pytest

from slth.subsetsum import solve

BACKENDS = ["mip-highs"] + (["mip-gurobi"] if importlib.util.find_spec("gurobipy") else [])


@pytest.mark.parametrize("solver", BACKENDS)
def test_mip_never_beats_exact_and_respects_eps(solver):
    rng = np.random.default_rng(0)
    c = rng.uniform(-0.5, 0.5, (6, 12))
    t = rng.uniform(-0.3, 0.3, 6)
    exact = solve(c, t, eps=0.01)
    mip = solve(c, t, eps=0.01, solver=solver)
    assert mip.mask.shape == (6, 12)
    assert (mip.errors >= exact.errors - 1e-12).all()
    assert (mip.errors[mip.feasible] <= 0.01).all()
    np.testing.assert_allclose(mip.sums, (c * mip.mask).sum(1), atol=1e-12)


@pytest.mark.parametrize("solver", BACKENDS)
def test_mip_size_objective_is_no_smaller_than_exact(solver):
    rng = np.random.default_rng(1)
    c = rng.uniform(-0.5, 0.5, 10)
    t = rng.uniform(-0.3, 0.3, 5)
    exact = solve(c, t, objective="size", eps=0.02)
    mip = solve(c, t, objective="size", eps=0.02, solver=solver)
    assert (mip.mask.sum(1)[mip.feasible] >= exact.mask.sum(1)[mip.feasible]).all()


def test_mip_reports_infeasible_instances():
    r = solve(np.array([0.1, 0.2]), np.array([5.0]), eps=0.01, solver="mip-highs")
    assert not r.feasible[0]
