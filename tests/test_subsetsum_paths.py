"""Every path of the exact SubsetSum engine against an exhaustive oracle, bit for bit.

The engine picks between several exact paths (shared tables with a walk over the sums near the
targets or per-target queries; per-instance tables with a bucketed or a sorted half), each first
trying a radius guessed from the subset-sum density and falling back when it is too small. The
answer must not depend on any of that: these tests force each path on random and adversarial
inputs (ties, zeros, repeated coefficients, subnormal spreads, one-signed coefficients, targets
out of reach or halfway between two sums) and compare mask, sum, error and feasibility with an
oracle that enumerates all 2^n subsets (numba, so n = 21 and 22 are covered too).
"""

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slth.subsetsum import _solve_exact, _validate, solve

# (shared, mode): shared tables auto / per-target queries / walk; per-instance auto / sorted
PATHS = [(True, 0), (True, 1), (True, 2), (False, 0), (False, 1)]


@numba.njit(cache=True)
def _popc(x):
    c = 0
    while x:
        x &= x - 1
        c += 1
    return c


@numba.njit(cache=True)
def _oracle(coeffs, group, targets, by_size, eps, out_mask, out_sum, out_err, out_feas):
    """All 2^n subsets; sum = (first half, index order) + (second half, index order)."""
    n = coeffs.shape[1]
    n1 = n // 2
    n2 = n - n1
    sa = np.empty(1 << n1)
    sb = np.empty(1 << n2)
    for i in range(targets.shape[0]):
        c = coeffs[group[i]]
        t = targets[i]
        for m in range(1 << n1):
            s = 0.0
            for j in range(n1):
                if (m >> j) & 1:
                    s += c[j]
            sa[m] = s
        for m in range(1 << n2):
            s = 0.0
            for j in range(n2):
                if (m >> j) & 1:
                    s += c[n1 + j]
            sb[m] = s
        # error-optimal (error, size, mask) and, for "size", (size, error, mask) within eps
        be, bp, bm, bs = np.inf, 1 << 30, 0, 0.0
        fe, fp, fm, fs = np.inf, 1 << 30, 0, 0.0
        for mb in range(1 << n2):
            for ma in range(1 << n1):
                s = sa[ma] + sb[mb]
                e = abs(t - s)
                p = _popc(ma) + _popc(mb)
                m = ma | (mb << n1)
                if e < be or (e == be and (p < bp or (p == bp and m < bm))):
                    be, bp, bm, bs = e, p, m, s
                if e <= eps and (p < fp or (p == fp and (e < fe or (e == fe and m < fm)))):
                    fe, fp, fm, fs = e, p, m, s
        if by_size and fe <= eps:
            be, bm, bs = fe, fm, fs
        out_mask[i] = bm
        out_sum[i] = bs
        out_err[i] = be
        out_feas[i] = be <= eps


def oracle(coeffs, targets, groups=None, objective="error", eps=None):
    c2, t, g, eps = _validate(coeffs, targets, objective, eps, "exact", groups)
    N = t.shape[0]
    out = (np.zeros(N, np.uint64), np.zeros(N), np.zeros(N), np.zeros(N, bool))
    _oracle(c2, g, t, objective == "size", np.inf if eps is None else eps, *out)
    return out


def engine(coeffs, targets, groups=None, objective="error", eps=None, shared=None, mode=0,
           threads=None, batch_size=1 << 16):
    c2, t, g, eps = _validate(coeffs, targets, objective, eps, "exact", groups)
    return _solve_exact(c2, g, t, objective, eps, threads, batch_size, 512.0, None,
                        shared=shared, mode=mode)


def assert_same(got, want, what=""):
    names = ("mask", "sum", "error", "feasible")
    for name, a, b in zip(names, got, want):
        bad = np.flatnonzero(a != b)
        assert bad.size == 0, (f"{what}: {name} differs at {bad.size} instances, first "
                               f"{bad[0]}: {a[bad[0]]!r} vs {b[bad[0]]!r}")


def f32(x):
    return np.asarray(x, np.float32).astype(np.float64)


def coefficient_kinds(rng, G, n):
    """Coefficient matrices [G, n] of every kind the engine must get right."""
    u = rng.uniform(-1, 1, (G, n))
    dyadic = rng.choice([0.0, 0.5, -0.5, 0.25, -0.25, 0.125, 1.0, -1.0, 3.0], (G, n))
    zeros = np.where(rng.random((G, n)) < 0.4, 0.0, u)
    repeated = np.where(rng.random((G, n)) < 0.5, 0.3, u)
    repeated[:, : n // 2] = 0.3
    tiny = u * 1e-310                        # subnormal coefficients: sums tie massively
    spread = u * 10.0 ** rng.integers(-300, 3, (G, n))   # magnitudes from 1e-300 to 1e2
    return {
        "uniform": u,
        "product": f32(rng.uniform(-1, 1, (G, n))) * f32(rng.uniform(1e-6, 1, (G, n))),
        "positive": np.abs(u),
        "negative": -np.abs(u),
        "dyadic": dyadic,
        "zeros": zeros,
        "repeated": repeated,
        "subnormal": tiny,
        "spread": spread,
        "all_zero": np.zeros((G, n)),
        "lattice": rng.choice([0.5, 1.5], (G, n)),
    }


def target_kinds(rng, c, groups):
    """Targets for coefficient rows c[groups]: clustered (like trained weights), spread, exactly
    reachable, halfway between two reachable sums, out of reach, zero."""
    N = groups.shape[0]
    cg = c[groups]
    n = c.shape[1]
    n1 = n // 2

    def subset_sum(bits):   # the engine's convention: each half from 0.0 in index order
        sa = np.zeros(N)
        for j in range(n1):
            sa = sa + np.where(bits[:, j], cg[:, j], 0.0)
        sb = np.zeros(N)
        for j in range(n1, n):
            sb = sb + np.where(bits[:, j], cg[:, j], 0.0)
        return sa + sb

    s1 = subset_sum(rng.random((N, n)) < 0.5)
    s2 = subset_sum(rng.random((N, n)) < 0.5)
    scale = np.abs(cg).sum(1)
    kinds = np.stack([
        rng.standard_t(3, N) * 0.03 * scale / max(n, 1),   # clustered near 0
        rng.uniform(-0.5, 0.5, N) * scale,                  # spread over the range
        s1,                                                 # exactly reachable
        0.5 * s1 + 0.5 * s2,                                # halfway: ties in error
        (1.5 + rng.random(N)) * scale * rng.choice([-1, 1], N),   # out of reach
        np.zeros(N),
    ])
    return kinds[rng.integers(0, kinds.shape[0], N), np.arange(N)]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 14, 17])
def test_every_path_matches_oracle_on_every_kind(n):
    rng = np.random.default_rng(100 + n)
    G = 6
    for kind, c in coefficient_kinds(rng, G, n).items():
        groups = np.repeat(np.arange(G), 40)      # 40 targets per vector: the walk is allowed
        t = target_kinds(rng, c, groups)
        want_e = oracle(c, t, groups)
        want_s = oracle(c, t, groups, "size", 1e-3)
        for shared, mode in PATHS:
            what = f"n={n} {kind} shared={shared} mode={mode}"
            assert_same(engine(c, t, groups, shared=shared, mode=mode), want_e, what)
            assert_same(engine(c, t, groups, "size", 1e-3, shared=shared, mode=mode), want_s,
                        what + " size")


@pytest.mark.parametrize("kind", ["uniform", "product", "dyadic", "zeros", "repeated", "spread"])
def test_n21_paths_match_oracle(kind):
    rng = np.random.default_rng(7)
    n, G = 21, 3
    c = coefficient_kinds(rng, G, n)[kind]
    groups = np.repeat(np.arange(G), 24)
    t = target_kinds(rng, c, groups)
    want = oracle(c, t, groups)
    for shared, mode in PATHS:
        assert_same(engine(c, t, groups, shared=shared, mode=mode), want,
                    f"{kind} shared={shared} mode={mode}")


def test_n22_construction_like_instances_match_oracle():
    # the real construction: every weight its own products b * a of float32 uniforms
    rng = np.random.default_rng(8)
    N, n = 24, 22
    c = f32(rng.uniform(-1, 1, (N, n))) * f32(rng.uniform(1e-6, 1, (N, n)))
    t = f32(rng.standard_t(3, N) * 0.05)
    want = oracle(c, t)
    for mode in (0, 1):
        assert_same(engine(c, t, shared=False, mode=mode), want, f"per-instance mode={mode}")
    assert_same(engine(c, t, np.arange(N), shared=True, mode=1), want, "shared tables")


def test_walk_on_trained_like_rows_matches_queries_and_per_instance():
    # Experiment 1's shape: one Uniform[low, high] vector per row, clustered targets along it
    rng = np.random.default_rng(9)
    G, K, n = 4, 700, 21
    c = rng.uniform(-0.98, 1.17, (G, n))
    groups = np.repeat(np.arange(G), K)
    t = rng.standard_t(3, G * K) * 0.02
    t[::97] = rng.uniform(-1.2, 1.2, t[::97].shape)     # a few wide outliers
    walk = engine(c, t, groups, shared=True, mode=2)
    assert_same(walk, engine(c, t, groups, shared=True, mode=1), "walk vs queries")
    assert_same(walk, engine(c, t, groups, shared=True, mode=0), "walk vs auto")
    assert_same(walk, engine(c, t, groups, shared=False, mode=0), "walk vs per instance")
    some = rng.choice(G * K, 40, replace=False)
    assert_same(tuple(x[some] for x in walk), oracle(c, t[some], groups[some]), "oracle")


def test_large_groups_are_split_and_answers_do_not_change():
    # more instances of one vector than SEG_MAX: several table builds, same answers
    from slth.subsetsum import _kernel as K
    rng = np.random.default_rng(10)
    n = 12
    c = rng.uniform(-1, 1, (2, n))
    N = K.SEG_MAX + 3000
    groups = np.where(np.arange(N) < N - 50, 0, 1)
    t = rng.uniform(-1, 1, N) * 0.2
    want = oracle(c, t, groups)
    for mode in (0, 1, 2):
        assert_same(engine(c, t, groups, shared=True, mode=mode), want, f"mode={mode}")
    assert_same(engine(c, t, groups, shared=True, batch_size=777, threads=1), want, "batches")


def test_answers_do_not_depend_on_threads_or_batches_on_every_path():
    rng = np.random.default_rng(11)
    n, G = 18, 5
    c = rng.uniform(-1, 1, (G, n))
    groups = rng.integers(0, G, 2000)
    t = rng.standard_t(3, 2000) * 0.05
    for shared, mode in PATHS:
        ref = engine(c, t, groups, shared=shared, mode=mode, threads=1)
        for threads, bs in ((numba.config.NUMBA_NUM_THREADS, 1 << 16), (2, 333), (1, 1)):
            assert_same(engine(c, t, groups, shared=shared, mode=mode, threads=threads,
                               batch_size=bs), ref, f"shared={shared} mode={mode} {threads}/{bs}")


value = st.one_of(
    st.floats(-2, 2, allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, 0.5, -0.5, 0.25, 1.0, -1.0, 0.125, 3.0, 5e-324, -1e-310]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 12), st.integers(1, 3), st.integers(1, 24), st.data(),
       st.sampled_from(PATHS), st.sampled_from([None, 0.0, 1e-3, 0.3]))
def test_forced_paths_match_oracle_property(n, G, N, data, path, eps):
    c = np.array(data.draw(st.lists(value, min_size=G * n, max_size=G * n)),
                 dtype=np.float64).reshape(G, n)
    t = np.array(data.draw(st.lists(value, min_size=N, max_size=N)), dtype=np.float64)
    groups = np.array(data.draw(st.lists(st.integers(0, G - 1), min_size=N, max_size=N)),
                      dtype=np.int64)
    shared, mode = path
    objective = "error" if eps is None else "size"
    assert_same(engine(c, t, groups, objective, eps, shared=shared, mode=mode),
                oracle(c, t, groups, objective, eps), f"shared={shared} mode={mode}")


def test_public_solve_agrees_with_oracle_on_shared_and_per_instance_n21():
    rng = np.random.default_rng(12)
    c = rng.uniform(-1, 1, (2, 21))
    g = np.repeat([0, 1], 30)
    t = rng.standard_t(3, 60) * 0.05
    assert_same(_as_tuple(solve(c, t, groups=g)), oracle(c, t, g), "shared")
    assert_same(_as_tuple(solve(c[g], t)), oracle(c[g], t), "per instance")


def _as_tuple(r):
    masks = (r.mask.astype(np.uint64) << np.arange(r.mask.shape[1], dtype=np.uint64)).sum(1)
    return masks.astype(np.uint64), r.sums, r.errors, r.feasible


def test_paths_trust_only_pairs_within_their_radius():
    # Lattice coefficients (multiples of 0.5, repeated): the sums are few values with huge
    # multiplicities, so the density guess gives a radius smaller than the gaps between sums.
    # The walk then meets pairs beyond the radius (not necessarily the best ones): they must not
    # be trusted, the per-target query has to answer.
    rng = np.random.default_rng(1)
    c = np.array([0.5, 0.5, 0.5, 1.5, 0.5, 1.5, 0.5, 0.5, 1.5, 1.5, 0.5, 0.5])
    t = rng.uniform(0.3, 4.3, 60)
    groups = np.zeros(t.shape[0], np.int64)
    want = oracle(c[None, :], t, groups)
    for shared, mode in PATHS:
        assert_same(engine(c[None, :], t, groups, shared=shared, mode=mode), want,
                    f"shared={shared} mode={mode}")


def test_bench_workloads_have_the_documented_shapes_and_solve_exactly():
    from slth.experiments.bench_subsetsum import WORKLOADS
    from slth.targets import MLP

    rng = np.random.default_rng(13)
    mlp = MLP([rng.normal(0, 0.1, (5, 7)), rng.normal(0, 0.3, (3, 5))],
              [rng.normal(0, 0.1, 5), None])
    P = 5 * 7 + 5 + 3 * 5
    exp1 = WORKLOADS["pensia-exp1"](mlp, n=10, seed=0)
    assert exp1.coeffs.shape == (5 + 5 + 3, 10) and exp1.targets.shape == (P,)
    con = WORKLOADS["pensia-construction"](mlp, n=10, seed=0)
    assert con.coeffs.shape == (2 * P, 10) and (con.groups == np.arange(2 * P)).all()
    np.testing.assert_array_equal(con.targets[P:], -con.targets[:P])
    assert (np.abs(con.coeffs) <= 1).all()
    for wl in (exp1, con):
        assert_same(_as_tuple(solve(wl.coeffs, wl.targets, groups=wl.groups)),
                    oracle(wl.coeffs, wl.targets, wl.groups), "workload")
