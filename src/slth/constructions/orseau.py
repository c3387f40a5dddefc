"""Orseau, Hutter, Rivasplata (2020): hyperbolic weights, golden-ratio digits, batch sampling.

G per target layer W [d_out, d_in] (bias c optional) has the two layers of pensia.py: widen U,
where input j owns block j of 2n neurons (n with in-weight +a, n with -a) shared by all
outputs, plus, with a target bias, a bias block of n neurons keeping only their bias beta > 0;
and combine V, where output k has its own out-weight b into every block neuron. What differs is
what the papers differ in:

* Distribution. Every weight has a random sign (block in-weights take their half's sign, bias
  block biases are positive) and a magnitude from ``Magnitudes``: log-uniform on
  [w_min, w_max] ("hyperbolic": density proportional to 1/|w|), or with
  ``distribution="uniform"`` uniform on (0, w_max] (default w_max = 1: Pensia's G, same seed).
  The hyperbolic range is set per layer (``auto_range``) unless --w-min/--w-max fix it.
* Mask. Product weights: block neuron t with out-weight b makes the coefficient p = b a (a its
  in-weight magnitude), which adds to +W[k, j] (positive half) or to -W[k, j] (negative half).
  Golden-ratio decomposition: with the layer's scale s = max(|W|, |c|), coefficient p is in
  digit i = floor(log_gamma(s / |p|)), i.e. |p| in [s gamma^(-i-1), s gamma^(-i)]. For each
  target value w the same-sign coefficients are walked from the largest down and the first of
  each digit is taken when it still fits (|p| <= |w| - sum taken so far). When digits 1..k all
  hold a coefficient the error is <= s gamma^-k, for any gamma <= phi (default phi, or 3/2).
* Batch sampling. One pass of samples (the n in-weights of each half-block and their
  out-weights) serves every weight and every digit of the layer; nothing is drawn per weight.
  ``theory`` sizes it with the Chernoff-Hoeffding count ``batch_samples`` =
  ceil((2/c)(m + ln(k/delta))) for k digits each hit with probability >= c.

Orseau et al. give each target weight its own neurons; sharing an input's block among all
outputs, as Pensia does, keeps every (output, input) pair's n fresh products and needs d_out
times fewer neurons. Draws reuse pensia.py's streams (the uniform numbers behind every weight),
mapped through the magnitude distribution, so G at size n is a prefix of G at size n + 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np

from ..certify import Domain, bound_details
from ..errors import SlthError
from ..targets import MLP
from ..ticket import Layer, Ticket
from . import pensia
from ._common import Construction, f32, stream
from ._search import search_sizes

PHI = (1 + math.sqrt(5)) / 2
N_MAX = 4096
ROW_CHUNK_ELEMS = 4_000_000  # coefficients held at once (per half): bounds memory


@dataclass(frozen=True)
class Magnitudes:
    """Distribution of |w|: 'hyperbolic' (log-uniform on [w_min, w_max]) or 'uniform' (0, w_max]."""

    kind: str = "hyperbolic"
    w_min: float = 1e-3
    w_max: float = 1.0

    def __post_init__(self):
        if self.kind not in ("hyperbolic", "uniform"):
            raise SlthError(f"unknown distribution {self.kind!r}; use 'hyperbolic' or 'uniform'")
        if not (self.w_max > 0 and math.isfinite(self.w_max)):
            raise SlthError(f"--w-max must be a positive number, got {self.w_max}")
        if self.kind == "hyperbolic" and not 0 < self.w_min < self.w_max:
            raise SlthError(f"the hyperbolic range [{self.w_min:g}, {self.w_max:g}] is empty or "
                            "not positive; give 0 < --w-min < --w-max")

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Magnitudes from uniforms u in [0, 1] (inverse CDF), float32-rounded."""
        if self.kind == "uniform":
            return f32(self.w_max * u)
        return f32(self.w_min * (self.w_max / self.w_min) ** u)

    def signed(self, v: np.ndarray) -> np.ndarray:
        """Signed weights from uniforms v in [-1, 1]: sign(v) * magnitude(|v|)."""
        return np.sign(v) * self(np.abs(v))

    def product_cdf(self, z: float) -> float:
        """P(|a b| <= z) for independent magnitudes a, b."""
        if z <= 0:
            return 0.0
        if self.kind == "uniform":
            x = min(1.0, z / self.w_max ** 2)
            return x - x * math.log(x) if x > 0 else 0.0
        L = math.log(self.w_max / self.w_min)  # log|a b| is triangular on [2 ln w_min, 2 ln w_max]
        u = min(2 * L, max(0.0, math.log(z) - 2 * math.log(self.w_min)))
        return u * u / (2 * L * L) if u <= L else 1 - (2 * L - u) ** 2 / (2 * L * L)


def auto_range(s: float, t: float) -> tuple[float, float]:
    """Hyperbolic range for a layer of scale s (largest |weight|) and tolerance t < s.

    log|a b| is a triangle on [2 ln w_min, 2 ln w_max]; we centre it on the needed products
    [t, s] and make it twice as wide (w_min w_max = sqrt(s t), w_max / w_min = s / t), so the
    least likely digit still gets half the peak's mass. Measured best of the spreads we tried.
    """
    return t ** 0.75 * s ** -0.25, s ** 0.75 * t ** -0.25


def layer_magnitudes(target: MLP, eps: float | None, distribution: str = "hyperbolic",
                     w_min: float | None = None, w_max: float | None = None) -> list[Magnitudes]:
    """Each layer's distribution: the given range, or ``auto_range`` with the layer's scale and
    tolerance (``tolerance``; without eps, t = 1e-6 s). Uniform: (0, w_max], w_max = 1."""
    if distribution == "uniform":
        return [Magnitudes("uniform", 0.0, 1.0 if w_max is None else w_max)] * target.depth
    if w_min is not None or w_max is not None:
        return [Magnitudes(distribution, w_min if w_min is not None else 1e-3,
                           w_max if w_max is not None else 1.0)] * target.depth
    out = []
    for i, (W, c) in enumerate(zip(target.weights, target.biases)):
        s = layer_scale(W, c) or 1.0
        t = min(tolerance(target, eps)[i], s / 2) if eps else 1e-6 * s
        out.append(Magnitudes(distribution, *auto_range(s, t)))
    return out


def layer_scale(W: np.ndarray, c: np.ndarray | None) -> float:
    """s = the largest |weight| or |bias| of the layer: digits are powers of gamma below s."""
    return float(max(np.abs(W).max(initial=0.0), 0.0 if c is None else np.abs(c).max(initial=0.0)))


def batch_samples(m: int, k: int, c: float, delta: float) -> int:
    """Samples M that fill k disjoint categories, each hit with probability >= c, with m
    samples each, with probability >= 1 - delta: ceil((2/c)(m + ln(k/delta)))."""
    return math.ceil((2 / c) * (m + math.log(k / delta)))


def golden_greedy(p: np.ndarray, target: np.ndarray, s: float, gamma: float) -> np.ndarray:
    """Greedy digit choice. p [..., n] signed coefficients, target [...]; returns the mask
    [..., n]: per target, at most one coefficient per digit, largest first, taken if it fits."""
    if not s > 0:
        return np.zeros(p.shape, bool)
    mag = np.abs(p)
    ok = (np.sign(p) == np.sign(target)[..., None]) & (mag > 0) & (mag <= s)
    digit = np.where(ok, np.floor((math.log(s) - np.log(np.where(ok, mag, s))) / math.log(gamma)), -1)
    order = np.argsort(np.where(ok, -mag, 1.0), axis=-1, kind="stable")
    n = p.shape[-1]
    take = _walk(np.take_along_axis(mag, order, -1).reshape(-1, n),
                 np.take_along_axis(digit, order, -1).reshape(-1, n).astype(np.int64),
                 np.abs(target).astype(np.float64).ravel())
    mask = np.zeros(p.shape, bool)
    np.put_along_axis(mask, order, take.reshape(p.shape), -1)
    return mask


@numba.njit(cache=True)
def _walk(mag, digit, rest):
    """Rows of coefficients sorted by decreasing size (ineligible last, digit -1): take the
    first of each digit that fits the rest."""
    take = np.zeros(mag.shape, np.bool_)
    for row in range(mag.shape[0]):
        r, last = rest[row], -1
        for q in range(mag.shape[1]):
            d = digit[row, q]
            if d < 0:
                break
            if d != last and mag[row, q] <= r:
                take[row, q] = True
                r -= mag[row, q]
                last = d
    return take


_DRAWS: dict = {}
CACHE_ELEMS = 20_000_000


def draws(d_in: int, d_out: int, n: int, has_bias: bool, seed: int, layer: int, rows: range):
    """pensia.py's uniform draws for block size n: a [2, n, d_in], beta [n] | None,
    b [2, n, len(rows), d_in], bb [n, len(rows)] | None. Small layers are cached and extended
    (streams are per sample t, so size n is a prefix of size n + 1): size searches draw once."""
    if 2 * n * d_out * d_in > CACHE_ELEMS:
        a, beta = pensia.draw_in(d_in, n, has_bias, seed, layer)
        return (a, beta, *pensia.draw_out(rows, d_in, n, has_bias, seed, layer))
    key = (seed, layer, d_in, d_out, has_bias)
    have = _DRAWS.get(key)
    n0 = 0 if have is None else have[0].shape[1]
    if n0 < n:
        def more(kind, h, k, size):
            return np.stack([f32(stream(seed, layer, kind, h, t, k).uniform(*size))
                             for t in range(n0, n)])
        a = np.stack([more(pensia.IN_W, h, 0, (0.0, 1.0, d_in)) for h in range(2)])
        b = np.stack([np.stack([more(pensia.OUT_W, h, k, (-1.0, 1.0, d_in)) for k in range(d_out)], 1)
                      for h in range(2)])
        beta = more(pensia.BIAS_IN, 0, 0, (0.0, 1.0)) if has_bias else None
        bb = (np.stack([more(pensia.BIAS_OUT, 0, k, (-1.0, 1.0)) for k in range(d_out)], 1)
              if has_bias else None)
        if have is not None:
            a, b = np.concatenate([have[0], a], 1), np.concatenate([have[2], b], 1)
            if has_bias:
                beta, bb = np.concatenate([have[1], beta]), np.concatenate([have[3], bb])
        if len(_DRAWS) > 16:
            _DRAWS.clear()
        _DRAWS[key] = have = (a, beta, b, bb)
    a, beta, b, bb = have
    r = slice(rows.start, rows.stop)
    return (a[:, :n], None if beta is None else beta[:n], b[:, :n, r],
            None if bb is None else bb[:n, r])


def solve_layer(W: np.ndarray, c: np.ndarray | None, n: int, seed: int, layer: int,
                mags: Magnitudes, gamma: float = PHI) -> pensia.LayerSolution:
    """Draw one target layer's blocks at size n and choose every weight's digits."""
    d_out, d_in = W.shape
    s = layer_scale(W, c)
    step = max(1, ROW_CHUNK_ELEMS // max(1, d_in * n))
    parts = []
    for r0 in range(0, d_out, step):
        rows = range(r0, min(d_out, r0 + step))
        a_raw, beta_raw, b_raw, bb_raw = draws(d_in, d_out, n, c is not None, seed, layer, rows)
        a, b = mags(a_raw), mags.signed(b_raw)
        mask = np.zeros((2, len(rows), d_in, n), bool)
        sums = np.zeros((2, len(rows), d_in))
        for h in range(2):
            coef = np.transpose(b[h] * a[h][:, None, :], (1, 2, 0))  # [rows, d_in, n]
            target = W[r0:rows.stop] if h == 0 else -W[r0:rows.stop]
            mask[h] = golden_greedy(coef, target, s, gamma)
            sums[h] = np.where(mask[h], coef, 0.0).sum(-1)
        part = pensia.LayerSolution(n, a, b, mask, sums)
        if c is not None:
            beta, bb = mags(beta_raw), mags.signed(bb_raw)
            coef = bb.T * beta[None, :]  # [rows, n]
            part.beta, part.bb = beta, bb
            part.bias_mask = golden_greedy(coef, c[r0:rows.stop], s, gamma)
            part.bias_sums = np.where(part.bias_mask, coef, 0.0).sum(-1)
        parts.append(part)
    return pensia.merge_rows(parts)


def assemble_layers(sol: pensia.LayerSolution, seed: int, layer: int, mags: Magnitudes):
    """G's widen and combine layers: pensia's layout, with the pruned filler weights (off-block
    in-weights, biases outside the bias block) mapped through ``mags`` like every other draw."""
    U, V = pensia.assemble_layers(sol, seed, layer)
    n = sol.n
    d_in = U.shape[1]
    block = np.zeros(U.shape, bool)
    block[np.arange(2 * n * d_in), np.repeat(np.arange(d_in), 2 * n)] = True
    U.weight[~block] = mags.signed(U.weight[~block].astype(np.float64))
    if U.bias is not None:
        fill = np.arange(U.shape[0]) < 2 * n * d_in
        U.bias[fill] = mags.signed(U.bias[fill].astype(np.float64))
    return U, V


def g_params(dims: list[int], ns: list[int], has_bias: list[bool]) -> int:
    """Random parameters of G for block sizes ns (same layout as pensia)."""
    total = 0
    for i, n in enumerate(ns):
        m = 2 * n * dims[i] + (n if has_bias[i] else 0)
        total += m * dims[i] + (m if has_bias[i] else 0) + dims[i + 1] * m
    return total


def construct(target: MLP, *, n: int | list[int] | None = None, eps: float | None = None,
              domain: Domain | None = None, seed: int = 0, distribution: str = "hyperbolic",
              gamma: float = PHI, w_min: float | None = None, w_max: float | None = None,
              delta: float = 0.1, sizing: str = "search", n_max: int = N_MAX,
              progress=None) -> Construction:
    """Build Orseau et al.'s ticket for ``target``.

    Give ``n`` (samples per half-block, one int or one per layer) or ``eps``. With ``eps`` and
    ``sizing="search"`` n is the smallest size whose certified bound on ``domain`` is <= eps
    (uniform first, then lowered per layer); with ``sizing="theory"`` it is the batch-sampling
    size of ``theory`` (enough w.p. 1 - delta for targets meeting the theorems' assumptions).
    """
    domain = domain or Domain()
    gamma = check_gamma(gamma)
    if (n is None) == (eps is None):
        raise SlthError("give exactly one of --n (samples per half-block) or --eps")
    if eps is not None and not eps > 0:
        raise SlthError(f"eps must be > 0, got {eps}")
    if sizing not in ("search", "theory"):
        raise SlthError(f"--sizing must be 'search' or 'theory', got {sizing!r}")
    if not 0 < delta < 1:
        raise SlthError(f"--delta must be in (0, 1), got {delta}")
    mags = layer_magnitudes(target, eps, distribution, w_min, w_max)
    L = target.depth
    say = progress or (lambda msg: None)
    effs: dict[tuple[int, int], object] = {}

    def eff(i: int, k: int):
        if (i, k) not in effs:
            say(f"layer {i + 1}: golden-ratio digits at n = {k}")
            effs[(i, k)] = solve_layer(target.weights[i], target.biases[i], k, seed, i, mags[i],
                                       gamma).effective()
        return effs[(i, k)]

    def bound(ns) -> float:
        return bound_details(target, [eff(i, k) for i, k in enumerate(ns)], domain)["certified_bound"]

    th = None
    t0 = time.perf_counter()
    if n is not None:
        ns = [n] * L if isinstance(n, int) else list(n)
        if len(ns) != L:
            raise SlthError(f"--n gave {len(ns)} sizes for a target of {L} layers")
        if any(not 1 <= k <= n_max for k in ns):
            raise SlthError(f"sizes must be between 1 and {n_max}, got {ns}")
    else:
        th = theory(target, eps, gamma=gamma, delta=delta, mags=mags)
        if sizing == "theory":
            ns = th["theory_n_per_layer"]
            if any(k is None or k > n_max for k in ns):
                raise SlthError(f"the batch-sampling size {ns} exceeds {n_max} samples per "
                                "half-block (some digit is almost never hit); use --sizing "
                                "search, a larger --eps or another range (--w-min/--w-max)")
        else:
            def fail():
                raise SlthError(f"eps={eps:g} is not reachable with <= {n_max} samples per "
                                f"half-block (certified bound there: {bound([n_max] * L):.3g}); "
                                "ask for a larger --eps or a smaller domain")
            order = sorted(range(L), key=lambda i: -target.weights[i].size)
            ns = search_sizes(L, lambda ks: bound(ks) <= eps, 8, n_max, order, on_fail=fail)
    search_s = time.perf_counter() - t0
    say("assembling G and the masks")
    layers: list[Layer] = []
    sols = []
    for i, k in enumerate(ns):
        sol = solve_layer(target.weights[i], target.biases[i], k, seed, i, mags[i], gamma)
        sols.append(sol)
        layers.extend(assemble_layers(sol, seed, i, mags[i]))
    if th is None:  # n given: the theory at the error this ticket certifies
        th = theory(target, bound_details(target, [s.effective() for s in sols],
                                          domain)["certified_bound"], gamma=gamma, delta=delta,
                    mags=mags)
    max_err = max(max(float(np.abs(s.sums[0] - W).max(initial=0)),
                      float(np.abs(s.sums[1] + W).max(initial=0)),
                      float(np.abs(s.bias_sums - c).max()) if c is not None else 0.0)
                  for s, W, c in zip(sols, target.weights, target.biases))
    options = {"distribution": distribution, "gamma": gamma, "delta": delta, "sizing": sizing,
               "range_per_layer": [[m.w_min, m.w_max] for m in mags]}
    ticket = Ticket(layers, {"method": "orseau", "seed": seed, "n_per_layer": ns, **options,
                             "target_dims": target.dims, "target_has_bias": target.has_bias,
                             "target_fingerprint": target.fingerprint()})
    widen = [layers[2 * i].shape[0] for i in range(L)]
    kept = [int(s.mask.sum() + (0 if s.bias_mask is None else s.bias_mask.sum())) for s in sols]
    most = [int(max(s.mask.sum(-1).max(initial=0),
                    0 if s.bias_mask is None else s.bias_mask.sum(-1).max(initial=0))) for s in sols]
    info = {
        "method": "orseau", **options,
        "n_per_layer": ns,
        "digits_used_per_layer": most,
        "neurons_per_target_weight": sum(widen) / max(1, target.n_params),
        "kept_coefficients_per_target_weight": sum(kept) / max(1, target.n_params),
        "width_per_layer": ticket.widths,
        "max_weight_error": max_err,
        "search_seconds": search_s,
        "eps": eps,
        **th,
    }
    return Construction(ticket, info)


def check_gamma(gamma: float) -> float:
    if not 1 < gamma <= PHI + 1e-12:
        raise SlthError(f"--gamma must be in (1, phi = {PHI:.4f}] (base 2 leaves gaps the greedy "
                        f"digits cannot close), got {gamma:g}")
    return float(gamma)


def tolerance(target: MLP, eps: float) -> list[float]:
    """Per-weight tolerance of layer i: eps / (2 l d_{i-1}) (each target neuron's
    pre-activation within eps / 2l for inputs in [-1, 1]^d; errors compound to <= eps)."""
    return [eps / (2 * target.depth * d) for d in target.dims[:-1]]


def theory(target: MLP, eps: float, *, distribution: str = "hyperbolic", gamma: float = PHI,
           w_min: float | None = None, w_max: float | None = None, delta: float = 0.1,
           mags: list[Magnitudes] | None = None) -> dict:
    """The theorem's sizes for this target and distribution, beside ours.

    Per layer: k = ceil(log_gamma(s / t)) digits for tolerance t (``tolerance``); c = the
    least probability that one sample (a block neuron's product b a, sign included) lands in
    one of those digits; n = batch_samples(1, k, c, delta / P): each of the P (output, input,
    half) pools gets a coefficient in every digit. Also the slides' per-layer batch
    M = batch_samples(m, k, c, delta / l) of Orseau's own layout (one neuron per sample, m =
    the layer's weights).
    """
    mags = mags or layer_magnitudes(target, eps, distribution, w_min, w_max)
    L = target.depth
    pools = sum(2 * W.size + (0 if c is None else c.size) for W, c in zip(target.weights, target.biases))
    ks, cs, n_th, m_th = [], [], [], []
    for i, t in enumerate(tolerance(target, eps)):
        W, c = target.weights[i], target.biases[i]
        s = layer_scale(W, c)
        k = max(1, math.ceil(math.log(s / t) / math.log(gamma))) if s > t else 0
        probs = [0.5 * (mags[i].product_cdf(s * gamma ** -j) - mags[i].product_cdf(s * gamma ** (-j - 1)))
                 for j in range(1, k + 1)]
        cmin = min(probs, default=1.0)
        ok = cmin > 0 and k > 0
        m = W.size + (0 if c is None else c.size)
        ks.append(k)
        cs.append(cmin)
        n_th.append(batch_samples(1, k, cmin, delta / pools) if ok else (1 if k == 0 else None))
        m_th.append(batch_samples(m, k, cmin, delta / L) if ok else None)
    has_b = [c is not None for c in target.biases]
    return {"theory_n_per_layer": n_th, "theory_k_per_layer": ks, "theory_c_per_layer": cs,
            "theory_samples_per_layer": m_th,
            "theory_random_params": g_params(target.dims, n_th, has_b) if None not in n_th else None,
            "theory_tolerance_per_layer": tolerance(target, eps),
            "theory_note": "n = ceil((2/c)(1 + ln(k P / delta))) per half-block (batch sampling "
                           "over k digits, c = least digit probability); samples_per_layer = "
                           "the slides' M = ceil((2/c)(m + ln(k l / delta))), one neuron per "
                           "sample, m = weights of the layer"}
