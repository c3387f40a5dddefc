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

import dataclasses
import math
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import SlthError
from ..targets import MLP
from ._common import f32
from .base import Size, check, option, register
from ._orseau_kernel import solve_rows
from .blocks import BlockMethod

PHI = (1 + math.sqrt(5)) / 2
N_MAX = 4096


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


def parse_gamma(text) -> float:
    """--gamma: "phi", "3/2" or a number."""
    t = str(text).strip().lower()
    if t == "phi":
        return PHI
    try:
        num, _, den = t.partition("/")
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        raise SlthError(f"--gamma must be phi, 3/2 or a number in (1, phi], got {text!r}") from None


@dataclass(frozen=True)
class Settings:
    distribution: str = option("hyperbolic", "orseau: magnitude distribution of G's weights.",
                               choices=("hyperbolic", "uniform"))
    gamma: float = option(PHI, "orseau: base of the golden-ratio digits (phi or 3/2).",
                          parse=parse_gamma, show="phi")
    w_min: float | None = option(None, "orseau: hyperbolic range [w-min, w-max] (default: set "
                                       "per layer from its scale and tolerance).")
    w_max: float | None = option(None, "orseau: see --w-min (uniform: 1).")
    sizing: str = option("search", "orseau with --eps: smallest size meeting eps, or the "
                                   "batch-sampling size of the theorem.",
                         choices=("search", "theory"))
    delta: float = option(0.1, "orseau, malach: failure probability of the theory sizes.")
    # resolved for a target by Orseau.configure (not options)
    range_per_layer: tuple | None = option(None, "", cli=False)
    scale_per_layer: tuple | None = option(None, "", cli=False)

    def __post_init__(self):
        check(self.distribution in ("hyperbolic", "uniform"),
              f"unknown distribution {self.distribution!r}; use 'hyperbolic' or 'uniform'")
        check_gamma(self.gamma)
        check(self.sizing in ("search", "theory"),
              f"--sizing must be 'search' or 'theory', got {self.sizing!r}")
        check(0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")
        if self.w_min is not None or self.w_max is not None:   # validates the range
            Magnitudes(self.distribution, 0.0 if self.distribution == "uniform" else
                       (self.w_min if self.w_min is not None else 1e-3),
                       self.w_max if self.w_max is not None else 1.0)


@register("orseau")
class Orseau(BlockMethod):
    """Golden-ratio digits over hyperbolic (or uniform) products on Pensia's layout."""

    Settings = Settings
    size = Size("n", "n_per_layer", 1, N_MAX, 8, "samples per half-block", growth="double")
    work = "golden-ratio digit"

    def configure(self, target, eps, domain=None):
        s = self.settings
        mags = layer_magnitudes(target, eps, s.distribution, s.w_min, s.w_max)
        scales = [layer_scale(W, c) for W, c in zip(target.weights, target.biases)]
        return type(self)(dataclasses.replace(
            s, range_per_layer=tuple((m.w_min, m.w_max) for m in mags),
            scale_per_layer=tuple(scales)))

    def mags(self, i: int) -> Magnitudes:
        s = self.settings
        lo, hi = s.range_per_layer[i]
        return Magnitudes(s.distribution, lo, hi)

    def magnitudes(self, layer):
        m = self.mags(layer.index)
        return m, m.signed

    def masks(self, layer, ns, a, beta, b, bb, threads=None):
        """The compiled greedy (``_orseau_kernel.solve_rows``, bit for bit ``golden_greedy``),
        over all halves, rows and inputs at once, without the [rows, D, n] temporaries."""
        n = a.shape[1]
        if (ns != n).any() or (beta is not None and len(beta) != n):
            return super().masks(layer, ns, a, beta, b, bb, threads)
        chan = np.arange(layer.d_in) // layer.group
        mask, sums, bias_mask, bsums = solve_rows(
            layer.W, layer.c if layer.has_bias else None, a[:, :, chan], b, beta,
            None if bb is None else bb, self.settings.scale_per_layer[layer.index],
            self.settings.gamma)
        err = np.zeros(2)
        err[0] = max(float(np.abs(sums[0] - layer.W).max(initial=0.0)),
                     float(np.abs(sums[1] + layer.W).max(initial=0.0)))
        if bias_mask is not None:
            err[1] = float(np.abs(bsums - layer.c).max(initial=0.0))
        return mask, bias_mask, err

    def choose(self, layer, coef, target, threads=None):
        mask = golden_greedy(coef, target, self.settings.scale_per_layer[layer.index],
                             self.settings.gamma)
        return mask, np.where(mask, coef, 0.0).sum(-1)

    def describe(self) -> dict:
        s = self.settings
        out = {"distribution": s.distribution, "gamma": s.gamma, "delta": s.delta,
               "sizing": s.sizing}
        if s.range_per_layer is not None:
            out["range_per_layer"] = [list(r) for r in s.range_per_layer]
        return out

    def sizes_for(self, target, eps):
        if self.settings.sizing != "theory":
            return None
        ns = self.theory(target, eps)["theory_n_per_layer"]
        if any(k is None or k > N_MAX for k in ns):
            raise SlthError(f"the batch-sampling size {ns} exceeds {N_MAX} samples per "
                            "half-block (some digit is almost never hit); use --sizing "
                            "search, a larger --eps or another range (--w-min/--w-max)")
        return ns

    def info(self, target, sizes, reduced) -> dict:
        from .base import target_layers
        widen = sum(t.shape[0] for L, k in zip(target_layers(target), sizes)
                    for t in self.tensors(L, k) if t.role == "widen")
        return {"digits_used_per_layer": [int(r["max_kept"][0]) for r in reduced],
                "neurons_per_target_weight": widen / max(1, target.n_params),
                "kept_coefficients_per_target_weight":
                    sum(int(r["sum_kept"][0]) for r in reduced) / max(1, target.n_params)}

    def theory(self, target, eps):
        s = self.settings
        mags = [self.mags(i) for i in range(target.depth)]
        out = theory(target, eps, gamma=s.gamma, delta=s.delta, mags=mags)
        ns = out["theory_n_per_layer"]
        out["theory_random_params"] = self.g_params(target, ns) if None not in ns else None
        return out



def check_gamma(gamma: float) -> float:
    if not 1 < gamma <= PHI + 1e-12:
        raise SlthError(f"--gamma must be in (1, phi = {PHI:.4f}] (base 2 leaves gaps the greedy "
                        f"digits cannot close), got {gamma:g}")
    return float(gamma)


def tolerance(target: MLP, eps: float) -> list[float]:
    """Per-weight tolerance of layer i: eps / (2 l d_{i-1}) (each target neuron's
    pre-activation within eps / 2l for inputs in [-1, 1]^d; errors compound to <= eps;
    d_{i-1}: the layer's fan-in)."""
    return [eps / (2 * target.depth * W[0].size) for W in target.weights]


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
    pools = sum(2 * W.size + (0 if c is None else c.size) for W, c in zip(target.weights,
                                                                         target.biases))
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
    return {"theory_n_per_layer": n_th, "theory_k_per_layer": ks, "theory_c_per_layer": cs,
            "theory_samples_per_layer": m_th,
            "theory_tolerance_per_layer": tolerance(target, eps),
            "theory_note": "n = ceil((2/c)(1 + ln(k P / delta))) per half-block (batch sampling "
                           "over k digits, c = least digit probability); samples_per_layer = "
                           "the slides' M = ceil((2/c)(m + ln(k l / delta))), one neuron per "
                           "sample, m = weights of the layer"}


def solve_layer(W: np.ndarray, c: np.ndarray | None, n: int, seed: int, layer: int,
                mags: Magnitudes, gamma: float = PHI):
    """One whole MLP layer at size n (all rows in one chunk); ``.effective()`` and ``.sums``."""
    from .base import TargetLayer
    from .pensia import LayerSolution
    m = Orseau(dataclasses.replace(Settings(distribution=mags.kind, gamma=gamma),
                                   range_per_layer=((mags.w_min, mags.w_max),) * (layer + 1),
                                   scale_per_layer=(layer_scale(W, c),) * (layer + 1)))
    return LayerSolution(n, m.solve(TargetLayer(layer, np.asarray(W, np.float64), c, W.shape[0]),
                                    n, seed))


register("orseau-uniform", Orseau, distribution="uniform")


def construct(target, **kw):
    """This method's ticket for ``target`` (``slth.constructions.construct``)."""
    from . import construct as _construct
    return _construct(target, method="orseau", **kw)
