"""Malach, Yehudai, Shalev-Shwartz, Shamir (2020): every target weight is one pair of neurons.

G per target layer W [d_out, d_in] (bias c optional), every weight Uniform[-1, 1]:

* widen U [d_out K, d_in]: target neuron k owns a gadget of K neurons (rows k K .. k K + K - 1);
  gadget neuron r has in-weights u_r [d_in] from every input (and a bias beta_r when the target
  layer has biases).
* combine V [d_out, d_out K]: neuron r's out-weight into its own output k is A_r = V[k, k K + r];
  its out-weights into the other outputs are drawn and pruned.

The neuron gadget of the paper, for one target neuron relu(w . x): every input i keeps two gadget
neurons that serve input i only - one with u_{r,i} > 0 and A_r u_{r,i} ~ w_i, one with
u_{r,i} < 0 and A_r |u_{r,i}| ~ -w_i. Since A relu(u x) = sign(A) relu(|A| u x) these are
Malach's j1(i), j2(i) with sign(A_j1) != sign(A_j2), and together they compute w_i x_i
(effective form: the first adds to pos[k, i], the second to neg[k, i]). A target bias is one more
slot, served by a neuron that keeps only its bias beta > 0 (relu(beta) = beta). Layers are n such
gadgets side by side; G stacks the layers.

Mask. A neuron serves at most one slot. Every (neuron, slot) candidate that beats dropping the slot
(error |w|) is considered, each slot's 8 closest, and candidates are taken in order of increasing
error (greedy min-error matching; a slot nobody serves better than 0 is dropped).

Tolerance and size. The paper asks every pair within eps/(2d) (one neuron, ||x||_2 <= 1); the
theory column uses eps/(2 l d_{i-1}) and the gadget size K that finds all pairs within it
w.p. 1 - delta. We fix no tolerance a priori: each weight takes its closest pair, and K grows
(doubling then bisection, uniform over layers then per layer) until the certified bound of the
whole network on the domain is <= eps. The per-weight tolerance this yields - the largest pair
error - is max_weight_error. The closest of K products is about 1/K away from w, so K grows like
1/eps: a G of more than ``max_params`` parameters is refused with the width it would need.

Draws: gadget k's neurons come in chunks of 1024 from stream (seed, layer, GADGET, k, chunk), so a
gadget of size K is a prefix of one of size K + 1; output k's pruned out-weights into the other
gadgets from stream (seed, layer, FILL_V, 0, k), so every chunk of outputs is written on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import SlthError
from ..targets import MLP
from ..ticket.effective import EffectiveLayer
from ._common import f32, stream
from .base import Method, Rows, Size, TargetLayer, Tensor, check, option, register

CHUNK = 1024
TOP = 8                       # closest neurons each slot considers
MAX_PARAMS = 100_000_000      # G's weights + masks: ~5 bytes per parameter
GADGET, FILL_V = 10, 11       # stream kinds


class TooLarge(SlthError):
    """G would not fit under max_params; ``params`` and ``widths`` are what it would need."""

    def __init__(self, msg: str, params: int, widths: list[int]):
        super().__init__(msg)
        self.params, self.widths = params, widths


def gadget_draws(d_in: int, K: int, has_bias: bool, seed: int, layer: int, k: int,
                 start: int = 0):
    """Neurons start..K-1 of gadget k: in-weights u [., d_in], out-weight A [.], bias beta [.]
    or None; float32-rounded Uniform[-1, 1]."""
    cols = d_in + 1 + int(has_bias)
    c0, c1 = start // CHUNK, -(-K // CHUNK)
    blk = np.concatenate([f32(stream(seed, layer, GADGET, k, c).uniform(-1.0, 1.0, (CHUNK, cols)))
                          for c in range(c0, c1)])[start - c0 * CHUNK:K - c0 * CHUNK]
    return blk[:, :d_in], blk[:, d_in], (blk[:, d_in + 1] if has_bias else None)


@numba.njit(cache=True)
def _greedy_match(cand_r, cand_s, n_slots, n_neurons):
    """Walk candidates (already in increasing error); give each slot its first free neuron."""
    chosen = np.full(n_slots, -1, np.int64)
    used = np.zeros(n_neurons, np.bool_)
    for c in range(cand_r.shape[0]):
        r, s = cand_r[c], cand_s[c]
        if chosen[s] < 0 and not used[r]:
            chosen[s] = r
            used[r] = True
    return chosen


def match_gadget(w: np.ndarray, c: float | None, K: int, seed: int, layer: int, k: int):
    """Slots of target neuron k: +w_i (slot i), -w_i (slot d_in + i), bias c (slot 2 d_in).
    Returns the chosen neuron of each slot (int, -1 = dropped) and what it makes (float)."""
    d_in = w.shape[0]
    tau = np.concatenate([w, -w] + ([[c]] if c is not None else []))  # what each slot must make
    e = v = np.zeros((0, tau.size))
    r = np.zeros((0, tau.size), np.int64)
    step = CHUNK * 64
    for r0 in range(0, K, step):  # running TOP closest per slot; memory bounded by the chunk
        u, A, beta = gadget_draws(d_in, min(K, r0 + step), c is not None, seed, layer, k, r0)
        prod = A[:, None] * np.abs(u)           # coefficient of neuron r for input i
        vc = np.concatenate([prod, prod] + ([(A * beta)[:, None]] if c is not None else []), 1)
        elig = np.concatenate([u > 0, u < 0] + ([(beta > 0)[:, None]] if c is not None else []), 1)
        e = np.concatenate([e, np.where(elig, np.abs(vc - tau), np.inf)])
        v = np.concatenate([v, vc])
        r = np.concatenate([r, np.broadcast_to(np.arange(r0, r0 + len(u))[:, None], vc.shape)])
        if len(e) > TOP:
            keep = np.argpartition(e, TOP - 1, axis=0)[:TOP]
            e, v, r = (np.take_along_axis(x, keep, 0) for x in (e, v, r))
    slot = np.broadcast_to(np.arange(tau.size), e.shape)
    ok = e < np.abs(tau)                        # better than dropping the slot
    order = np.lexsort((r[ok], slot[ok], e[ok]))
    chosen = _greedy_match(r[ok][order], slot[ok][order], tau.size, K)
    pick = (r == chosen) & (chosen >= 0)
    return chosen, np.where(pick, v, 0.0).sum(0)


@dataclass(frozen=True)
class Settings:
    delta: float = option(0.1, "orseau, malach: failure probability of the theory sizes.")
    max_params: int = option(MAX_PARAMS, "malach: refuse a G with more random parameters.")

    def __post_init__(self):
        check(0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")
        check(self.max_params >= 1, f"--max-params must be >= 1, got {self.max_params}")


@register("malach")
class Malach(Method):
    """Malach et al.'s pairs: one gadget of K neurons per target neuron."""

    Settings = Settings
    size = Size("K", "samples_per_layer", 1, 10 ** 12, 64, "gadget size K per target neuron",
                growth="power")
    work = "pairing"

    def tensors(self, layer: TargetLayer, K: int, plan=None) -> list[Tensor]:
        if layer.kind != "linear":
            raise SlthError(self._unrolled(layer, K))
        return [Tensor("widen", (layer.d_out * K, layer.d_in), layer.has_bias, per_row=K),
                Tensor("combine", (layer.d_out, layer.d_out * K), False, per_row=1)]

    def solve(self, layer: TargetLayer, K: int, seed: int, plan=None, threads=None) -> dict:
        res = [match_gadget(layer.W[i], None if layer.c is None else layer.c[i], K, seed,
                            layer.index, k) for i, k in enumerate(layer.rows)]
        chosen = np.stack([r[0] for r in res]).astype(np.int64)
        value = np.stack([r[1] for r in res])
        d_in = layer.d_in
        want = np.concatenate([layer.W, -layer.W] + ([layer.c[:, None]] if layer.has_bias
                                                      else []), 1)
        return {"chosen": chosen, "pos": value[:, :d_in], "neg": value[:, d_in:2 * d_in],
                "bias": value[:, 2 * d_in] if layer.has_bias else np.zeros(len(value)),
                "max_errors": np.array([float(np.abs(value - want).max(initial=0.0))])}

    def state_shapes(self, layer: TargetLayer, K: int, plan=None) -> dict:
        rows, d_in = len(layer.rows), layer.d_in
        return {"chosen": (rows, 2 * d_in + int(layer.has_bias)), "pos": (rows, d_in),
                "neg": (rows, d_in), "bias": (rows,), "max_errors": (1,)}

    def chunk_rows(self, layer: TargetLayer, K: int, seed: int, state: dict,
                   plan=None) -> dict[str, Rows]:
        d_in, rows = layer.d_in, len(layer.rows)
        Uw = np.empty((rows * K, d_in), np.float32)
        Um = np.zeros((rows * K, d_in), bool)
        Ub = np.empty(rows * K, np.float32) if layer.has_bias else None
        Ubm = np.zeros(rows * K, bool) if layer.has_bias else None
        Vw = np.empty((rows, layer.d_out * K), np.float32)
        Vm = np.zeros((rows, layer.d_out * K), bool)
        for i, k in enumerate(layer.rows):
            u, A, beta = gadget_draws(d_in, K, layer.has_bias, seed, layer.index, k)
            own = slice(i * K, (i + 1) * K)
            Uw[own] = u
            if Ub is not None:
                Ub[own] = beta
            Vw[i] = stream(seed, layer.index, FILL_V, 0, k).uniform(-1.0, 1.0, layer.d_out * K)
            Vw[i, k * K:(k + 1) * K] = A
            for s_, r in enumerate(state["chosen"][i]):
                if r < 0:
                    continue
                if s_ < 2 * d_in:
                    Um[i * K + r, s_ % d_in] = True
                else:
                    Ubm[i * K + r] = True
                Vm[i, k * K + r] = True
        return {"widen": Rows(Uw, Um, Ub, Ubm), "combine": Rows(Vw, Vm)}

    def _unrolled(self, layer: TargetLayer, K: int) -> str:
        """Why a convolution (or a Linear reading a map) is refused, with the size it needs."""
        if layer.kind == "conv":
            g = layer.geometry
            (H, W), (kh, kw) = g["in_hw"], g["kernel"]
            out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(
                (H, W), (kh, kw), g["stride"], g["padding"], g["dilation"])]
            neurons, fan_in = layer.d_out * out[0] * out[1], layer.channels * H * W
        else:
            neurons, fan_in = layer.d_out, layer.d_in
        need = neurons * K * (fan_in + neurons)
        return (f"malach: layer {layer.index} is a {layer.kind} layer; Malach's construction gives "
                f"every one of its {neurons:,} output neurons its own gadget (no weight sharing), "
                f"which at K = {K:,} needs {need:,} random parameters for this layer alone; use "
                "--method pensia or orseau")

    def size_range(self, target) -> tuple[int, int]:
        return 1, max(1, self.settings.max_params // self.g_params(target, [1] * target.depth))

    def check_sizes(self, target, sizes) -> list[int]:
        Ks = [int(sizes)] * target.depth if np.ndim(sizes) == 0 else [int(k) for k in sizes]
        if len(Ks) != target.depth:
            raise SlthError(f"--n gave {len(Ks)} sizes for a target of {target.depth} layers")
        if any(K < 1 for K in Ks):
            raise SlthError(f"gadget sizes must be >= 1, got {Ks}")
        refuse_maps(target, Ks)
        if self.g_params(target, Ks) > self.settings.max_params:
            self.too_big(target, Ks, f"--n {Ks}")
        return Ks

    def configure(self, target, eps, domain=None):
        if eps is None:
            return self
        refuse_maps(target, None)
        from ..certify import Domain, bound_details
        from ..ticket.effective import EffectiveLayer
        best = bound_details(target, [EffectiveLayer(np.clip(W, -1, 1), -np.clip(W, -1, 1),
                                                     np.zeros(W.shape[0]) if c is None
                                                     else np.clip(c, -1, 1))
                                      for W, c in zip(target.weights, target.biases)],
                             domain or Domain())
        if best["certified_bound"] > eps:
            big = max(float(np.abs(W).max()) for W in target.weights)
            raise SlthError(f"malach: the target has weights up to {big:.3g}; products of two "
                            "Uniform[-1,1] weights stay in [-1, 1] (Malach et al. assume |w| <= "
                            f"1/sqrt(n)), so even exact pairs certify only "
                            f"{best['certified_bound']:.3g} > eps={eps:g}; use --method pensia "
                            "or orseau")
        return self

    def unreachable(self, target, eps, sizes, bound):
        hi = sizes[0]
        self.too_big(target, [math.ceil(hi * bound / eps)] * target.depth,
                     f"eps={eps:g} (the bound falls like 1/K: {bound:.3g} at K = {hi:,})")

    def too_big(self, target, Ks, why: str):
        need = self.g_params(target, Ks)
        widths = [d * K for d, K in zip(target.dims[1:], Ks)]
        raise TooLarge(f"malach: {why} needs hidden widths {widths} (gadgets of {Ks} neurons "
                       f"per target neuron): G would have {need:,} random parameters "
                       f"(~{need * 5 / 2**30:.1f} GiB), over --max-params "
                       f"{self.settings.max_params:,}; raise --max-params, ask for a larger "
                       "--eps, or use --method pensia/orseau", need, widths)

    def info(self, target, sizes, reduced) -> dict:
        return {"neurons_per_target_weight": sum(d * K for d, K in zip(target.dims[1:], sizes))
                / target.n_params}

    def theory(self, target, eps):
        return theory(target, eps, delta=self.settings.delta)


@dataclass
class LayerSolution:
    """Chosen neurons of every gadget of one layer at gadget size K, and what they compute."""

    K: int
    state: dict

    @property
    def chosen(self) -> np.ndarray:
        return self.state["chosen"]

    def effective(self) -> EffectiveLayer:
        return EffectiveLayer(self.state["pos"], self.state["neg"], self.state["bias"])


def solve_layer(W: np.ndarray, c: np.ndarray | None, K: int, seed: int, layer: int) -> LayerSolution:
    """Match every gadget of one MLP layer at gadget size K."""
    spec = TargetLayer(layer, np.asarray(W, np.float64), c, W.shape[0])
    return LayerSolution(K, Malach().solve(spec, K, seed))


def refuse_maps(target, Ks: list[int] | None) -> None:
    """Refuse a target with convolutions (or Linear layers reading feature maps) in one line that
    names the size Malach's gadgets would need there: one gadget per output unit of the layer read
    as a dense map (C_out H_out W_out units, each reading C_in H_in W_in inputs)."""
    if isinstance(target, MLP):
        return
    from .base import target_layers

    bad = next((L for L in target_layers(target) if L.kind != "linear"), None)
    if bad is None:
        return
    dims, bias = [], []
    for i in target.affine:
        nd = target.nodes[i]
        dims.append((int(np.prod(target.nodes[nd.inputs[0]].shape)), int(np.prod(nd.shape))))
        bias.append(nd.bias is not None)
    d_in, units = dims[bad.index]
    per_k = sum(o * (d + int(b) + o) for (d, o), b in zip(dims, bias))
    shape = "x".join(map(str, target.nodes[target.affine[bad.index]].shape))
    if Ks is None:
        size = f"{units:,} x K neurons there and {per_k:,} x K random parameters in all"
    else:
        need = sum(o * K * (d + int(b) + o) for (d, o), b, K in zip(dims, bias, Ks))
        size = (f"{units * Ks[bad.index]:,} neurons there at K = {Ks[bad.index]} and "
                f"{need:,} random parameters in all")
    raise SlthError(f"malach: layer {bad.index} is a {bad.kind} layer; Malach's construction "
                    f"gives every target neuron its own gadget of K neurons and is built here for "
                    f"Linear layers only (read as a dense layer, its {shape} = {units:,} output "
                    f"units from {d_in:,} inputs would need {size}); use --method pensia or "
                    "orseau")


def g_params(dims: list[int], Ks: list[int], has_bias: list[bool]) -> int:
    """Random parameters of G for gadget sizes Ks."""
    return sum(dims[i + 1] * K * (dims[i] + int(has_bias[i]) + dims[i + 1])
               for i, K in enumerate(Ks))


def tolerance(target: MLP, eps: float) -> list[float]:
    """The paper's per-weight tolerance eps/(2d), shared over l layers: eps / (2 l d_{i-1})."""
    return [eps / (2 * target.depth * d) for d in target.dims[:-1]]


def match_probability(w: np.ndarray, t: float) -> np.ndarray:
    """P(one gadget neuron serves a slot of target value w within t): sign of u (1/2) and of A
    (1/2), and |A u| within t of |w|; |A u| has CDF z - z ln z on [0, 1]."""
    def cdf(z):
        z = np.clip(z, 0.0, 1.0)
        return np.where(z > 0, z - z * np.log(np.where(z > 0, z, 1.0)), 0.0)
    a = np.abs(w)
    return 0.25 * (cdf(a + t) - cdf(a - t))


def theory(target: MLP, eps: float, *, delta: float = 0.1) -> dict:
    """The paper's sizes for this target, beside ours: per layer the gadget size K that finds
    every pair within tolerance t w.p. 1 - delta (union bound over the P slots, each hit by a
    neuron with probability >= p: K = ln(P/delta) / -ln(1-p)); slots with |w| <= t need no pair.
    Also the slides' asymptotic neurons per target weight, n^3 l^2 / eps^2 log(n l / delta)."""
    L, dims = target.depth, target.dims
    slots = sum(2 * W.size + (0 if c is None else c.size) for W, c in zip(target.weights, target.biases))
    Ks = []
    for (W, c), t in zip(zip(target.weights, target.biases), tolerance(target, eps)):
        vals = np.concatenate([W.ravel(), [] if c is None else c])
        vals = vals[np.abs(vals) > t]
        p = float(match_probability(vals, t).min()) if vals.size else 1.0
        Ks.append(None if p <= 0 else (0 if not vals.size else
                                       math.ceil(math.log(slots / delta) / -math.log1p(-p))))
    n = max(dims)
    has_b = [c is not None for c in target.biases]
    return {"theory_samples_per_layer": Ks,
            "theory_tolerance_per_layer": tolerance(target, eps),
            "theory_random_params": g_params(dims, Ks, has_b) if None not in Ks else None,
            "theory_neurons_per_target_weight_slides": n ** 3 * L ** 2 / eps ** 2 * math.log(n * L / delta),
            "theory_note": "K = ln(P/delta)/-ln(1-p) neurons per gadget: every one of the P slots "
                           "finds a neuron with |A u - w| <= eps/(2 l d) (p = least match "
                           "probability); slides: n^3 l^2/eps^2 log(n l/delta) per weight"}


def construct(target, **kw):
    """This method's ticket for ``target`` (``slth.constructions.construct``)."""
    from . import construct as _construct
    return _construct(target, method="malach", **kw)
