"""Compiled kernels for Orseau's per-layer solve: the golden-ratio greedy and the seeded draws.

``solve_rows`` returns exactly (bit for bit) what ``orseau.golden_greedy`` and the sums of
``orseau.solve_layer`` give for the same inputs, but without the [rows, d_in, n] float64
temporaries (coefficients, logs, digits, argsort) of the NumPy version: every (output k, input j,
half h) pool of n coefficients is formed, filtered and walked in a small per-thread buffer, with
the (half, row) pairs spread over numba's threads. Memory: the outputs (mask [2, rows, d_in, n]
bool, sums [2, rows, d_in]) plus O(threads x TILE_J x n) scratch.

``draw_layer`` / ``uniform_streams`` give the same numbers as ``pensia.draw_in`` /
``pensia.draw_out`` (f32-rounded uniforms from the per-(seed, layer, kind, half, t, row) streams
of ``_common.stream``), by a numba re-implementation of NumPy's SeedSequence -> PCG64 ->
``Generator.uniform``, in parallel and without one Python Generator per stream; with ``mags``
they come mapped by ``Magnitudes`` itself, applied on cache-sized pieces (``map_inplace``).

How exactness is kept:

* Coefficients p = b * a: one IEEE multiply, as NumPy does (no fused or reordered arithmetic);
  sg * p (sg = +-1, the target's sign) is exact, and is |p| exactly when the signs agree.
* Digits. The reference computes floor((log(s) - np.log(|p|)) / log(gamma)) with NumPy's log,
  which is not libm's (on AVX-512 NumPy has its own log; they differ in the last bit on ~2e-4 of
  inputs, which can move a coefficient lying on a digit boundary, and even gives |p| = s the
  digit -1 when np.log(s) > math.log(s)). So the kernel never calls a log: ``digit_rule``
  evaluates NumPy's exact expression (same operations, same order) to find, by bisection over
  the float64 bit patterns, every threshold where the digit changes, then checks NumPy's digit
  against the threshold rule on every double within +-1024 ulps of each threshold (observed
  disagreements between the two logs move a boundary by <= 51 ulps), and records any double
  where they disagree as an exception. The kernel looks up the rule (a table indexed by the
  top bits of |p|, then a comparison with the next threshold) and the exceptions. Outside the
  windows NumPy's quotient is far from any integer, so its floor is the rule's.
* The walk. With a digit that never increases with |p| (the rule) the reference's walk (stable
  argsort by decreasing |p|, first coefficient of each digit that still fits) equals: for each
  digit present, in increasing order, take the largest coefficient <= the rest (lowest index on
  ties), and take nothing when the largest coefficient's digit is negative. That is what the
  fast path does (a counting sort by digit, no comparison sort). Whenever exceptions exist (none
  were ever seen; the digit might then fail to be monotone) or when asked (``exact_walk``), the
  kernel instead sorts each pool with a stable mergesort and walks it exactly as ``_walk`` does.
* Sums. ``np.where(mask, coef, 0.0).sum(-1)`` reduces a C-contiguous array along its last axis
  with NumPy's pairwise summation (below 8 elements in order; up to 128 with 8 accumulators;
  above, split at n/2 rounded down to a multiple of 8), not in index order. The kernel sums the
  same length-n vector (zeros included) with the same algorithm; with <= 2 nonzero terms any
  order gives the same double.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["solve_rows", "digit_rule", "draw_layer", "uniform_streams", "map_inplace",
           "positive_min_product", "pairwise_sum"]

TILE_J = 32          # inputs whose coefficients are formed together (buffer TILE_J x n)
SHIFT = 44           # digit table key: sign-free bits >> 44 = exponent and 8 mantissa bits
WINDOW = 1024        # ulps each side of a threshold where NumPy's digit is checked exactly
SPAN = 100           # binades below s the digit rule covers at first (more when needed)


# --------------------------------------------------------------------------- pairwise sum

@numba.njit(inline="always")
def _pairwise_leaf(x, lo, n):
    """NumPy's pairwise_sum of x[lo:lo + n] for n <= 128 (no split)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += x[lo + i]
        return res
    r0 = x[lo]
    r1 = x[lo + 1]
    r2 = x[lo + 2]
    r3 = x[lo + 3]
    r4 = x[lo + 4]
    r5 = x[lo + 5]
    r6 = x[lo + 6]
    r7 = x[lo + 7]
    i = 8
    stop = n - n % 8
    while i < stop:
        r0 += x[lo + i]
        r1 += x[lo + i + 1]
        r2 += x[lo + i + 2]
        r3 += x[lo + i + 3]
        r4 += x[lo + i + 4]
        r5 += x[lo + i + 5]
        r6 += x[lo + i + 6]
        r7 += x[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += x[lo + i]
        i += 1
    return res


@numba.njit(cache=True)
def _pairwise(x, lo, n):
    """NumPy's pairwise_sum (loops_utils.h.src) of x[lo:lo + n], same association: below 8
    elements in order, up to 128 with 8 accumulators, above that split at
    n2 = n // 2 - (n // 2) % 8 and add the halves' sums. The recursion runs on an explicit
    stack (numba's on-disk cache mishandles recursive functions)."""
    if n <= 128:
        return _pairwise_leaf(x, lo, n)
    f_lo = np.empty(64, np.int64)      # frames: segment and stage (0: new, 1: left done,
    f_n = np.empty(64, np.int64)       # 2: both done)
    f_st = np.empty(64, np.int64)
    v = np.empty(64)                   # sums of finished segments
    sp = 0
    vp = 0
    f_lo[0] = lo
    f_n[0] = n
    f_st[0] = 0
    sp = 1
    while sp > 0:
        top = sp - 1
        m = f_n[top]
        if m <= 128:
            v[vp] = _pairwise_leaf(x, f_lo[top], m)
            vp += 1
            sp -= 1
            continue
        m2 = m // 2
        m2 -= m2 % 8
        st = f_st[top]
        if st == 0:
            f_st[top] = 1
            f_lo[sp] = f_lo[top]
            f_n[sp] = m2
            f_st[sp] = 0
            sp += 1
        elif st == 1:
            f_st[top] = 2
            f_lo[sp] = f_lo[top] + m2
            f_n[sp] = m - m2
            f_st[sp] = 0
            sp += 1
        else:
            right = v[vp - 1]
            left = v[vp - 2]
            vp -= 2
            v[vp] = left + right
            vp += 1
            sp -= 1
    return v[0]


@numba.njit(cache=True)
def _sum_last(x):
    """x.sum(-1) for a C-contiguous 2-D float64 array, as NumPy computes it."""
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = 0.0 + _pairwise(x[i], 0, x.shape[1])
    return out


def pairwise_sum(x: np.ndarray) -> np.ndarray:
    """``x.sum(-1)`` of a float64 array re-computed with the kernel's summation (for tests)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    return _sum_last(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1])


# --------------------------------------------------------------------------- digits

class DigitRule:
    """NumPy's digit floor((log s - np.log(m)) / log gamma) for every double m in [m_lo, s],
    as a threshold rule: digit(m) = d_s + #{q : m <= U[q]} (U descending), except at the
    doubles listed in exc_bits (sorted) whose digit is exc_digit. ``table[key - key0]`` is the
    rule's count at the largest double of each key (bits >> SHIFT)."""

    def __init__(self, s: float, gamma: float, m_lo: float):
        Ls, Lg = math.log(s), math.log(gamma)

        def digit(m: np.ndarray) -> np.ndarray:  # the reference's expression, on a fresh array
            return np.floor((Ls - np.log(np.ascontiguousarray(m, dtype=np.float64))) / Lg)

        sb = _bits(s)
        lb = min(_bits(m_lo), sb)
        d_s = int(digit(np.array([s]))[0])
        d_hi = int(digit(np.array([_float(lb)]))[0])
        K = max(0, d_hi - d_s)
        want = d_s + 1 + np.arange(K)          # threshold q: last double with digit >= want[q]
        lo = np.full(K, lb, np.int64)           # digit(lo) >= want (d_hi >= want)
        hi = np.full(K, sb, np.int64)           # digit(hi) = d_s < want
        while K and (hi - lo > 1).any():
            mid = lo + (hi - lo) // 2
            ge = digit(mid.view(np.float64)) >= want
            lo, hi = np.where(ge, mid, lo), np.where(ge, hi, mid)
        U = np.sort(lo)[::-1].copy()            # descending (sorting only matters if not monotone)
        exc_b, exc_d = [], []
        if K:
            span = np.arange(-WINDOW, WINDOW + 1, dtype=np.int64)
            w = np.clip((U[:, None] + span[None, :]).ravel(), lb, sb)
            exact = digit(w.view(np.float64)).astype(np.int64)
            rule = d_s + self._count(U, w)
            bad = exact != rule
            exc_b, first = np.unique(w[bad], return_index=True)
            exc_d = exact[bad][first]
        self.s, self.gamma, self.d_s, self.K = s, gamma, d_s, K
        self.lb, self.sb = lb, sb
        self.U = U
        self.exc_bits = np.asarray(exc_b, np.int64)
        self.exc_digit = np.asarray(exc_d, np.int64)
        self.key0 = lb >> SHIFT
        keys = np.arange(self.key0, (sb >> SHIFT) + 1, dtype=np.int64)
        top = np.minimum(((keys + 1) << SHIFT) - 1, sb)
        self.table = self._count(U, top).astype(np.int32)

    @staticmethod
    def _count(U: np.ndarray, m_bits: np.ndarray) -> np.ndarray:
        """#{q : m <= U[q]} for U descending (as bits)."""
        asc = U[::-1]
        return len(U) - np.searchsorted(asc, m_bits, side="left")

    def negative_above(self) -> float:
        """t0: the rule gives a magnitude m <= s a negative digit iff m > t0 (t0 = s when no
        digit is negative: NumPy's log(s) is then <= math.log(s))."""
        if self.d_s >= 0:
            return self.s
        q0 = -self.d_s - 1                  # U[q0]: last double with digit >= 0
        return _float(int(self.U[q0])) if q0 < self.K else 0.0

    def digits(self, m: np.ndarray) -> np.ndarray:
        """The rule's digit of each double m in [m_lo, s] (for tests)."""
        b = np.asarray(m, np.float64).view(np.int64)
        d = self.d_s + self._count(self.U, b)
        if len(self.exc_bits):
            i = np.clip(np.searchsorted(self.exc_bits, b), 0, len(self.exc_bits) - 1)
            hit = self.exc_bits[i] == b
            d = np.where(hit, self.exc_digit[i], d)
        return d


def _bits(x: float) -> int:
    return int(np.array([x], np.float64).view(np.int64)[0])


def _float(b: int) -> float:
    return float(np.array([b], np.int64).view(np.float64)[0])


@functools.lru_cache(maxsize=64)
def digit_rule(s: float, gamma: float, m_lo: float | None = None) -> DigitRule:
    """The (cached) digit rule of scale s and base gamma for magnitudes in [m_lo, s]
    (default m_lo = s 2^-100)."""
    return DigitRule(float(s), float(gamma), math.ldexp(s, -SPAN) if m_lo is None else float(m_lo))


@numba.njit(inline="always")
def _digit(mb, d_s, U, table, key0, exc_bits, exc_digit):
    c = table[(mb >> SHIFT) - key0]
    K = U.shape[0]
    while c < K and mb <= U[c]:
        c += 1
    d = d_s + c
    ne = exc_bits.shape[0]
    if ne > 0:
        i = np.searchsorted(exc_bits, mb)
        if i < ne and exc_bits[i] == mb:
            d = exc_digit[i]
    return d


# --------------------------------------------------------------------------- the greedy

@numba.njit(inline="always")
def _pool(mags, mbits, idx, cnt, neg, n, sg, r, out_mask, dig, cnt_buf, order, taken, vals,
          rule, exact, too_small):
    """Greedy digits of one pool. mags[0:cnt] (bits mbits): the magnitudes of its eligible
    coefficients (sign sg of the target, 0 < |p| <= s; in the fast path only those <= r, the
    others can never fit), in index order; idx: their indices; r = |target|; neg: some
    eligible |p| has a negative digit (the reference's walk then stops before taking any).
    Sets out_mask (all False on entry) at the taken indices and returns the sum of the taken
    coefficients sg * mags, over the length-n pool in NumPy's order."""
    d_s, U, table, key0, lb, exc_bits, exc_digit = rule
    if cnt == 0 or (neg and not exact):
        return 0.0
    dmin = 1 << 30
    dmax = -(1 << 30)
    for q in range(cnt):
        mb = mbits[q]
        if mb < lb:
            too_small[0] = True
            return 0.0
        d = _digit(mb, d_s, U, table, key0, exc_bits, exc_digit)
        dig[q] = d
        dmin = min(dmin, d)
        dmax = max(dmax, d)
    ntake = 0
    if exact:
        # the reference, literally: stable sort by decreasing |p|, then _walk
        neg = np.empty(cnt)
        for q in range(cnt):
            neg[q] = -mags[q]
        srt = np.argsort(neg, kind="mergesort")
        last = -1
        for qq in range(cnt):
            q = srt[qq]
            d = dig[q]
            if d < 0:
                break
            if d != last and mags[q] <= r:
                out_mask[idx[q]] = True
                r -= mags[q]
                last = d
                taken[ntake] = q
                ntake += 1
    elif dmin >= 0:
        # digits never increase with |p| (the largest |p| has the least digit; a negative one
        # stops the reference's walk at once). Walk the digits upwards: in each, the largest
        # |p| that fits (the first in index order among equal ones), as the sorted walk does.
        nb = dmax - dmin + 1          # <= K + 1 < len(cnt_buf)
        for g in range(nb + 1):
            cnt_buf[g] = 0
        for q in range(cnt):
            cnt_buf[dig[q] - dmin + 1] += 1
        for g in range(nb):
            cnt_buf[g + 1] += cnt_buf[g]
        for q in range(cnt):          # bucket by digit, stable
            g = dig[q] - dmin
            order[cnt_buf[g]] = q
            cnt_buf[g] += 1
        start = 0                     # cnt_buf[g] is now the end of bucket g
        for g in range(nb):
            end = cnt_buf[g]
            best = -1
            bm = -1.0
            for u in range(start, end):
                q = order[u]
                m = mags[q]
                better = (m <= r) & (m > bm)
                best = q if better else best
                bm = m if better else bm
            if best >= 0:
                out_mask[idx[best]] = True
                r -= bm
                taken[ntake] = best
                ntake += 1
            start = end
    if ntake == 0:
        return 0.0
    if ntake == 1:
        return 0.0 + sg * mags[taken[0]]
    if ntake == 2:   # one rounding, whatever the association
        return 0.0 + (sg * mags[taken[0]] + sg * mags[taken[1]])
    for u in range(ntake):
        q = taken[u]
        vals[idx[q]] = sg * mags[q]
    tot = 0.0 + _pairwise(vals, 0, n)
    for u in range(ntake):
        vals[idx[taken[u]]] = 0.0
    return tot


@numba.njit(parallel=True, cache=True)
def _solve_halves(W, a, b, s, rule, exact, t0, mask, sums, too_small):
    """Both halves of rows of one layer: pool (h, k, j) has coefficients b[h, t, k, j] a[h, t, j]
    (t < n) and target W[k, j] (h = 0) or -W[k, j] (h = 1). t0: magnitudes above t0 (and
    <= s) have a negative digit."""
    n = b.shape[1]
    rows = b.shape[2]
    d_in = b.shape[3]
    K = rule[1].shape[0]
    for hk in numba.prange(2 * rows):
        h = hk // rows
        k = hk - h * rows
        mags = np.empty((TILE_J, n))      # eligible magnitudes of TILE_J pools
        mbits = mags.view(np.int64)
        idx = np.empty((TILE_J, n), np.int32)
        cnt = np.zeros(TILE_J, np.int64)
        sg = np.empty(TILE_J)
        lim = np.empty(TILE_J)
        neg = np.zeros(TILE_J, np.bool_)
        dig = np.empty(n, np.int64)
        order = np.empty(n, np.int64)
        taken = np.empty(n, np.int64)
        vals = np.zeros(n)
        cnt_buf = np.empty(K + 3, np.int64)
        for j0 in range(0, d_in, TILE_J):
            tj = min(TILE_J, d_in - j0)
            for jj in range(tj):
                w = W[k, j0 + jj]
                if h == 1:
                    w = -w
                sg[jj] = 1.0 if w > 0 else (-1.0 if w < 0 else 0.0)
                lim[jj] = s if exact else min(s, abs(w))
                cnt[jj] = 0
                neg[jj] = False
            # form the coefficients input by input, keep the eligible ones (branch-free):
            # q = sg p is |p| when p has the target's sign, else <= 0 (or NaN)
            for t in range(n):
                for jj in range(tj):
                    p = b[h, t, k, j0 + jj] * a[h, t, j0 + jj]
                    q = p * sg[jj]
                    c = cnt[jj]
                    mags[jj, c] = q
                    idx[jj, c] = t
                    cnt[jj] = c + ((q > 0.0) & (q <= lim[jj]))
                    neg[jj] |= (q > t0) & (q <= s)
            for jj in range(tj):
                j = j0 + jj
                sums[h, k, j] = _pool(mags[jj], mbits[jj], idx[jj], cnt[jj], neg[jj], n, sg[jj],
                                      abs(W[k, j]), mask[h, k, j], dig, cnt_buf, order, taken,
                                      vals, rule, exact, too_small)


@numba.njit(parallel=True, cache=True)
def _solve_bias(c, beta, bb, s, rule, exact, t0, mask, sums, too_small):
    """The bias block: pool k has coefficients bb[t, k] beta[t] and target c[k]."""
    n = bb.shape[0]
    rows = bb.shape[1]
    K = rule[1].shape[0]
    for k in numba.prange(rows):
        mags = np.empty(n)
        mbits = mags.view(np.int64)
        idx = np.empty(n, np.int32)
        dig = np.empty(n, np.int64)
        order = np.empty(n, np.int64)
        taken = np.empty(n, np.int64)
        vals = np.zeros(n)
        cnt_buf = np.empty(K + 3, np.int64)
        w = c[k]
        sg = 1.0 if w > 0 else (-1.0 if w < 0 else 0.0)
        lim = s if exact else min(s, abs(w))
        cnt = 0
        neg = False
        for t in range(n):
            q = bb[t, k] * beta[t] * sg
            mags[cnt] = q
            idx[cnt] = t
            cnt += (q > 0.0) & (q <= lim)
            neg |= (q > t0) & (q <= s)
        sums[k] = _pool(mags, mbits, idx, cnt, neg, n, sg, abs(w), mask[k], dig, cnt_buf, order,
                        taken, vals, rule, exact, too_small)


@numba.njit(parallel=True, cache=True)
def _abs_min_positive(x):
    """Smallest nonzero finite |x| of a 2-D array (inf when none)."""
    rows = x.shape[0]
    part = np.full(rows, np.inf)
    for i in numba.prange(rows):
        m = np.inf
        for j in range(x.shape[1]):
            v = abs(x[i, j])
            if v > 0 and v < m:
                m = v
        part[i] = m
    return part.min() if rows else np.inf


def positive_min_product(*pairs) -> float:
    """A lower bound (exact in float64) on every nonzero |p| of the products p = x * y, for
    pairs (x, y) of arrays: min nonzero |x| times min nonzero |y|."""
    lo = np.inf
    for x, y in pairs:
        if x is None or y is None or x.size == 0 or y.size == 0:
            continue
        mx = _abs_min_positive(np.asarray(x, np.float64).reshape(-1, x.shape[-1]))
        my = _abs_min_positive(np.asarray(y, np.float64).reshape(-1, y.shape[-1]))
        lo = min(lo, mx * my)
    return lo


def solve_rows(W_rows: np.ndarray, c_rows: np.ndarray | None, a: np.ndarray, b: np.ndarray,
               beta: np.ndarray | None, bb: np.ndarray | None, s: float, gamma: float,
               *, exact_walk: bool = False):
    """Golden-ratio greedy digits of some output rows of one layer, as ``orseau.solve_layer``.

    W_rows [rows, d_in] and c_rows [rows] | None: the target rows (h = 0 targets W, h = 1
    targets -W); a [2, n, d_in]: the halves' mapped in-weight magnitudes; b [2, n, rows, d_in]:
    the mapped signed out-weights of these rows; beta [n], bb [n, rows]: the bias block
    (None without a bias); s: the layer's scale (``orseau.layer_scale`` of the whole layer);
    gamma: the digit base. Arrays may be any float64-convertible, any layout.

    Returns (mask bool [2, rows, d_in, n], sums float64 [2, rows, d_in], bias_mask bool
    [rows, n] | None, bias_sums float64 [rows] | None), identical to
    ``golden_greedy(coef_h, +-W, s, gamma)`` with coef_h = transpose(b[h] * a[h][:, None, :])
    and ``np.where(mask[h], coef_h, 0.0).sum(-1)`` (and the same for the bias block, coef =
    bb.T * beta). ``exact_walk`` forces the literal sort-and-walk path (same answers, slower).
    """
    # C-contiguous float64 everywhere: one compiled signature per kernel (a row chunk of a
    # bigger b is copied here; pass a contiguous one to avoid that)
    W = np.ascontiguousarray(W_rows, dtype=np.float64)
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    rows, d_in = W.shape
    n = a.shape[1]
    if a.shape != (2, n, d_in) or b.shape != (2, n, rows, d_in):
        raise ValueError(f"shapes: W {W.shape}, a {a.shape} (want (2, n, d_in)), b {b.shape} "
                         "(want (2, n, rows, d_in))")
    has_bias = c_rows is not None
    if has_bias:
        c = np.asarray(c_rows, dtype=np.float64)
        c = np.ascontiguousarray(c)
        beta = np.ascontiguousarray(beta, dtype=np.float64)
        bb = np.ascontiguousarray(bb, dtype=np.float64)
        if c.shape != (rows,) or beta.shape != (n,) or bb.shape != (n, rows):
            raise ValueError(f"bias shapes: c {c.shape}, beta {beta.shape}, bb {bb.shape}")
    s = float(s)
    gamma = float(gamma)
    if not gamma > 1 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number > 1, got {gamma}")
    if math.isinf(s):
        raise ValueError("the layer scale s must be finite")
    mask = np.zeros((2, rows, d_in, n), bool)
    sums = np.zeros((2, rows, d_in))
    bmask = np.zeros((rows, n), bool) if has_bias else None
    bsums = np.zeros(rows) if has_bias else None
    if not s > 0 or n == 0:
        return mask, sums, bmask, bsums
    m_lo = None
    for attempt in range(2):
        rule = digit_rule(s, gamma, m_lo)
        args = (np.int64(rule.d_s), rule.U, rule.table, np.int64(rule.key0), np.int64(rule.lb),
                rule.exc_bits, rule.exc_digit)
        exact = bool(exact_walk or len(rule.exc_bits))
        t0 = rule.negative_above() if not exact else s
        too_small = np.zeros(1, np.bool_)
        if rows and d_in:
            _solve_halves(W, a, b, s, args, exact, t0, mask, sums, too_small)
        if has_bias and rows:
            _solve_bias(c, beta, bb, s, args, exact, t0, bmask, bsums, too_small)
        if not too_small[0]:
            return mask, sums, bmask, bsums
        # some eligible |p| is below s 2^-100: widen the rule to the data's range and redo
        m_lo = max(positive_min_product((a, b), (beta, bb) if has_bias else (None, None)),
                   5e-324)
        mask[...] = False
        sums[...] = 0.0
        if has_bias:
            bmask[...] = False
            bsums[...] = 0.0
    raise AssertionError("digit rule does not cover the coefficients")  # unreachable


# --------------------------------------------------------------------------- the draws
# NumPy's SeedSequence (bit_generator.pyx), PCG64 (pcg64.h, XSL-RR 128/64) and
# Generator.uniform (low + (high - low) * next_double), for the streams of _common.stream.

_M32 = np.uint64(0xFFFFFFFF)
_INIT_A = np.uint64(0x43B0D7E5)
_MULT_A = np.uint64(0x931E8875)
_INIT_B = np.uint64(0x8B51F9DD)
_MULT_B = np.uint64(0x58F38DED)
_MIX_L = np.uint64(0xCA01F9DD)
_MIX_R = np.uint64(0x4973F715)
_PCG_MUL_HI = np.uint64(2549297995355413924)
_PCG_MUL_LO = np.uint64(4865540595714422341)
_U16 = np.uint64(16)
_U32 = np.uint64(32)
_U11 = np.uint64(11)
_U58 = np.uint64(58)
_U63 = np.uint64(63)
_U64 = np.uint64(64)
_U1 = np.uint64(1)
_U0 = np.uint64(0)


@intrinsic
def _umulhi(typingctx, x, y):
    """High 64 bits of the 128-bit product of two uint64."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))

    return sig, codegen


@numba.njit(inline="always")
def _hashmix(value, hc):
    """(mixed value, new hash constant), all mod 2^32."""
    value = (value ^ hc) & _M32
    hc = (hc * _MULT_A) & _M32
    value = (value * hc) & _M32
    value ^= value >> _U16
    return value, hc


@numba.njit(inline="always")
def _mix(x, y):
    r = ((_MIX_L * x) - (_MIX_R * y)) & _M32
    r ^= r >> _U16
    return r


@numba.njit(inline="always")
def _pcg_step(sh, sl, ih, il):
    lo = sl * _PCG_MUL_LO
    hi = _umulhi(sl, _PCG_MUL_LO) + sl * _PCG_MUL_HI + sh * _PCG_MUL_LO
    nl = lo + il
    carry = _U1 if nl < lo else _U0
    return hi + ih + carry, nl


@numba.njit(inline="always")
def _pcg_out(sh, sl):
    x = sh ^ sl
    rot = sh >> _U58
    return (x >> rot) | (x << ((_U64 - rot) & _U63))


@numba.njit(cache=True)
def _seeded_state(ent):
    """PCG64 state (hi, lo) and increment (hi, lo) of Generator(PCG64(SeedSequence(words)))
    for the uint32 entropy words ``ent`` (uint64 array)."""
    pool = np.empty(4, np.uint64)
    hc = _INIT_A
    ne = ent.shape[0]
    for i in range(4):
        v = ent[i] if i < ne else _U0
        pool[i], hc = _hashmix(v, hc)
    for i_src in range(4):
        for i_dst in range(4):
            if i_src != i_dst:
                hv, hc = _hashmix(pool[i_src], hc)
                pool[i_dst] = _mix(pool[i_dst], hv)
    for i_src in range(4, ne):
        for i_dst in range(4):
            hv, hc = _hashmix(ent[i_src], hc)
            pool[i_dst] = _mix(pool[i_dst], hv)
    # generate_state(4, uint64): 8 uint32 words cycling over the pool, paired little-endian
    words = np.empty(8, np.uint64)
    hb = _INIT_B
    for i in range(8):
        v = pool[i % 4]
        v = (v ^ hb) & _M32
        hb = (hb * _MULT_B) & _M32
        v = (v * hb) & _M32
        v ^= v >> _U16
        words[i] = v
    s0 = words[0] | (words[1] << _U32)
    s1 = words[2] | (words[3] << _U32)
    i0 = words[4] | (words[5] << _U32)
    i1 = words[6] | (words[7] << _U32)
    # pcg64_set_seed: state = (s0, s1) (high, low), inc = ((i0, i1) << 1) | 1; srandom_r
    ih = (i0 << _U1) | (i1 >> _U63)
    il = (i1 << _U1) | _U1
    sh, sl = _pcg_step(_U0, _U0, ih, il)
    nl = sl + s1
    carry = _U1 if nl < sl else _U0
    sh = sh + s0 + carry
    sl = nl
    sh, sl = _pcg_step(sh, sl, ih, il)
    return sh, sl, ih, il


@numba.njit(parallel=True, cache=True)
def _uniform_streams(prefix, ts, ks, size, low, span, round32, out):
    """out[i, r, :] = f32(stream(prefix..., ts[i], ks[r]).uniform(low, low + span, size))
    (without the f32 rounding when not round32)."""
    npre = prefix.shape[0]
    nt = ts.shape[0]
    nk = ks.shape[0]
    for q in numba.prange(nt * nk):
        i = q // nk
        r = q - i * nk
        ent = np.empty(npre + 2, np.uint64)
        for u in range(npre):
            ent[u] = prefix[u]
        ent[npre] = np.uint64(ts[i])
        ent[npre + 1] = np.uint64(ks[r])
        sh, sl, ih, il = _seeded_state(ent)
        for v in range(size):
            sh, sl = _pcg_step(sh, sl, ih, il)
            u = np.float64(_pcg_out(sh, sl) >> _U11) * (1.0 / 9007199254740992.0)
            x = low + span * u
            out[i, r, v] = np.float64(np.float32(x)) if round32 else x


def _words(x: int) -> list[int]:
    """SeedSequence's uint32 words of a non-negative int (little-endian; 0 -> [0])."""
    x = int(x)
    if x < 0:
        raise ValueError(f"seeds and stream keys must be >= 0, got {x}")
    out = [x & 0xFFFFFFFF]
    x >>= 32
    while x:
        out.append(x & 0xFFFFFFFF)
        x >>= 32
    return out


def uniform_streams(seed: int, key: tuple[int, ...], ts, ks, size: int, low: float,
                    high: float, round_f32: bool = True, mags=None, signed: bool = False,
                    out: np.ndarray | None = None) -> np.ndarray:
    """float64 [len(ts), len(ks), size]: entry [i, r] is
    ``f32(stream(seed, *key, ts[i], ks[r]).uniform(low, high, size))`` (the same numbers;
    ``round_f32=False``: the generator's doubles themselves). With ``mags`` (an
    ``orseau.Magnitudes``) they come mapped, ``mags(x)`` (or ``mags.signed(x)`` when
    ``signed``): by ``mags`` itself, on cache-sized pieces (``map_inplace``). ``out``: a
    C-contiguous float64 array of that shape to fill (and return) instead of a new one."""
    ts = np.asarray(ts, np.int64).reshape(-1)
    ks = np.asarray(ks, np.int64).reshape(-1)
    if (ts < 0).any() or (ks < 0).any() or (ts >= 2 ** 32).any() or (ks >= 2 ** 32).any():
        raise ValueError("stream indices must be in [0, 2^32)")
    prefix = np.array([w for v in (seed, *key) for w in _words(v)], np.uint64)
    span = float(high) - float(low)   # Generator.uniform: range = high - low
    shape = (len(ts), len(ks), int(size))
    if out is None:
        out = np.empty(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {shape}")
    if out.size:
        _uniform_streams(prefix, ts, ks, int(size), float(low), span, bool(round_f32), out)
        if mags is not None:
            map_inplace(mags.signed if signed else mags, out)
    return out


MAP_CHUNK = 1 << 16


def map_inplace(f, x: np.ndarray, chunk: int = MAP_CHUNK, threads: int | None = None):
    """x[...] = f(x) for an elementwise NumPy function f (e.g. ``Magnitudes.signed``), done on
    pieces of ``chunk`` elements (their temporaries stay in cache) spread over threads (NumPy
    releases the GIL). Elementwise, so the values are f(x)'s exactly. x: C-contiguous."""
    if not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("map_inplace needs a writeable C-contiguous array")
    flat = x.reshape(-1)
    starts = range(0, flat.size, chunk)

    def run(i0):
        flat[i0:i0 + chunk] = f(flat[i0:i0 + chunk])

    threads = threads or numba.get_num_threads()
    if threads <= 1 or len(starts) < 4:
        for i0 in starts:
            run(i0)
        return x
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, starts))
    return x


# stream kinds of pensia.py (key = seed, layer, kind, half, t, row)
_IN_W, _OUT_W, _BIAS_IN, _BIAS_OUT = range(4)


def draw_layer(d_in: int, n: int, has_bias: bool, seed: int, layer: int, rows: range,
               t0: int = 0, mags=None):
    """``pensia.draw_in`` and ``pensia.draw_out`` for samples t0 <= t < n, the same numbers:
    a [2, n - t0, d_in], beta [n - t0] | None, b [2, n - t0, len(rows), d_in],
    bb [n - t0, len(rows)] | None (uniforms, float32-rounded, as float64). With ``mags`` (an
    ``orseau.Magnitudes``) they come mapped as ``orseau.solve_layer`` maps them, the same
    numbers: mags(a), mags(beta), mags.signed(b), mags.signed(bb)."""
    ts = np.arange(t0, n)
    ks = np.arange(rows.start, rows.stop, rows.step or 1)
    a = np.empty((2, len(ts), d_in))
    b = np.empty((2, len(ts), len(ks), d_in))
    for h in range(2):
        uniform_streams(seed, (layer, _IN_W, h), ts, [0], d_in, 0.0, 1.0, mags=mags,
                        out=a[h].reshape(len(ts), 1, d_in))
        uniform_streams(seed, (layer, _OUT_W, h), ts, ks, d_in, -1.0, 1.0, mags=mags,
                        signed=True, out=b[h])
    beta = bb = None
    if has_bias:
        beta = uniform_streams(seed, (layer, _BIAS_IN, 0), ts, [0], 1, 0.0, 1.0,
                               mags=mags)[:, 0, 0]
        bb = uniform_streams(seed, (layer, _BIAS_OUT, 0), ts, ks, 1, -1.0, 1.0,
                             mags=mags, signed=True)[:, :, 0]
    return a, beta, b, bb
