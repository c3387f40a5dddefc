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
from .base import Size, TargetLayer, option, register
from .blocks import BlockMethod, draw_in

N_MAX = 32          # the width study's and neuron study's largest block size


@dataclass(frozen=True)
class Settings:
    prune_dead: bool = option(False, "pensia: drop the negative halves of hidden layers (their "
                                     "post-ReLU inputs make them output 0).")


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

    def theory(self, target, eps: float) -> dict:
        """The theorem's block size per layer and G's size at that block size."""
        from .base import target_layers
        layers = target_layers(target)
        ns = [theory_n(L.d_in, L.d_out, target.depth, eps) for L in layers]
        return {"theory_n_per_layer": ns, "theory_random_params": self.g_params(target, ns),
                "theory_note": "n_i = ceil(log2(2 l d_{i-1} d_i / eps)) per half-block (Theorem "
                               "1's per-weight tolerance eps/(2 l d_in d_out), C = 1)"}


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
                prune_dead: bool = False, threads: int | None = None) -> LayerSolution:
    """Solve every SubsetSum of one MLP layer at block size n (all rows in one chunk)."""
    spec = TargetLayer(layer, np.asarray(W, np.float64), c, W.shape[0])
    return LayerSolution(n, Pensia(prune_dead=prune_dead).solve(spec, n, seed, threads=threads))


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
