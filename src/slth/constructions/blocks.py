"""Pensia's layout of G, shared by Pensia's and Orseau's constructions: one block per input.

For a target layer W [d_out, D] whose columns read C input channels, ``group`` columns each
(``TargetLayer``), G gets two layers:

* widen U [m, C] (a 1x1 convolution for convolutional layers): input channel c owns a block of
  2 n_c neurons, n_c with in-weight +a (the positive half), n_c with -a (the negative half); with a
  target bias, a bias block of n neurons keeps only its bias beta > 0 (relu(beta) = beta, a
  constant). Block neurons are shared by all outputs. Neuron (c, h, t) is row off[c] + h n_c + t
  (off[c] = 2 sum_{c' < c} n_c'); the bias block comes last. Every other weight of U is drawn too
  (filler) and pruned.
* combine V [d_out, m, group] (a Linear [d_out, m] for an MLP, a convolution [d_out, m, kh, kw]
  with the target's stride, padding and dilation, or a Linear [d_out, m * H * W] reading the
  widened map flattened): output k has its own out-weight into every block neuron and tap,
  b[h, t, k, j] for column j = c * group + s. The bias block feeds one tap (``bias_tap``).

Neuron (c, h, t) carries a_t relu(+-x_c), and w x = w relu(x) - w relu(-x), so W[k, j] is one
sum over the coefficients b[0, t, k, j] a[0, t, c] of the positive half (target W[k, j]) and one
over the negative half (target -W[k, j]); c_k one over the bias block's b beta. *Which* subset
is the construction's mask rule (``BlockMethod.choose``): Pensia's exact SubsetSum, Orseau's
golden-ratio digits.

Draws: each in-weight vector a[h, t] (over channels) and each row of out-weights b[h, t, k] (over
columns) comes from its own stream (seed, layer, kind, h, t, k), so G with block size n is a
prefix of G with n + 1, and any chunk of output rows is solved and written on its own. Block
sizes may differ per channel (``plan["n_c"]``, e.g. Pensia's coverage); by default all are n.
"""

from __future__ import annotations

import numpy as np

from ..ticket.effective import combine_effective
from ._orseau_kernel import map_inplace, uniform_streams
from ._common import f32, stream
from .base import Method, Rows, TargetLayer, Tensor

# stream kinds (key = seed, layer, kind, half, t, row)
IN_W, OUT_W, BIAS_IN, BIAS_OUT, FILL_W, FILL_B, FILL_TAP = range(7)


# ----------------------------------------------------------------------------- layout
def block_sizes(layer: TargetLayer, n: int, plan: dict | None) -> np.ndarray:
    """Block size of each input channel, int64 [C]: n, or the plan's per-channel sizes."""
    if plan is not None and "n_c" in plan:
        return np.asarray(plan["n_c"], np.int64)
    return np.full(layer.channels, n, np.int64)


def bias_size(layer: TargetLayer, n: int, plan: dict | None) -> int:
    """Neurons of the bias block: 0 without a target bias, else n or the plan's."""
    if not layer.has_bias:
        return 0
    return int(plan["n_bias"]) if plan is not None and "n_bias" in plan else n


def offsets(ns: np.ndarray) -> np.ndarray:
    """First widen row of each channel's block, int64 [C + 1] (the last: rows of all blocks)."""
    return np.concatenate([[0], np.cumsum(2 * ns)])


def widen_rows_of(ns: np.ndarray, n_bias: int) -> int:
    return int(2 * ns.sum()) + n_bias


def bias_tap(layer: TargetLayer) -> int:
    """The tap through which the bias block feeds each output: one that reads inside the input
    for every output position (zero padding would hide a constant channel), or 0."""
    if layer.kind != "conv":
        return 0
    g = layer.geometry
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (H, W) = (g["kernel"], g["stride"], g["padding"],
                                                      g["dilation"], g["in_hw"])
    def ok(q, k, s, p, d, n):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        return q * d - p >= 0 and (out - 1) * s - p + q * d <= n - 1
    for p in range(kh):
        for q in range(kw):
            if ok(p, kh, sh, ph, dh, H) and ok(q, kw, sw, pw, dw, W):
                return p * kw + q
    from ..errors import SlthError
    raise SlthError(f"layer {layer.index}: no kernel tap of this convolution reads inside the "
                    "input at every output position, so its bias cannot come from a constant "
                    "channel; use less padding or a target without this bias")


# ----------------------------------------------------------------------------- draws
def draw_in(C: int, n: int, has_bias: bool, seed: int, layer: int, n_bias: int | None = None):
    """Raw in-weight magnitudes a [2, n, C] (Uniform(0, 1], float32-rounded) and bias-block
    biases beta [n_bias] (or None). Stream (seed, layer, IN_W, h, t, 0) gives a[h, t]."""
    a = np.empty((2, n, C))
    for h in range(2):
        uniform_streams(seed, (layer, IN_W, h), range(n), [0], C, 0.0, 1.0,
                        out=a[h].reshape(n, 1, C))
    nb = n if n_bias is None else n_bias
    beta = (uniform_streams(seed, (layer, BIAS_IN, 0), range(nb), [0], 1, 0.0, 1.0)[:, 0, 0]
            if has_bias else None)
    return a, beta


def draw_out(rows: range, D: int, n: int, has_bias: bool, seed: int, layer: int,
             n_bias: int | None = None):
    """Raw out-weights of the given output rows: b [2, n, len(rows), D] and bb [n_bias, len(rows)]
    (Uniform[-1, 1], float32-rounded). Stream (seed, layer, OUT_W, h, t, k) gives b[h, t, k]."""
    b = np.empty((2, n, len(rows), D))
    for h in range(2):
        uniform_streams(seed, (layer, OUT_W, h), range(n), rows, D, -1.0, 1.0, out=b[h])
    bb = None
    if has_bias:
        nb = n if n_bias is None else n_bias
        bb = uniform_streams(seed, (layer, BIAS_OUT, 0), range(nb), rows, 1, -1.0, 1.0)[:, :, 0]
    return b, bb


# ----------------------------------------------------------------------------- the method
class BlockMethod(Method):
    """A construction on Pensia's layout. Subclasses give the mask rule (``choose``) and may map
    the raw uniform draws to another distribution (``magnitudes``)."""

    def halves(self, layer: TargetLayer) -> tuple:
        """Halves the mask rule solves (both by default)."""
        return (0, 1)

    def magnitudes(self, layer: TargetLayer):
        """Maps of the raw draws: (in-weights a, beta: magnitudes from Uniform(0, 1];
        out-weights and filler: signed from Uniform[-1, 1]). Identity: Pensia's G."""
        return None

    def choose(self, layer: TargetLayer, coef: np.ndarray, target: np.ndarray,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The mask rule: coef [N, n] coefficients, target [N] values -> (mask bool [N, n],
        the chosen sums float64 [N])."""
        raise NotImplementedError

    # ---- layout
    def tensors(self, layer: TargetLayer, size: int, plan: dict | None = None) -> list[Tensor]:
        ns = block_sizes(layer, size, plan)
        m = widen_rows_of(ns, bias_size(layer, size, plan))
        C, g = layer.channels, layer.group
        if layer.kind == "linear":
            return [Tensor("widen", (m, C), layer.has_bias),
                    Tensor("combine", (layer.d_out, m), False, per_row=1)]
        widen = Tensor("widen", (m, C, 1, 1), layer.has_bias, op="conv",
                       attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)})
        if layer.kind == "conv":
            geo = layer.geometry
            return [widen, Tensor("combine", (layer.d_out, m, *geo["kernel"]), False, per_row=1,
                                  op="conv", attrs={k: geo[k] for k in ("stride", "padding",
                                                                        "dilation")})]
        return [widen, Tensor("combine", (layer.d_out, m * g), False, per_row=1)]

    # ---- draws, mapped
    def draws(self, layer: TargetLayer, size: int, seed: int, plan=None, rows: range | None = None):
        """(a [2, n_max, C], beta [n] | None, b [2, n_max, rows, D], bb [n, rows] | None), mapped
        through ``magnitudes``; n_max = the largest block size."""
        ns = block_sizes(layer, size, plan)
        n_max = int(ns.max(initial=size))
        nb = bias_size(layer, size, plan)
        a, beta = draw_in(layer.channels, n_max, layer.has_bias, seed, layer.index, nb)
        rows = layer.rows if rows is None else rows
        b, bb = draw_out(rows, layer.d_in, n_max, layer.has_bias, seed, layer.index, nb)
        maps = self.magnitudes(layer)
        if maps is not None:
            mag, signed = maps   # elementwise: mapped in cache-sized pieces on all threads
            a, b = map_inplace(mag, a), map_inplace(signed, b)
            if beta is not None:
                beta, bb = mag(beta), signed(bb)
        return ns, a, beta, b, bb

    # ---- one chunk
    def solve(self, layer: TargetLayer, size: int, seed: int, plan=None, threads=None) -> dict:
        ns, a, beta, b, bb = self.draws(layer, size, seed, plan)
        mask, bias_mask, err = self.masks(layer, ns, a, beta, b, bb, threads)
        return self.state(layer, ns, a, beta, b, bb, mask, bias_mask, err, seed)

    def masks(self, layer: TargetLayer, ns, a, beta, b, bb, threads=None):
        """The mask rule over every block: (mask bool [2, rows, D, n_max], bias mask bool
        [rows, n_bias] | None, largest |sum - target| of weights and bias [2])."""
        rows, D, g = len(layer.rows), layer.d_in, layer.group
        chan = np.arange(D) // g
        mask = np.zeros((2, rows, D, a.shape[1]), bool)
        err = np.zeros(2)
        for h in self.halves(layer):
            target = layer.W if h == 0 else -layer.W
            for n_c in np.unique(ns):
                cols = np.flatnonzero(ns[chan] == n_c)
                # coefficient (k, j, t) = b[h, t, k, j] * a[h, t, c(j)]; exact in float64
                coef = b[h, :n_c][:, :, cols] * a[h, :n_c][:, None, chan[cols]]
                coef = np.ascontiguousarray(np.transpose(coef, (1, 2, 0))).reshape(-1, n_c)
                sub, sums = self.choose(layer, coef, target[:, cols].ravel(), threads)
                mask[h][:, cols, :n_c] = sub.reshape(rows, len(cols), n_c)
                err[0] = max(err[0], float(np.abs(sums - target[:, cols].ravel()).max(initial=0.0)))
        bias_mask = None
        if layer.has_bias:
            coef = np.ascontiguousarray(bb.T * beta[None, :])
            bias_mask, sums = self.choose(layer, coef, layer.c, threads)
            err[1] = float(np.abs(sums - layer.c).max(initial=0.0))
        return mask, bias_mask, err

    def state(self, layer: TargetLayer, ns, a, beta, b, bb, mask, bias_mask, err, seed) -> dict:
        """A solved chunk's state: packed masks, effective form, errors and counts."""
        rows, g = len(layer.rows), layer.group
        Vw, Vm = combine_rows(layer, ns, b, mask, bb, bias_mask, seed)
        col, av, bv = gadget_inputs(ns, a, beta)
        eff = combine_effective(Vw.reshape(rows, len(col), g), Vm.reshape(rows, len(col), g),
                                col, av, bv, layer.channels)
        kept = mask.sum(-1)
        state = {"mask": np.packbits(mask, axis=-1), "pos": eff.pos, "neg": eff.neg,
                 "bias": eff.bias, "max_errors": err, "used": _used(ns, mask),
                 "sum_kept": np.array([int(kept.sum())]),
                 "max_kept": np.array([int(kept.max(initial=0))])}
        if bias_mask is not None:
            state["bias_mask"] = np.packbits(bias_mask, axis=-1)
            state["used_bias"] = bias_mask.any(axis=0)
            state["sum_kept"] += int(bias_mask.sum())
            state["max_kept"] = np.maximum(state["max_kept"], bias_mask.sum(-1).max(initial=0))
        return state

    def state_shapes(self, layer: TargetLayer, size: int, plan=None) -> dict:
        ns = block_sizes(layer, size, plan)
        rows, D, nb = len(layer.rows), layer.d_in, (int(ns.max(initial=size)) + 7) // 8
        out = {"mask": (2, rows, D, nb), "pos": (rows, D), "neg": (rows, D), "bias": (rows,),
               "max_errors": (2,), "used": (2, layer.channels, int(ns.max(initial=size))),
               "sum_kept": (1,), "max_kept": (1,)}
        if layer.has_bias:
            nb = bias_size(layer, size, plan)
            out.update(bias_mask=(rows, (nb + 7) // 8), used_bias=(nb,))
        return out

    def unpack(self, state: dict, layer: TargetLayer, size: int, plan=None):
        n_max = int(block_sizes(layer, size, plan).max(initial=size))
        mask = np.unpackbits(state["mask"], axis=-1, count=n_max).astype(bool)
        bm = state.get("bias_mask")
        nb = bias_size(layer, size, plan)
        return mask, None if bm is None else np.unpackbits(bm, axis=-1, count=nb).astype(bool)

    def chunk_rows(self, layer: TargetLayer, size: int, seed: int, state: dict,
                   plan=None) -> dict[str, Rows]:
        ns, a, beta, b, bb = self.draws(layer, size, seed, plan)
        mask, bias_mask = self.unpack(state, layer, size, plan)
        Vw, Vm = combine_rows(layer, ns, b, mask, bb, bias_mask, seed)
        shape = self.tensors(layer, size, plan)[1].shape[1:]
        return {"combine": Rows(Vw.reshape(-1, *shape), Vm.reshape(-1, *shape))}

    # ---- the widen layer
    def layer_rows(self, layer: TargetLayer, size: int, seed: int, block: int | None = None,
                   plan=None):
        ns = block_sizes(layer, size, plan)
        a, beta = draw_in(layer.channels, int(ns.max(initial=size)), layer.has_bias, seed,
                          layer.index, bias_size(layer, size, plan))
        maps = self.magnitudes(layer)
        fill = None if maps is None else maps[1]
        if maps is not None:
            a = maps[0](a)
            beta = None if beta is None else maps[0](beta)
        shape = self.tensors(layer, size, plan)[0].shape[1:]
        Ub = widen_biases(beta, ns, seed, layer.index, fill)
        n_bias = 0 if beta is None else len(beta)
        for r0, U in widen_weight_rows(ns, a, n_bias, seed, layer.index, block, fill):
            yield "widen", r0, U.reshape(-1, *shape), (Ub if r0 == 0 else None)

    def layer_masks(self, layer: TargetLayer, size: int, used: dict, plan=None) -> dict:
        ns = block_sizes(layer, size, plan)
        rows, cols = widen_mask_index(ns, used["used"])
        index = (rows, cols) if layer.kind == "linear" else (rows, cols, 0 * rows, 0 * rows)
        bm = None
        if layer.has_bias:
            bm = (int(2 * ns.sum()) + np.flatnonzero(used["used_bias"]),)
        return {"widen": (index, bm)}

    def info(self, target, sizes, reduced) -> dict:
        return {"neurons_per_target_weight": [2 * k for k in sizes]}


# ----------------------------------------------------------------------------- G's rows
def _used(ns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which block neurons an out-link of these rows uses: bool [2, C, n_max]."""
    h, rows, D, n_max = mask.shape
    C = len(ns)
    return mask.reshape(2, rows, C, D // C, n_max).any(axis=(1, 3))


def combine_rows(layer: TargetLayer, ns: np.ndarray, b: np.ndarray, mask: np.ndarray,
                 bb: np.ndarray | None, bias_mask: np.ndarray | None, seed: int):
    """G's combine rows for the chunk's outputs: weights float32 [rows, m, group] and the mask
    bool [rows, m, group], from out-weights b [2, n_max, rows, D], chosen links mask
    [2, rows, D, n_max] (and bb [n, rows], bias_mask [rows, n])."""
    rows, g, C = b.shape[2], layer.group, layer.channels
    off = offsets(ns)
    n_bias = 0 if bb is None else bb.shape[0]
    m = int(off[-1]) + n_bias
    Vw = np.empty((rows, m, g), np.float32)
    Vm = np.zeros((rows, m, g), bool)
    if (ns == ns[0]).all():   # uniform blocks: one transpose
        n = int(ns[0]) if C else 0
        Vw[:, :off[-1]] = np.transpose(b[:, :n].reshape(2, n, rows, C, g),
                                       (2, 3, 0, 1, 4)).reshape(rows, -1, g)
        Vm[:, :off[-1]] = np.transpose(mask[..., :n].reshape(2, rows, C, g, n),
                                       (1, 2, 0, 4, 3)).reshape(rows, -1, g)
    else:
        for c in range(C):
            n_c, j = int(ns[c]), slice(c * g, (c + 1) * g)
            Vw[:, off[c]:off[c + 1]] = np.transpose(b[:, :n_c, :, j], (2, 0, 1, 3)).reshape(rows, -1, g)
            Vm[:, off[c]:off[c + 1]] = np.transpose(mask[:, :, j, :n_c], (1, 0, 3, 2)).reshape(rows, -1, g)
    if bb is not None:
        tap = bias_tap(layer)
        if g > 1:
            for i, k in enumerate(layer.rows):
                Vw[i, off[-1]:] = f32(stream(seed, layer.index, FILL_TAP, 0, 0, k).uniform(
                    -1.0, 1.0, (n_bias, g)))
        Vw[:, off[-1]:, tap] = bb.T
        Vm[:, off[-1]:, tap] = bias_mask
    return Vw, Vm


def gadget_inputs(ns: np.ndarray, a: np.ndarray, beta: np.ndarray | None, halves: int = 2):
    """``ticket.effective.widen_inputs`` of the widen layer for every neuron an out-link may
    use: neuron (c, h, t) keeps channel c with weight +-a[h, t, c] (float32), the bias block its
    bias. (Unused neurons are pruned in G, so their entries here never count.) ``halves``: 1
    for a layer with only the positive half (Burkholz's copy layer on a nonnegative box)."""
    C = len(ns)
    rows = [(1.0 if h == 0 else -1.0) * a[h, :ns[c], c] for c in range(C) for h in range(halves)]
    av = (np.concatenate(rows) if rows else np.zeros(0)).astype(np.float32).astype(np.float64)
    col = np.repeat(np.arange(C), halves * np.asarray(ns))
    bv = np.zeros(len(av))
    if beta is not None:
        col = np.concatenate([col, np.full(len(beta), -1)])
        av = np.concatenate([av, np.zeros(len(beta))])
        bv = np.concatenate([bv, np.maximum(beta.astype(np.float32).astype(np.float64), 0.0)])
    return col, av, bv


def widen_weight_rows(ns: np.ndarray, a: np.ndarray, n_bias: int, seed: int, layer: int,
                      block: int | None = None, fill=None):
    """G's widen weights float32 [m, C] (filler draws, float32-rounded and mapped by ``fill``,
    with +-a on each channel's block; n_bias rows of the bias block last), ``block`` rows at a
    time (all at once: None): yields (first row, rows). One stream, drawn in order, so the
    blocks are the rows of the one-piece draw exactly."""
    C = len(ns)
    off = offsets(ns)
    m = widen_rows_of(ns, n_bias)
    g = stream(seed, layer, FILL_W, 0, 0, 0)
    chan = np.repeat(np.arange(C), 2 * ns)
    within = np.arange(int(off[-1])) - off[chan]
    half, t = within // np.repeat(ns, 2 * ns), within % np.repeat(ns, 2 * ns)
    vals = (np.where(half == 0, 1.0, -1.0) * a[half, t, chan]).astype(np.float32)
    for r0 in range(0, m, block or max(m, 1)):
        r1 = min(m, r0 + (block or m))
        U = g.uniform(-1.0, 1.0, (r1 - r0, C))
        U = (U if fill is None else fill(f32(U))).astype(np.float32)
        r = np.arange(r0, min(r1, int(off[-1])))
        U[r - r0, chan[r]] = vals[r]
        yield r0, U


def widen_biases(beta: np.ndarray | None, ns: np.ndarray, seed: int, layer: int, fill=None):
    """The widen layer's biases float32 [m] (filler, float32-rounded and mapped by ``fill``;
    beta on the bias block), or None."""
    if beta is None:
        return None
    m_blocks = int(2 * ns.sum())
    Ub = stream(seed, layer, FILL_B, 0, 0, 0).uniform(-1.0, 1.0, m_blocks + len(beta))
    Ub = (Ub if fill is None else fill(f32(Ub))).astype(np.float32)
    Ub[m_blocks:] = beta.astype(np.float32)
    return Ub


def widen_mask_index(ns: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the widen layer's kept in-weights: neuron (c, h, t) keeps channel c when
    ``used[h, c, t]`` (bool [2, C, n_max])."""
    h, c, t = np.nonzero(used)
    keep = t < ns[c]
    h, c, t = h[keep], c[keep], t[keep]
    rows = offsets(ns)[c] + h * ns[c] + t
    order = np.argsort(rows, kind="stable")
    return rows[order], c[order]
