"""The compiled Orseau kernel gives the NumPy construction's answers bit for bit: masks, sums,
digits, the seeded draws and their magnitudes. The reference is the NumPy path
(``orseau.golden_greedy`` + the sums of ``orseau.solve_layer``, pensia's per-row stream draws)."""

import math

import numpy as np
import pytest

from slth.constructions import _orseau_kernel as K
from slth.constructions._common import f32, stream
from slth.constructions.orseau import Magnitudes as Mags, golden_greedy

PHI = (1 + math.sqrt(5)) / 2


# ----------------------------------------------------------------------------- the reference

def reference(W, c, a, b, beta, bb, s, gamma, greedy=golden_greedy):
    """orseau.solve_layer's choice and sums for given (mapped) draws."""
    rows, d_in = W.shape
    n = a.shape[1]
    mask = np.zeros((2, rows, d_in, n), bool)
    sums = np.zeros((2, rows, d_in))
    for h in range(2):
        coef = np.transpose(b[h] * a[h][:, None, :], (1, 2, 0))  # [rows, d_in, n]
        mask[h] = greedy(coef, W if h == 0 else -W, s, gamma)
        sums[h] = np.where(mask[h], coef, 0.0).sum(-1)
    bm = bs = None
    if c is not None:
        coef = bb.T * beta[None, :]
        bm = greedy(coef, c, s, gamma)
        bs = np.where(bm, coef, 0.0).sum(-1)
    return mask, sums, bm, bs


IN_W, OUT_W, BIAS_IN, BIAS_OUT = range(4)


def draw_in(d_in, n, has_bias, seed, layer):
    a = np.stack([np.stack([f32(stream(seed, layer, IN_W, h, t, 0).uniform(0.0, 1.0, d_in))
                            for t in range(n)]) for h in range(2)])
    beta = (np.array([f32(stream(seed, layer, BIAS_IN, 0, t, 0).uniform(0.0, 1.0)) for t in range(n)])
            if has_bias else None)
    return a, beta


def draw_out(rows, d_in, n, has_bias, seed, layer):
    b = np.empty((2, n, len(rows), d_in))
    for h in range(2):
        for t in range(n):
            for i, k in enumerate(rows):
                b[h, t, i] = f32(stream(seed, layer, OUT_W, h, t, k).uniform(-1.0, 1.0, d_in))
    bb = None
    if has_bias:
        bb = np.array([[f32(stream(seed, layer, BIAS_OUT, 0, t, k).uniform(-1.0, 1.0)) for k in rows]
                       for t in range(n)])
    return b, bb


def same(x, y):
    """Identical arrays, down to the bytes (so -0.0 != 0.0 and dtypes must agree)."""
    if x is None or y is None:
        return x is None and y is None
    x, y = np.asarray(x), np.asarray(y)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def assert_kernel_matches(W, c, a, b, beta, bb, s, gamma):
    ref = reference(W, c, a, b, beta, bb, s, gamma)
    for exact in (False, True):
        got = K.solve_rows(W, c, a, b, beta, bb, s, gamma, exact_walk=exact)
        for name, x, y in zip(("mask", "sums", "bias_mask", "bias_sums"), ref, got):
            assert same(x, y), (name, exact, None if x is None else int((x != y).sum()))
            if x is not None:
                assert np.array_equal(x, y)
    return ref


# ----------------------------------------------------------------------------- random layers

def random_layer(rng, rows, d_in, n, bias, mags, zeros=0.1, s_factor=1.0, ties=False):
    W = rng.standard_t(3, (rows, d_in)) * 0.1
    W[rng.random(W.shape) < zeros] = 0.0
    c = rng.normal(0, 0.2, rows) if bias else None
    if bias and rows > 1:
        c[0] = 0.0
    if ties:  # few distinct magnitudes: many equal |p| within a pool
        a = mags(rng.integers(0, 4, (2, n, d_in)) / 4.0)
        b = mags.signed(f32(rng.integers(-3, 4, (2, n, rows, d_in)) / 3.0))
    else:
        a = mags(f32(rng.uniform(0, 1, (2, n, d_in))))
        b = mags.signed(f32(rng.uniform(-1, 1, (2, n, rows, d_in))))
    beta = mags(f32(rng.uniform(0, 1, n))) if bias else None
    bb = mags.signed(f32(rng.uniform(-1, 1, (n, rows)))) if bias else None
    s = max(np.abs(W).max(initial=0.0), 0.0 if c is None else np.abs(c).max()) * s_factor
    return W, c, a, b, beta, bb, float(s)


SIZES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 64, 127, 128, 129, 135, 136, 137, 200, 255, 256, 257,
         300]


@pytest.mark.parametrize("case", range(len(SIZES) * 2))
def test_kernel_equals_numpy_on_random_layers(case):
    rng = np.random.default_rng(1000 + case)
    n = SIZES[case % len(SIZES)]
    bias = case % 2 == 0
    gamma = PHI if case % 4 < 2 else 1.5
    mags = [Mags("hyperbolic", 1e-3, 1.0), Mags("uniform", 0.0, 1.0),
            Mags("hyperbolic", 2e-4, 0.7), Mags("hyperbolic", 0.05, 3.0)][case % 4]
    rows, d_in = int(rng.integers(1, 6)), int(rng.integers(1, 40))
    W, c, a, b, beta, bb, s = random_layer(rng, rows, d_in, n, bias, mags,
                                           s_factor=[1.0, 1.0, 0.3, 2.0][(case // 4) % 4])
    assert_kernel_matches(W, c, a, b, beta, bb, s, gamma)


@pytest.mark.parametrize("n", [64, 129, 300])
def test_sums_of_many_digits_follow_numpys_pairwise_order(n):
    # targets near s and a wide hyperbolic range: pools take 6+ coefficients, so the order of
    # the float additions (pairwise, not index order) shows in the last bits
    rng = np.random.default_rng(n)
    W, c, a, b, beta, bb, s = random_layer(rng, 3, 8, n, True, Mags("hyperbolic", 1e-4, 1.0),
                                           zeros=0.0)
    W = np.where(np.abs(W) > s / 4, W, s / 2)
    mask, sums, _, _ = assert_kernel_matches(W, c, a, b, beta, bb, s, 1.5)
    assert mask.sum(-1).max() >= 6
    coef = np.transpose(b[0] * a[0][:, None, :], (1, 2, 0))
    seq = np.zeros(sums[0].shape)
    for t in range(n):  # index order: differs somewhere from what the kernel (and NumPy) give
        seq = seq + np.where(mask[0, ..., t], coef[..., t], 0.0)
    assert n < 128 or not np.array_equal(seq, sums[0])


@pytest.mark.parametrize("case", range(8))
def test_ties_zeros_and_large_coefficients(case):
    rng = np.random.default_rng(2000 + case)
    n = [5, 12, 64, 130, 257, 40, 9, 100][case]
    mags = Mags("uniform", 0.0, 1.0) if case % 2 else Mags("hyperbolic", 0.01, 1.0)
    W, c, a, b, beta, bb, s = random_layer(rng, 4, 9, n, case % 3 != 0, mags, zeros=0.3,
                                           s_factor=0.5, ties=True)
    p = np.abs(b * a[:, :, None, :])
    assert (p > s).any() and (p == 0).any()
    _, counts = np.unique(p[p > 0], return_counts=True)
    assert counts.max() > 1
    assert_kernel_matches(W, c, a, b, beta, bb, s, [PHI, 1.5][case % 2])


@pytest.mark.parametrize("gamma", [PHI, 1.5])
def test_coefficients_on_digit_boundaries(gamma):
    # |p| within a few ulps of s gamma^-i (where NumPy's log and libm's can disagree about the
    # digit) and |p| = s exactly (digit 0, or -1 when np.log(s) > math.log(s))
    rng = np.random.default_rng(3)
    rows, d_in, n = 3, 6, 40
    # (on AVX-512 NumPy, np.log(s) > math.log(s) for the last two: there |p| = s has digit -1
    # and a pool holding it takes nothing)
    for s in (1.0, 0.541, 0.3, float(np.float32(0.4643)), 2.75, 1.3864624500274658,
              0.9741576910018921):
        bnd = s * gamma ** -np.arange(0, 14.0)
        bits = bnd.view(np.int64)
        pick = bits[rng.integers(0, 14, (2, n, rows, d_in))] + rng.integers(-3, 4, (2, n, rows, d_in))
        b = pick.view(np.float64) * rng.choice([-1.0, 1.0], (2, n, rows, d_in))
        b[:, 0] = s * np.sign(b[:, 0])            # |p| = s exactly
        a = np.ones((2, n, d_in))
        W = rng.uniform(-s, s, (rows, d_in))
        W[0, 0] = s
        W[1, 1] = -s
        c = rng.uniform(-s, s, rows)
        beta, bb = np.ones(n), b[0, :, :, 0].copy()
        assert_kernel_matches(W, c, a, b, beta, bb, s, gamma)


def test_digit_rule_is_numpys_expression():
    rng = np.random.default_rng(4)
    for s, gamma in [(1.0, PHI), (0.541, 1.5), (3.7e-3, PHI), (12.5, 1.5), (1e-9, 1.2)]:
        rule = K.digit_rule(s, gamma)
        m = np.exp(rng.uniform(math.log(s) - 60, math.log(s), 50_000))
        near = (s * gamma ** -np.arange(0, 80.0)).view(np.int64)
        near = (near[:, None] + np.arange(-300, 301)[None, :]).ravel().view(np.float64)
        for x in (m, near[(near > 0) & (near <= s)], np.array([s])):
            want = np.floor((math.log(s) - np.log(x)) / math.log(gamma))
            assert np.array_equal(rule.digits(x), want.astype(np.int64))


def test_zero_scale_and_empty_shapes():
    a = np.ones((2, 3, 4))
    b = np.ones((2, 3, 2, 4))
    for s in (0.0, float("nan")):
        mask, sums, bm, bs = K.solve_rows(np.zeros((2, 4)), np.zeros(2), a, b, np.ones(3),
                                          np.ones((3, 2)), s, PHI)
        assert not mask.any() and not bm.any() and (sums == 0).all() and (bs == 0).all()
    mask, sums, bm, bs = K.solve_rows(np.zeros((0, 4)), None, a, np.ones((2, 3, 0, 4)), None,
                                      None, 1.0, PHI)
    assert mask.shape == (2, 0, 4, 3) and bm is None and bs is None
    with pytest.raises(ValueError):
        K.solve_rows(np.zeros((2, 4)), None, a, np.ones((2, 3, 3, 4)), None, None, 1.0, PHI)


def test_products_far_below_the_scale_widen_the_digit_rule():
    # the rule covers [s 2^-100, s] at first; smaller products make the kernel rebuild it from
    # the data's range (here down to ~1e-39, and down to the subnormals) and redo the rows
    rng = np.random.default_rng(5)
    n, rows, d_in = 30, 2, 3
    for lo, W in [(-45, [[1e-33, -1e-36, 0.3], [-0.5, 1e-31, 2e-38]]),
                  (-370, [[1e-250, -1e-200, 0.3], [-0.5, 1e-120, 1e-300]])]:
        a = np.exp(rng.uniform(lo, 0, (2, n, d_in)))
        b = np.exp(rng.uniform(lo, 0, (2, n, rows, d_in))) * rng.choice([-1.0, 1.0], (2, n, rows, d_in))
        assert_kernel_matches(np.array(W), None, a, b, None, None, 0.5, PHI)


def test_float32_targets_and_strided_inputs():
    rng = np.random.default_rng(6)
    W, c, a, b, beta, bb, s = random_layer(rng, 6, 10, 33, True, Mags())
    W32 = W.astype(np.float32)
    s32 = float(np.abs(W32).max())
    ref = reference(W32.astype(np.float64), c, a, b, beta, bb, s32, PHI)
    got = K.solve_rows(W32, c, a, b[:, :, :], beta, bb, s32, PHI)
    assert all(same(x, y) for x, y in zip(ref, got))
    # a row chunk of a bigger draw (a non-contiguous view), as solve_layer passes it
    part = K.solve_rows(W[2:5], c[2:5], a, b[:, :, 2:5], beta, bb[:, 2:5], s, PHI)
    full = reference(W, c, a, b, beta, bb, s, PHI)
    assert same(part[0], full[0][:, 2:5]) and same(part[1], full[1][:, 2:5])
    assert same(part[2], full[2][2:5]) and same(part[3], full[3][2:5])


def test_pairwise_sum_is_numpys():
    rng = np.random.default_rng(8)
    for n in list(range(1, 140)) + [255, 256, 257, 1000, 4099]:
        x = rng.normal(size=(3, n)) * 10.0 ** rng.integers(-8, 9, (3, n))
        assert same(K.pairwise_sum(x), x.sum(-1))


# ----------------------------------------------------------------------------- the draws

def test_streams_are_numpys_generators():
    for seed, key in [(0, (0, 1, 0)), (7, (2, 0, 1)), (2 ** 40 + 3, (1, 3, 0)), (5, (2 ** 33, 1, 1))]:
        ts, ks = [0, 1, 5, 2 ** 31 + 7], [0, 3, 4096]
        raw = K.uniform_streams(seed, key, ts, ks, 17, -1.0, 1.0, round_f32=False)
        for i, t in enumerate(ts):
            for r, k in enumerate(ks):
                want = stream(seed, *key, t, k).uniform(-1.0, 1.0, 17)
                assert same(raw[i, r], want)
        one = K.uniform_streams(seed, key, [3], [2], 1, 0.0, 1.0)
        assert same(one[0, 0, 0], f32(stream(seed, *key, 3, 2).uniform(0.0, 1.0)))


@pytest.mark.parametrize("has_bias", [False, True])
def test_draw_layer_equals_pensias_draws(has_bias):
    d_in, n, rows = 11, 9, range(2, 6)
    a, beta = draw_in(d_in, n, has_bias, 3, 1)
    b, bb = draw_out(rows, d_in, n, has_bias, 3, 1)
    got = K.draw_layer(d_in, n, has_bias, 3, 1, rows)
    assert all(same(x, y) for x, y in zip((a, beta, b, bb), got))
    tail = K.draw_layer(d_in, n, has_bias, 3, 1, rows, t0=4)   # samples 4..n-1
    assert same(tail[0], a[:, 4:]) and same(tail[2], b[:, 4:])
    if has_bias:
        assert same(tail[1], beta[4:]) and same(tail[3], bb[4:])
    for mags in (Mags("hyperbolic", 1e-3, 1.0), Mags("uniform", 0.0, 1.0),
                 Mags("hyperbolic", 8.8e-5, 14.93)):
        got = K.draw_layer(d_in, n, has_bias, 3, 1, rows, mags=mags)
        want = (mags(a), None if beta is None else mags(beta), mags.signed(b),
                None if bb is None else mags.signed(bb))
        assert all(same(x, y) for x, y in zip(want, got))


def test_mapping_in_pieces_gives_the_whole_arrays_values():
    # map_inplace applies the NumPy mapping on cache-sized pieces, over threads: elementwise, so
    # the same bytes as one call on the whole array (NumPy's SIMD power included)
    mags = Mags("hyperbolic", 8.798702693385117e-05, 14.927667820732548)
    raw = K.uniform_streams(0, (0, OUT_W, 0), np.arange(8), np.arange(100), 784, -1.0, 1.0)
    for chunk, threads in [(1 << 16, 2), (1000, 1), (7, 3)]:
        x = raw[:, :20].copy() if chunk == 7 else raw.copy()
        K.map_inplace(mags.signed, x, chunk=chunk, threads=threads)
        assert same(x, mags.signed(raw[:, :20] if chunk == 7 else raw))
    got = K.uniform_streams(0, (0, OUT_W, 0), np.arange(8), np.arange(100), 784, -1.0, 1.0,
                            mags=mags, signed=True)
    assert same(got, mags.signed(raw))
    with pytest.raises(ValueError):
        K.map_inplace(mags, raw[:, ::2])
    try:
        from slth.constructions.orseau import Magnitudes
    except ImportError:
        return
    real = Magnitudes("hyperbolic", mags.w_min, mags.w_max)
    u = K.uniform_streams(0, (0, IN_W, 1), np.arange(8), [0], 784, 0.0, 1.0)
    assert same(K.uniform_streams(0, (0, IN_W, 1), np.arange(8), [0], 784, 0.0, 1.0, mags=real),
                real(u))


def test_matches_golden_greedy_for_other_gammas_and_long_rows():
    rng = np.random.default_rng(7)
    for n, gamma in [(9, PHI), (140, 1.5)]:
        W, c, a, b, beta, bb, s = random_layer(rng, 3, 7, n, True, Mags())
        ref = reference(W, c, a, b, beta, bb, s, gamma)
        got = K.solve_rows(W, c, a, b, beta, bb, s, gamma)
        assert all(same(x, y) for x, y in zip(ref, got))
