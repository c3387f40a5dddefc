"""Pensia et al. (2020): every target weight is a SubsetSum over random products.

G is Pensia's block layout (``blocks.py``): for target layer W [d_out, d_in] (bias c optional),
a widen layer where input j owns a block of 2n neurons (n with in-weight +a, n with -a,
a ~ Uniform(0, 1]; G's weights are Uniform[-1, 1] conditioned on the sign of each half) shared by
all outputs, plus a bias block of n neurons keeping only their bias beta ~ Uniform(0, 1]; and a
combine layer where output k has its own out-weight b ~ Uniform[-1, 1] into every block neuron.

The mask (``choose``): W[k, j] is one SubsetSum over the coefficients b a of block j's positive
half (target W[k, j]) and one over its negative half (target -W[k, j]); c_k one over the bias
block's b beta. Each is solved exactly - the subset with the minimum error - by
``slth.subsetsum``. The mask keeps the block-diagonal in-links of used neurons and the chosen
out-links; every other weight of G is drawn but pruned. ``prune_dead`` drops the negative halves
of hidden layers, whose inputs are post-ReLU (those neurons always output 0).

Theory (Theorem 1): block size n = O(log(d_in d_out l / eps)) per half, each weight within
eps / (2 l d_in d_out); ``theory`` reports n = ceil(log2(2 l d_in d_out / eps)) (C = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..subsetsum import solve
from . import blocks
from ._common import f32, stream
from .base import Size, TargetLayer, check, option, register, target_layers
from .blocks import OUT_W, BlockMethod, draw_in

N_MAX = 32          # the width study's and neuron study's largest block size


@dataclass(frozen=True)
class Settings:
    prune_dead: bool = option(False, "pensia: drop the negative halves of hidden layers (their "
                                     "post-ReLU inputs make them output 0).")
    coverage: bool = option(True, "pensia: give an input's block more neurons (up to 40) where "
                                  "its same-sign products cannot cover one of its weights "
                                  "with the margin below.")
    coverage_margin: float = option(0.5, "pensia: a weight w counts as covered when its "
                                         "same-sign products sum to >= (1 + margin) |w|.")

    def __post_init__(self):
        check(self.coverage_margin >= 0,
              f"--coverage-margin must be >= 0, got {self.coverage_margin}")


@register("pensia")
class Pensia(BlockMethod):
    Settings = Settings
    size = Size("n", "n_per_layer", 1, 40, 8, "block size per half")
    work = "SubsetSum"

    def halves(self, layer: TargetLayer) -> tuple:
        return (0, 1) if layer.index == 0 or not self.settings.prune_dead else (0,)

    def choose(self, layer, coef, target, threads=None):
        r = solve(coef, target, threads=threads)
        return r.mask, r.sums

    def plan(self, layer: TargetLayer, n: int, seed: int) -> dict | None:
        """Coverage: the block size of each input channel, from the actual draws. A weight w is
        covered when its block's same-sign products b a (its half: +w or -w) sum to at least
        (1 + margin) |w|; a channel's block grows (the next samples of the same streams) until
        all its weights are covered, or to the largest size."""
        if not self.settings.coverage:
            return None
        return coverage_plan(layer, n, seed, self.halves(layer), self.settings.coverage_margin,
                             self.size.hi)

    def plan_info(self, target, sizes, plans) -> dict:
        if not self.settings.coverage:
            return {}
        base = self.g_params(target, sizes)
        extra = sum(t.params for L, k, p in zip(target_layers(target), sizes, plans)
                    for t in self.tensors(L, k, plan=p)) - base
        return {"coverage": {
            "margin": self.settings.coverage_margin,
            "uncovered_before": sum(p["uncovered_before"] for p in plans),
            "uncovered_after": sum(p["uncovered_after"] for p in plans),
            "channels_grown_per_layer": [int((np.asarray(p["n_c"]) > k).sum())
                                         for p, k in zip(plans, sizes)],
            "bias_block_per_layer": [p["n_bias"] for p in plans],
            "largest_block_per_layer": [int(max(p["n_c"], default=k)) for p, k in
                                        zip(plans, sizes)],
            "extra_random_params": int(extra),
            "extra_random_params_fraction": extra / max(1, base)}}

    def theory(self, target, eps: float) -> dict:
        """The theorem's block size per layer and G's size at that block size."""
        from .base import target_layers
        layers = target_layers(target)
        ns = [theory_n(L.d_in, L.d_out, target.depth, eps) for L in layers]
        return {"theory_n_per_layer": ns, "theory_random_params": self.g_params(target, ns),
                "theory_note": "n_i = ceil(log2(2 l d_{i-1} d_i / eps)) per half-block (Theorem "
                               "1's per-weight tolerance eps/(2 l d_in d_out), C = 1)"}


def coverage_plan(layer: TargetLayer, n: int, seed: int, halves, margin: float,
                  n_max: int, chunk_elems: int = 4_000_000) -> dict:
    """Per-channel block sizes n_c >= n covering every weight with the margin (see
    ``Pensia.plan``), and how many (weight, half) pairs were uncovered at n and at n_c."""
    from .blocks import draw_out
    C, D, g = layer.channels, layer.d_in, layer.group
    chan = np.arange(D) // g
    a, beta = draw_in(C, n_max, layer.has_bias, seed, layer.index, n_max)
    need = np.full(C, n, np.int64)
    before = after = 0
    n_bias = n
    if layer.has_bias:     # the bias block: the same rule over b beta
        _, bb = draw_out(range(layer.d_out), 0, 0, True, seed, layer.index, n_max)
        p = np.maximum(0.0, np.sign(layer.c)[None] * bb * beta[:, None])     # [n_max, d_out]
        S = np.cumsum(p, axis=0)
        want = (1 + margin) * np.abs(layer.c)
        before += int((S[n - 1] < np.abs(layer.c)).sum())
        ok = S >= want[None]
        first = np.where(ok.any(0), ok.argmax(0) + 1, n_max)
        n_bias = int(max(n, first.max(initial=n)))
        after += int((S[n_bias - 1] < np.abs(layer.c)).sum())
    step = max(1, chunk_elems // max(1, 2 * n * D))
    for r0 in range(0, layer.d_out, step):
        rows = range(r0, min(layer.d_out, r0 + step))
        W = layer.W[r0:rows.stop]
        b, _ = draw_out(rows, D, n, False, seed, layer.index)
        for h in halves:
            v = W if h == 0 else -W
            want = (1 + margin) * np.abs(v)
            S = (np.maximum(0.0, np.sign(v)[None] * b[h] * a[h, :n][:, None, chan])).sum(0)
            bad = S < want
            before += int((S < np.abs(v)).sum())
            ks, js = np.nonzero(bad)
            for k in np.unique(ks):            # rows with a deficient weight: more samples
                cols = js[ks == k]
                s, t = S[k, cols], n
                while t < n_max and (s < want[k, cols]).any():
                    bt = f32(stream(seed, layer.index, OUT_W, h, t, rows[k]).uniform(-1.0, 1.0, D))
                    s = s + np.maximum(0.0, np.sign(v[k, cols]) * bt[cols] * a[h, t, chan[cols]])
                    t += 1
                    done = s >= want[k, cols]
                    np.maximum.at(need, chan[cols[done]], t)
                    cols, s = cols[~done], s[~done]
                if len(cols):
                    np.maximum.at(need, chan[cols], n_max)
                    after += int((s < np.abs(v[k, cols])).sum())
    return {"n_c": need.tolist(), "n_bias": n_bias, "uncovered_before": before,
            "uncovered_after": after}


def theory_n(d_in: int, d_out: int, depth: int, eps: float) -> int:
    """Block size (per half) Theorem 1's proof asks for: each weight within
    eps / (2 l d_in d_out), at one bit per coefficient (n = log2(2 l d_in d_out / eps), C = 1)."""
    return max(1, math.ceil(math.log2(2 * depth * d_in * d_out / eps)))


# ----------------------------------------------------------------------------- conveniences
@dataclass
class LayerSolution:
    """One whole layer solved at block size n: its effective form and the chosen sums
    (sums[0] approximates W, sums[1] approximates -W; bias_sums approximates c)."""

    n: int
    state: dict

    @property
    def sums(self) -> np.ndarray:
        return np.stack([self.state["pos"], self.state["neg"]])

    @property
    def bias_sums(self) -> np.ndarray:
        return self.state["bias"]

    def effective(self):
        from ..ticket.effective import EffectiveLayer
        return EffectiveLayer(self.state["pos"], self.state["neg"], self.state["bias"])


def solve_layer(W: np.ndarray, c: np.ndarray | None, n: int, seed: int, layer: int,
                prune_dead: bool = False, threads: int | None = None,
                coverage: bool = True) -> LayerSolution:
    """Solve every SubsetSum of one MLP layer at block size n (all rows in one chunk), with the
    layer's coverage plan (as ``construct`` does)."""
    spec = TargetLayer(layer, np.asarray(W, np.float64), c, W.shape[0])
    m = Pensia(prune_dead=prune_dead, coverage=coverage)
    return LayerSolution(n, m.solve(spec, n, seed, plan=m.plan(spec, n, seed), threads=threads))


def widen_weights(a: np.ndarray, beta: np.ndarray | None, seed: int, layer: int):
    """G's widen layer for ``draw_in``'s a [2, n, d_in] and beta: weights float32 [m, d_in]
    and biases float32 [m] or None."""
    ns = np.full(a.shape[2], a.shape[1], np.int64)
    rows = [U for _, U in blocks.widen_weight_rows(ns, a, 0 if beta is None else len(beta),
                                                    seed, layer)]
    return rows[0], blocks.widen_biases(beta, ns, seed, layer)


def widen_weight_rows(a: np.ndarray, has_bias: bool, seed: int, layer: int,
                      block: int | None = None):
    """``widen_weights``' weights, ``block`` rows at a time: yields (first row, rows)."""
    ns = np.full(a.shape[2], a.shape[1], np.int64)
    return blocks.widen_weight_rows(ns, a, a.shape[1] if has_bias else 0, seed, layer, block)


__all__ = ["Pensia", "Settings", "N_MAX", "theory_n", "solve_layer", "draw_in", "widen_weights",
           "widen_weight_rows"]


def construct(target, **kw):
    """This method's ticket for ``target`` (``slth.constructions.construct``)."""
    from . import construct as _construct
    return _construct(target, method="pensia", **kw)
