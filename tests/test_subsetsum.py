"""The exact SubsetSum engine against brute force, edge cases, sharing, determinism, errors."""

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slth.subsetsum import MAX_EXACT_N, solve

# coefficients mixing ordinary floats with values that create exact ties (zeros, duplicates,
# dyadic rationals), so the tie-break rules are exercised
value = st.one_of(
    st.floats(-2, 2, allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, 0.5, -0.5, 0.25, 1.0, -1.0, 0.125, 3.0]),
)


@st.composite
def instances(draw, max_n=12, max_N=8):
    n = draw(st.integers(0, max_n))
    N = draw(st.integers(1, max_N))
    shared = draw(st.booleans())
    shape = (n,) if shared else (N, n)
    coeffs = np.array(draw(st.lists(value, min_size=int(np.prod(shape)),
                                    max_size=int(np.prod(shape)))), dtype=np.float64).reshape(shape)
    targets = np.array(draw(st.lists(value, min_size=N, max_size=N)), dtype=np.float64)
    return coeffs, targets


def assert_same(a, b):
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.sums, b.sums)
    np.testing.assert_array_equal(a.errors, b.errors)
    np.testing.assert_array_equal(a.feasible, b.feasible)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_error_objective_matches_bruteforce(inst):
    coeffs, targets = inst
    assert_same(solve(coeffs, targets), solve(coeffs, targets, solver="bruteforce"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]))
def test_size_objective_matches_bruteforce(inst, eps):
    coeffs, targets = inst
    a = solve(coeffs, targets, objective="size", eps=eps)
    b = solve(coeffs, targets, objective="size", eps=eps, solver="bruteforce")
    assert_same(a, b)


def test_random_instances_up_to_n20_match_bruteforce():
    rng = np.random.default_rng(1)
    for n in (13, 17, 20):
        c = rng.uniform(-1, 1, (6, n))
        t = rng.uniform(-1, 1, 6)
        assert_same(solve(c, t), solve(c, t, solver="bruteforce"))
        assert_same(solve(c, t, objective="size", eps=0.01),
                    solve(c, t, objective="size", eps=0.01, solver="bruteforce"))


def test_result_is_consistent_with_its_mask():
    rng = np.random.default_rng(2)
    c = rng.uniform(-1, 1, (50, 15))
    t = rng.uniform(-1, 1, 50)
    r = solve(c, t)
    np.testing.assert_allclose(r.sums, (c * r.mask).sum(1), atol=1e-12)
    np.testing.assert_array_equal(r.errors, np.abs(t - r.sums))
    assert r.feasible.all()


def test_size_objective_keeps_fewest_within_eps_and_flags_infeasible():
    c = np.array([0.3, 0.5, 0.2, 0.7])
    r = solve(c, np.array([0.7, 0.0, 5.0]), objective="size", eps=1e-9)
    assert r.mask[0].sum() == 1 and r.mask[0, 3]            # 0.7 alone beats 0.5 + 0.2
    assert r.mask[1].sum() == 0 and r.feasible[1]           # the empty subset
    assert not r.feasible[2]                                # 5.0 is out of reach
    np.testing.assert_array_equal(r.mask[2], [1, 1, 1, 1])  # ...and we return the closest subset
    assert r.errors[2] == pytest.approx(5.0 - 1.7)


def test_edge_cases():
    # n = 0: the empty subset, error |t|
    r = solve(np.zeros((3, 0)), np.array([0.0, 1.5, -2.0]))
    assert r.mask.shape == (3, 0)
    np.testing.assert_array_equal(r.errors, [0.0, 1.5, 2.0])
    # n = 1
    r = solve(np.array([0.4]), np.array([0.3, 0.1]))
    np.testing.assert_array_equal(r.mask[:, 0], [True, False])
    # all-zero coefficients: ties everywhere, fewest elements wins
    r = solve(np.zeros(10), np.array([0.0, 1.0]))
    assert not r.mask.any()
    # exactly reachable target
    c = np.array([0.25, 0.5, 0.125, 1.0, 2.0])
    r = solve(c, np.array([0.625]))
    assert r.errors[0] == 0.0 and r.mask[0].tolist() == [False, True, True, False, False]
    # duplicates: the lower index wins among equal subsets of equal size
    r = solve(np.array([0.5, 0.5, 0.5]), np.array([0.5, 1.0]))
    assert r.mask.tolist() == [[True, False, False], [True, True, False]]
    # no instances
    assert solve(np.zeros((0, 5)), np.zeros(0)).mask.shape == (0, 5)


def test_n_40_is_supported_and_exact_on_structured_instance():
    c = 2.0 ** -np.arange(1, 41)  # binary digits: every multiple of 2^-40 in [0, 1) is reachable
    t = np.array([0.7, 0.123456789])
    r = solve(c, t)
    assert (r.errors <= 2.0 ** -40).all()


def test_shared_and_per_instance_coefficients_agree():
    rng = np.random.default_rng(3)
    c = rng.uniform(-1, 1, 21)
    t = rng.uniform(-2, 2, 500)
    for kw in ({}, {"objective": "size", "eps": 1e-3}):
        assert_same(solve(c, t, **kw), solve(np.tile(c, (500, 1)), t, **kw))
    C = rng.uniform(-1, 1, (4, 16))
    g = rng.integers(0, 4, 300)
    t = rng.uniform(-1, 1, 300)
    assert_same(solve(C, t, groups=g), solve(C[g], t))


def test_answers_do_not_depend_on_threads_or_batch_size():
    rng = np.random.default_rng(4)
    c = rng.uniform(-1, 1, (3000, 18))
    t = rng.uniform(-1, 1, 3000)
    ref = solve(c, t, threads=1)
    assert_same(ref, solve(c, t, threads=numba.config.NUMBA_NUM_THREADS, batch_size=77))
    C = rng.uniform(-1, 1, (40, 18))
    g = rng.integers(0, 40, 3000)
    ref = solve(C, t, groups=g, threads=1, objective="size", eps=1e-4)
    assert_same(ref, solve(C, t, groups=g, objective="size", eps=1e-4, memory_mb=0.01))


@pytest.mark.parametrize("coeffs,targets,match", [
    (np.array([1.0, np.nan]), np.array([0.5]), "NaN or inf"),
    (np.array([1.0, 2.0]), np.array([np.inf]), "NaN or inf"),
    (np.ones((3, 4)), np.ones(2), "3 rows but targets has 2"),
    (np.ones((2, 2, 2)), np.ones(2), "shape"),
    (np.ones(4), np.ones((2, 2)), "targets must have shape"),
    (np.ones(MAX_EXACT_N + 1), np.ones(1), "n <= 40"),
])
def test_bad_input_raises_value_error(coeffs, targets, match):
    with pytest.raises(ValueError, match=match):
        solve(coeffs, targets)


def test_bad_settings_raise_value_error():
    with pytest.raises(ValueError, match="needs eps"):
        solve(np.ones(3), np.ones(1), objective="size")
    with pytest.raises(ValueError, match="objective"):
        solve(np.ones(3), np.ones(1), objective="fast")
    with pytest.raises(ValueError, match="eps must be"):
        solve(np.ones(3), np.ones(1), eps=-1.0)
    with pytest.raises(ValueError, match="n <= 20"):
        solve(np.ones(21), np.ones(1), solver="bruteforce")
    with pytest.raises(ValueError, match="groups"):
        solve(np.ones((2, 3)), np.ones(2), groups=np.array([0, 5]))
