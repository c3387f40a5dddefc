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
gadget of size K is a prefix of one of size K + 1.
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
from ..ticket import EffectiveLayer, Layer, Ticket
from ._common import Construction, f32, stream
from ._search import search_sizes

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


@dataclass
class LayerSolution:
    """Chosen neurons of every gadget at gadget size K, and what the pairs compute."""

    K: int
    chosen: np.ndarray         # [d_out, n_slots] neuron index within the gadget, -1 = dropped
    value: np.ndarray          # [d_out, n_slots] the chosen neuron's coefficient (0 if dropped)

    def effective(self) -> EffectiveLayer:
        d_in = (self.value.shape[1]) // 2
        bias = self.value[:, 2 * d_in] if self.value.shape[1] % 2 else np.zeros(len(self.value))
        return EffectiveLayer(self.value[:, :d_in], self.value[:, d_in:2 * d_in], bias)


def solve_layer(W: np.ndarray, c: np.ndarray | None, K: int, seed: int, layer: int) -> LayerSolution:
    """Match every gadget of one target layer at gadget size K."""
    res = [match_gadget(W[k], None if c is None else c[k], K, seed, layer, k) for k in range(len(W))]
    return LayerSolution(K, np.stack([r[0] for r in res]), np.stack([r[1] for r in res]))


def assemble_layers(sol: LayerSolution, d_in: int, has_bias: bool, seed: int,
                    layer: int) -> tuple[Layer, Layer]:
    """Materialise G's widen and combine layers (every weight drawn) and the ticket's masks."""
    d_out, K = sol.chosen.shape[0], sol.K
    Uw = np.empty((d_out * K, d_in), np.float32)
    Ub = np.empty(d_out * K, np.float32) if has_bias else None
    Um = np.zeros((d_out * K, d_in), bool)
    Ubm = np.zeros(d_out * K, bool) if has_bias else None
    Vw = stream(seed, layer, FILL_V, 0, 0).uniform(-1.0, 1.0, (d_out, d_out * K)).astype(np.float32)
    Vm = np.zeros((d_out, d_out * K), bool)
    for k in range(d_out):
        u, A, beta = gadget_draws(d_in, K, has_bias, seed, layer, k)
        rows = slice(k * K, (k + 1) * K)
        Uw[rows], Vw[k, rows] = u, A
        if has_bias:
            Ub[rows] = beta
        for s, r in enumerate(sol.chosen[k]):
            if r < 0:
                continue
            if s < 2 * d_in:
                Um[k * K + r, s % d_in] = True
            else:
                Ubm[k * K + r] = True
            Vm[k, k * K + r] = True
    return Layer(Uw, Um, Ub, Ubm), Layer(Vw, Vm)


def g_params(dims: list[int], Ks: list[int], has_bias: list[bool]) -> int:
    """Random parameters of G for gadget sizes Ks."""
    return sum(dims[i + 1] * K * (dims[i] + int(has_bias[i]) + dims[i + 1])
               for i, K in enumerate(Ks))


def construct(target: MLP, *, n: int | list[int] | None = None, eps: float | None = None,
              domain: Domain | None = None, seed: int = 0, delta: float = 0.1,
              max_params: int = MAX_PARAMS, progress=None) -> Construction:
    """Build Malach et al.'s ticket for ``target``.

    Give ``n`` (gadget size K: neurons of G per target neuron, one int or one per layer) or
    ``eps`` (the smallest K whose certified bound on ``domain`` is <= eps).
    """
    domain = domain or Domain()
    if (n is None) == (eps is None):
        raise SlthError("give exactly one of --n (gadget size) or --eps")
    if not 0 < delta < 1:
        raise SlthError(f"--delta must be in (0, 1), got {delta}")
    L, dims = target.depth, target.dims
    has_b = [c is not None for c in target.biases]
    say = progress or (lambda msg: None)
    per_k = g_params(dims, [1] * L, has_b)
    effs: dict[tuple[int, int], EffectiveLayer] = {}

    def eff(i: int, K: int) -> EffectiveLayer:
        if (i, K) not in effs:
            say(f"layer {i + 1}: pairing in gadgets of K = {K:,}")
            effs[(i, K)] = solve_layer(target.weights[i], target.biases[i], K, seed, i).effective()
        return effs[(i, K)]

    def bound(Ks) -> float:
        return bound_details(target, [eff(i, K) for i, K in enumerate(Ks)], domain)["certified_bound"]

    def too_big(Ks, why: str):
        need = g_params(dims, Ks, has_b)
        widths = [dims[i + 1] * K for i, K in enumerate(Ks)]
        raise TooLarge(f"malach: {why} needs hidden widths {widths} (gadgets of {Ks} neurons per "
                       f"target neuron): G would have {need:,} random parameters (~{need * 5 / 2**30:.1f} "
                       f"GiB), over --max-params {max_params:,}; raise --max-params, ask for a "
                       "larger --eps, or use --method pensia/orseau", need, widths)

    t0 = time.perf_counter()
    if n is not None:
        Ks = [n] * L if isinstance(n, int) else list(n)
        if len(Ks) != L:
            raise SlthError(f"--n gave {len(Ks)} sizes for a target of {L} layers")
        if any(K < 1 for K in Ks):
            raise SlthError(f"gadget sizes must be >= 1, got {Ks}")
        if g_params(dims, Ks, has_b) > max_params:
            too_big(Ks, f"--n {Ks}")
    else:
        if not eps > 0:
            raise SlthError(f"eps must be > 0, got {eps}")
        best = bound_details(target, [EffectiveLayer(np.clip(W, -1, 1), -np.clip(W, -1, 1),
                                                     np.zeros(W.shape[0]) if c is None else np.clip(c, -1, 1))
                                      for W, c in zip(target.weights, target.biases)], domain)
        if best["certified_bound"] > eps:
            big = max(float(np.abs(W).max()) for W in target.weights)
            raise SlthError(f"malach: the target has weights up to {big:.3g}; products of two "
                            "Uniform[-1,1] weights stay in [-1, 1] (Malach et al. assume |w| <= "
                            f"1/sqrt(n)), so even exact pairs certify only {best['certified_bound']:.3g} "
                            f"> eps={eps:g}; use --method pensia or orseau")
        hi = max(1, max_params // per_k)

        def fail():
            b = bound([hi] * L)
            too_big([math.ceil(hi * b / eps)] * L,
                    f"eps={eps:g} (the bound falls like 1/K: {b:.3g} at K = {hi:,})")
        order = sorted(range(L), key=lambda i: -target.weights[i].size)
        Ks = search_sizes(L, lambda ks: bound(ks) <= eps, 64, hi, order, on_fail=fail)
    search_s = time.perf_counter() - t0
    say("assembling G and the masks")
    layers: list[Layer] = []
    sols = []
    for i, K in enumerate(Ks):
        sol = solve_layer(target.weights[i], target.biases[i], K, seed, i)
        sols.append(sol)
        layers.extend(assemble_layers(sol, dims[i], has_b[i], seed, i))
    err = max(float(np.abs(s.value - np.concatenate([W, -W] + ([c[:, None]] if c is not None else []), 1)).max())
              for s, W, c in zip(sols, target.weights, target.biases))
    ticket = Ticket(layers, {"method": "malach", "seed": seed, "samples_per_layer": Ks,
                             "target_dims": dims, "target_has_bias": target.has_bias,
                             "target_fingerprint": target.fingerprint()})
    info = {
        "method": "malach",
        "samples_per_layer": Ks,
        "neurons_per_target_weight": sum(dims[i + 1] * K for i, K in enumerate(Ks)) / target.n_params,
        "width_per_layer": ticket.widths,
        "max_weight_error": err,
        "search_seconds": search_s,
        "eps": eps,
        "delta": delta,
    }
    if eps is None:
        eps = bound_details(target, [s.effective() for s in sols], domain)["certified_bound"]
    info.update(theory(target, eps, delta=delta))
    return Construction(ticket, info)


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
