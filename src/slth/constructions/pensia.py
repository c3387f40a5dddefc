"""Pensia et al. (2020): every target weight is a SubsetSum over random products.

For target layer W [d_out, d_in] (bias c optional), G gets two layers:

* widen U [m, d_in], m = 2 n d_in (+ n with a bias): input j owns block j of 2n neurons, the
  first n with in-weight +a, the next n with -a, a ~ Uniform(0, 1] (G's weights are Uniform[-1, 1]
  conditioned on the sign of each half). The block's neurons are shared by all outputs. With a
  target bias, a bias block of n neurons keeps only its bias beta ~ Uniform(0, 1] (so
  relu(beta) = beta, a constant), never an input.
* combine V [d_out, m]: output k has its own out-weights b ~ Uniform[-1, 1] into every block.

Neuron (j, +, t) carries a_t relu(x_j), neuron (j, -, t) carries a_t relu(-x_j), and
w x = w relu(x) - w relu(-x); so W[k, j] is one SubsetSum over the coefficients b a of the positive
half (target W[k, j]) and one over the negative half (target -W[k, j]); c_k is one over the bias
block's b beta. Each is solved exactly (minimum error) by ``slth.subsetsum``. The mask keeps
block-diagonal in-links of used neurons and the chosen out-links; every other weight of G (the
off-block in-weights, the unused out-weights) is drawn but pruned.

Draws: every in-weight vector a[half, t] and every row of out-weights b[half, t, k] comes from its
own stream (seed, layer, kind, half, t, k). So G with block size n is a prefix of G with block
size n + 1 (errors can only shrink as n grows), and any chunk of output rows can be solved on its
own (``solve_rows``) with the same result as the whole layer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..certify import Domain, bound_details
from ..errors import SlthError
from ..subsetsum import solve
from ..targets import MLP
from ..ticket import EffectiveLayer, Layer, Ticket
from ._common import Construction, f32, stream

N_MAX = 32


@dataclass
class LayerSolution:
    """SubsetSum answers for one target layer at block size n."""

    n: int
    a: np.ndarray          # [2, n, d_in]   in-weight magnitudes (positive half, negative half)
    b: np.ndarray          # [2, n, d_out, d_in] out-weights
    mask: np.ndarray       # [2, d_out, d_in, n] chosen out-links
    sums: np.ndarray       # [2, d_out, d_in]  subset sums (approximate +W and -W)
    beta: np.ndarray | None = None      # [n] bias-block biases
    bb: np.ndarray | None = None        # [n, d_out] bias-block out-weights
    bias_mask: np.ndarray | None = None  # [d_out, n]
    bias_sums: np.ndarray | None = None  # [d_out]

    def effective(self) -> EffectiveLayer:
        d_out = self.sums.shape[1]
        bias = self.bias_sums if self.bias_sums is not None else np.zeros(d_out)
        return EffectiveLayer(self.sums[0].copy(), self.sums[1].copy(), bias)


# stream kinds (key = seed, layer, kind, half, t, row)
IN_W, OUT_W, BIAS_IN, BIAS_OUT, FILL_W, FILL_B = range(6)


def draw_in(d_in: int, n: int, has_bias: bool, seed: int, layer: int):
    """In-weight magnitudes a [2, n, d_in] and bias-block biases beta [n] (or None)."""
    a = np.stack([np.stack([f32(stream(seed, layer, IN_W, h, t, 0).uniform(0.0, 1.0, d_in))
                            for t in range(n)]) for h in range(2)])
    beta = (np.array([f32(stream(seed, layer, BIAS_IN, 0, t, 0).uniform(0.0, 1.0)) for t in range(n)])
            if has_bias else None)
    return a, beta


def draw_out(rows: range, d_in: int, n: int, has_bias: bool, seed: int, layer: int):
    """Out-weights of the given output rows: b [2, n, len(rows), d_in], bb [n, len(rows)]."""
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


def solve_rows(W: np.ndarray, c: np.ndarray | None, n: int, seed: int, layer: int,
               rows: range | None = None, halves=(0, 1), threads: int | None = None) -> LayerSolution:
    """Solve the SubsetSums of output rows ``rows`` of one target layer at block size n.

    Depends only on (W[rows], c[rows], n, seed, layer): any split of the rows into chunks gives
    the same answers as one call over all rows.
    """
    d_out, d_in = W.shape
    rows = range(d_out) if rows is None else rows
    a, beta = draw_in(d_in, n, c is not None, seed, layer)
    b, bb = draw_out(rows, d_in, n, c is not None, seed, layer)
    Wr = W[rows.start:rows.stop]
    mask = np.zeros((2, len(rows), d_in, n), bool)
    sums = np.zeros((2, len(rows), d_in))
    for h in halves:
        # coefficient of (k, j, t) = b[h, t, k, j] * a[h, t, j]; exact in float64 (float32 inputs)
        coef = np.ascontiguousarray(np.transpose(b[h] * a[h][:, None, :], (1, 2, 0))).reshape(-1, n)
        target = Wr.ravel() if h == 0 else -Wr.ravel()
        r = solve(coef, target, threads=threads)
        mask[h] = r.mask.reshape(len(rows), d_in, n)
        sums[h] = r.sums.reshape(len(rows), d_in)
    sol = LayerSolution(n, a, b, mask, sums)
    if c is not None:
        coef = np.ascontiguousarray(bb.T * beta[None, :])
        r = solve(coef, c[rows.start:rows.stop], threads=threads)
        sol.beta, sol.bb, sol.bias_mask, sol.bias_sums = beta, bb, r.mask, r.sums
    return sol


def merge_rows(parts: list[LayerSolution]) -> LayerSolution:
    """Concatenate chunk solutions (in row order) into the whole layer's solution."""
    p0 = parts[0]
    sol = LayerSolution(p0.n, p0.a, np.concatenate([p.b for p in parts], axis=2),
                        np.concatenate([p.mask for p in parts], axis=1),
                        np.concatenate([p.sums for p in parts], axis=1))
    if p0.beta is not None:
        sol.beta = p0.beta
        sol.bb = np.concatenate([p.bb for p in parts], axis=1)
        sol.bias_mask = np.concatenate([p.bias_mask for p in parts], axis=0)
        sol.bias_sums = np.concatenate([p.bias_sums for p in parts])
    return sol


def solve_layer(W: np.ndarray, c: np.ndarray | None, n: int, seed: int, layer: int,
                halves=(0, 1), threads: int | None = None) -> LayerSolution:
    """Draw the layer's blocks at size n and solve every entry's SubsetSums (minimum error)."""
    return solve_rows(W, c, n, seed, layer, None, halves, threads)


def assemble_layers(sol: LayerSolution, seed: int, layer: int) -> tuple[Layer, Layer]:
    """Materialise G's widen and combine layers (all weights drawn) and the ticket's masks."""
    Uw, Ub = widen_weights(sol.a, sol.beta, seed, layer)
    bias_used = None if sol.beta is None else sol.bias_mask.any(axis=0)
    Um, Ubm = widen_masks(sol.mask.any(axis=1), bias_used)
    Vw, Vm = combine_rows(sol.b, sol.mask, sol.bb, sol.bias_mask)
    return Layer(Uw, Um, Ub, Ubm), Layer(Vw, Vm)


def widen_weights(a: np.ndarray, beta: np.ndarray | None, seed: int, layer: int):
    """G's widen layer: weights float32 [m, d_in] (filler draws, with +a / -a on each input's
    block) and biases float32 [m] (filler, with beta on the bias block) or None; m = 2 n d_in
    (+ n). Neuron (j, h, t) is row (j * 2 + h) * n + t."""
    rows = list(widen_weight_rows(a, beta is not None, seed, layer))
    return (rows[0][1] if len(rows) == 1 else np.concatenate([r for _, r in rows]),
            widen_biases(beta, a.shape[1] * a.shape[2] * 2, seed, layer))


def widen_weight_rows(a: np.ndarray, has_bias: bool, seed: int, layer: int,
                      block: int | None = None):
    """``widen_weights``' weights, ``block`` rows at a time (all at once: None): yields
    (first row, float32 [rows, d_in]). One stream, drawn in order, so the blocks are the rows of
    the one-piece draw exactly."""
    _, n, d_in = a.shape
    m = 2 * n * d_in + (n if has_bias else 0)
    g = stream(seed, layer, FILL_W, 0, 0, 0)
    vals = signed_in_weights(a)
    for r0 in range(0, m, block or m):
        U = g.uniform(-1.0, 1.0, (min(m, r0 + (block or m)) - r0, d_in)).astype(np.float32)
        r = np.arange(r0, min(r0 + len(U), 2 * n * d_in))         # block neurons among them
        j, h, t = r // (2 * n), (r // n) % 2, r % n
        U[r - r0, j] = vals[h, t, j]
        yield r0, U


def signed_in_weights(a: np.ndarray) -> np.ndarray:
    """G's in-weights of the block neurons, float32 [2, n, d_in]: +a (positive half), -a."""
    return (np.array([1.0, -1.0])[:, None, None] * a).astype(np.float32)


def widen_biases(beta: np.ndarray | None, m_blocks: int, seed: int, layer: int):
    """The widen layer's biases float32 [m_blocks + n] (filler, beta on the bias block), or None."""
    if beta is None:
        return None
    Ub = stream(seed, layer, FILL_B, 0, 0, 0).uniform(-1.0, 1.0, m_blocks + len(beta))
    Ub = Ub.astype(np.float32)
    Ub[m_blocks:] = beta.astype(np.float32)
    return Ub


def widen_masks(used: np.ndarray, bias_used: np.ndarray | None):
    """The widen layer's masks from ``used`` bool [2, d_in, n] (neuron (j, h, t) has an
    out-link) and ``bias_used`` bool [n] or None: bool [m, d_in] and [m] (or None)."""
    _, d_in, n = used.shape
    m = 2 * n * d_in + (0 if bias_used is None else n)
    Um = np.zeros((m, d_in), bool)
    Um[widen_mask_index(used)] = True
    return Um, widen_bias_mask(bias_used, 2 * n * d_in)


def widen_bias_mask(bias_used: np.ndarray | None, m_blocks: int):
    """The widen layer's bias mask bool [m_blocks + n]: kept on the used bias neurons; or None."""
    if bias_used is None:
        return None
    Ubm = np.zeros(m_blocks + len(bias_used), bool)
    Ubm[m_blocks:] = bias_used
    return Ubm


def widen_mask_index(used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the widen layer's kept in-weights: neuron (j, h, t) keeps input j
    when ``used[h, j, t]``."""
    _, d_in, n = used.shape
    j, h, t = np.nonzero(np.transpose(used, (1, 0, 2)))
    return (j * 2 + h) * n + t, j


def combine_rows(b: np.ndarray, mask: np.ndarray, bb: np.ndarray | None = None,
                 bias_mask: np.ndarray | None = None):
    """Rows of G's combine layer for some output rows: from out-weights b [2, n, rows, d_in],
    chosen links mask [2, rows, d_in, n] (and bb [n, rows], bias_mask [rows, n]), the weights
    float32 [rows, m] and the mask bool [rows, m] (columns in widen-row order)."""
    _, n, rows, d_in = b.shape
    m = 2 * n * d_in + (0 if bb is None else n)
    Vw = np.empty((rows, m), np.float32)
    Vw[:, :2 * n * d_in] = np.transpose(b, (2, 3, 0, 1)).reshape(rows, -1)
    Vm = np.zeros((rows, m), bool)
    Vm[:, :2 * n * d_in] = np.transpose(mask, (1, 2, 0, 3)).reshape(rows, -1)
    if bb is not None:
        Vw[:, 2 * n * d_in:] = bb.T
        Vm[:, 2 * n * d_in:] = bias_mask
    return Vw, Vm


def theory_n(d_in: int, d_out: int, depth: int, eps: float) -> int:
    """Block size (per half) Theorem 1's proof asks for: each weight within
    eps / (2 l d_in d_out), at the information-theoretic rate of one bit per coefficient
    (n = log2(2 l d_in d_out / eps); the paper's constant C is unspecified, taken as 1)."""
    return max(1, math.ceil(math.log2(2 * depth * d_in * d_out / eps)))


def construct(target: MLP, *, n: int | list[int] | None = None, eps: float | None = None,
              domain: Domain | None = None, seed: int = 0, n_max: int = N_MAX,
              prune_dead: bool = False, threads: int | None = None,
              progress=None) -> Construction:
    """Build Pensia et al.'s ticket for ``target``.

    Give ``n`` (block size per half, one int or one per layer) or ``eps`` (then, per layer, the
    smallest n whose certified bound on ``domain`` is <= eps). ``prune_dead`` drops negative
    halves of hidden layers, whose inputs are post-ReLU so those neurons always output 0.
    progress(message) is called as work proceeds.
    """
    domain = domain or Domain()
    if (n is None) == (eps is None):
        raise SlthError("give exactly one of --n (block size) or --eps (target error bound)")
    L = target.depth
    say = progress or (lambda msg: None)
    halves_of = [(0, 1) if (i == 0 or not prune_dead) else (0,) for i in range(L)]
    cache: dict[tuple[int, int], LayerSolution] = {}

    def sol(i: int, k: int) -> LayerSolution:
        if (i, k) not in cache:
            say(f"layer {i + 1}: SubsetSum at n = {k}")
            cache[(i, k)] = solve_layer(target.weights[i], target.biases[i], k, seed, i,
                                        halves_of[i], threads)
        return cache[(i, k)]

    def bound(ns) -> float:
        return bound_details(target, [sol(i, k).effective() for i, k in enumerate(ns)],
                             domain)["certified_bound"]

    t0 = time.perf_counter()
    search = []
    if n is not None:
        ns = [n] * L if isinstance(n, int) else list(n)
        if len(ns) != L:
            raise SlthError(f"--n gave {len(ns)} sizes for a target of {L} layers")
        if any(not 1 <= k <= 40 for k in ns):
            raise SlthError(f"block sizes must be between 1 and 40, got {ns}")
    else:
        if not eps > 0:
            raise SlthError(f"eps must be > 0, got {eps}")
        order = sorted(range(L), key=lambda i: -target.weights[i].size)
        ns = _search_sizes(L, eps, n_max, bound, search, order)
    effs = [sol(i, k).effective() for i, k in enumerate(ns)]
    solve_s = time.perf_counter() - t0
    say("assembling G and the masks")
    layers: list[Layer] = []
    for i, k in enumerate(ns):
        layers.extend(assemble_layers(sol(i, k), seed, i))
    max_w_err = max(max(float(np.abs(e.pos - W).max()),
                        float(np.abs(e.neg + W).max()) if i == 0 or not prune_dead else 0.0)
                    for i, (e, W) in enumerate(zip(effs, target.weights)))
    bias_err = max([float(np.abs(e.bias - c).max()) for e, c in zip(effs, target.biases)
                    if c is not None] or [0.0])
    dims = target.dims
    ticket = Ticket(layers, {
        "method": "pensia", "seed": seed, "n_per_layer": ns, "target_dims": dims,
        "target_has_bias": target.has_bias, "prune_dead": prune_dead,
        "target_fingerprint": target.fingerprint(),
    })
    info = {
        "method": "pensia",
        "n_per_layer": ns,
        "neurons_per_target_weight": [2 * k for k in ns],
        "width_per_layer": ticket.widths,
        "max_weight_error": max(max_w_err, bias_err),
        "subsetsum_seconds": solve_s,
        "size_search": search,
        "eps": eps,
    }
    return Construction(ticket, info)


def _search_sizes(L: int, eps: float, n_max: int, bound, log: list, order: list[int]) -> list[int]:
    """Smallest uniform n with bound <= eps, then lower each layer's n while it still holds."""
    def ok(ns):
        b = bound(ns)
        log.append({"n_per_layer": list(ns), "certified_bound": b})
        return b <= eps

    k = 8
    b = bound([k] * L)
    log.append({"n_per_layer": [k] * L, "certified_bound": b})
    if b <= eps:
        while k > 1 and ok([k - 1] * L):
            k -= 1
    else:
        # errors halve roughly per extra coefficient: jump near the answer, then step
        k = min(n_max, k + max(1, math.ceil(math.log2(b / eps))))
        while not ok([k] * L):
            if k >= n_max:
                raise SlthError(f"eps={eps:g} is not reachable with block size <= {n_max} "
                                f"(certified bound there: {log[-1]['certified_bound']:.3g}); "
                                "ask for a larger --eps or a smaller domain")
            k += 1
        while k > 1 and ok([k - 1] * L):
            k -= 1
    ns = [k] * L
    for i in order:  # largest layers first: that is where a smaller n saves the most
        while ns[i] > 1:
            trial = list(ns)
            trial[i] -= 1
            if not ok(trial):
                break
            ns = trial
    return ns


def theory(target: MLP, eps: float) -> dict:
    """The theorem's sizes next to ours: block size per layer and G's size at that block size."""
    L = target.depth
    dims = target.dims
    ns = [theory_n(dims[i], dims[i + 1], L, eps) for i in range(L)]
    params = sum(2 * k * dims[i] * dims[i] + dims[i + 1] * 2 * k * dims[i] for i, k in enumerate(ns))
    return {"theory_n_per_layer": ns, "theory_random_params": params,
            "theory_note": "n_i = ceil(log2(2 l d_{i-1} d_i / eps)) per half-block (Theorem 1's "
                           "per-weight tolerance eps/(2 l d_in d_out), C = 1)"}
