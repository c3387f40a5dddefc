"""Burkholz (NeurIPS 2022): G of depth l + 1 for a target of depth l, by copies of every unit.

"Most activation functions can win the lottery without excessive depth". For a target
z_{i+1} = W_i relu(z_i) + c_i (i = 0 .. l-1, z_0 = x), G has one more layer than F:

* G layer 0, the copy layer: Pensia's widen layer for the target's first layer. Input channel c
  owns a block of H rho_0 neurons, rho_0 with in-weight +a and (with H = 2) rho_0 with -a,
  a ~ Uniform(0, 1]; with a bias on the first layer, a bias block of rho_0 neurons keeping only
  their bias beta ~ Uniform(0, 1]. Neuron (c, h, t) is row (c H + h) rho_0 + t; the bias block
  comes last. On a nonnegative box (``halves="auto"``) H = 1: relu(-a x) = 0 there, so the
  negative half would be dead weight.
* G layer i + 1 (i = 0 .. l-1) holds rho_{i+1} copies of every output unit of target layer i
  (one copy of each output for the last layer): carrier (o, m) is row o rho_{i+1} + m (a
  convolution: channel o rho_{i+1} + m; copies of a channel are adjacent channels). Copy m of
  unit o is a SubsetSum approximation of z_{i+1, o}:
  - i = 0: W[o, j] is one SubsetSum over the coefficients b a of input j's positive half (target
    W[o, j]) and one over its negative half (target -W[o, j]); c_o one over the bias block's
    b beta - Pensia's, but with out-weights b of their own for every carrier (o, m).
  - i >= 1: the inputs are the rho_i carriers (j, k) of every input unit j, all ~ relu(z_{i, j})
    (post-ReLU), so W[o, j] is one SubsetSum over the rho_i random weights V[(o, m), (j, k)],
    k < rho_i, themselves (Uniform[-1, 1]); c_o one over V[(o, m), const_q] beta_q, where the
    previous G layer ends with rho_i constant neurons: in-weights all pruned, bias
    beta_q ~ Uniform(0, 1] kept, so relu(beta_q) = beta_q. They are whole-layer rows after the
    carriers (``Tensor.extra_rows``) and exist only where the next target layer has a bias.
  A convolution does the same per kernel entry (each copy of an output channel is a SubsetSum
  over the copies of each input channel, per tap); a constant channel feeds the next convolution
  through one tap that reads inside the map at every output position (``blocks.bias_tap``), and
  survives ReLU, max pooling, average pooling without counted padding and flatten. Pooling and
  flatten are copied into G (they act per channel, so on carriers too).

Sizes. One size per target layer: rho_i, the SubsetSum size of layer i's weights = the copies of
its input units (rho_0: the copy layer's block size). Layer i's hooks get (rho_i, rho_{i+1})
(``layer_sizes``; rho_l = 1). Random weights per target weight: H rho_0 rho_1 in layer 0 (the
copy layer's block neurons, shared by all outputs, add H rho_0 per input) and rho_i rho_{i+1}
in layer i >= 1 - about rho^2, against Pensia's 2 n, in one layer less.

Draws: every weight from its own seeded stream (``_common.stream``), keyed by what it belongs to:
the copy layer's a, beta and filler are Pensia's (``blocks.draw_in``; kinds IN_W, BIAS_IN,
FILL_W, FILL_B); carrier (o, m) of target layer i draws its weights from the input carriers as
one array [rho_i, H, D] t-major (stream (seed, i, OUT, o, m)) and from the constant neurons as
[rho_i, taps] (stream (seed, i, CONST_OUT, o, m)), so G at rho is a prefix of G at rho + 1 in
every carrier, and any chunk of output units is solved and written on its own; constant neuron q
of the G layer written with target layer i has bias (seed, i, CONST_BETA, q) and filler in-weights
(seed, i, CONST_IN, q); carriers' pruned biases (seed, i, ROW_BIAS, o). Chunked = unchunked,
distributed = local, byte for byte.

Effective form (``ticket.effective``): target layer 0 is an ``EffectiveLayer`` whose rows are the
output carriers (read as Pensia's widen/combine pair); layers i >= 1 are ``EffectiveCopies``
(S: kept weights from input carriers to output carriers, P: S summed over the copies of each
input, bias from the constant neurons), which the certification carries copy by copy.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import SlthError
from ..subsetsum import solve as subset_solve
from ..ticket.effective import EffectiveCopies, EffectiveLayer, combine_effective, copies_effective
from ._common import f32, stream
from .base import Method, Rows, Size, TargetLayer, Tensor, check, option, register, target_layers
from .blocks import FILL_B, FILL_W, bias_tap, draw_in, gadget_inputs

RHO_MAX = 40                         # the exact SubsetSum solver's largest size
MAX_DENSE = 400_000_000              # entries of one dense layer of G (carriers out x in)
OUT, CONST_OUT, ROW_BIAS, CONST_IN, CONST_BETA = 20, 21, 22, 23, 24     # stream kinds
BATCH = 1 << 22                      # coefficients per SubsetSum call (bounds working memory)
PATH_OPS = ("relu", "maxpool", "avgpool", "adaptive_avgpool", "flatten")


@dataclass(frozen=True)
class Settings:
    halves: str = option("auto", "burkholz: halves of the copy layer: auto (only the positive "
                                 "half on a nonnegative box, where relu(-a x) = 0) or both.",
                         choices=("auto", "both"))
    max_dense: int = option(MAX_DENSE, "burkholz: refuse sizes at which one layer of G (carriers "
                                       "out x carriers in) has more entries.")
    delta: float = option(0.1, "orseau, malach, burkholz: failure probability of the theory "
                               "sizes.")
    # resolved for a target by Burkholz.configure (not options)
    n_halves: int | None = option(None, "", cli=False)
    next_bias: tuple | None = option(None, "", cli=False)
    domain: tuple | None = option(None, "", cli=False)

    def __post_init__(self):
        check(self.halves in ("auto", "both"),
              f"--halves must be 'auto' or 'both', got {self.halves!r}")
        check(self.max_dense >= 1, f"--max-dense must be >= 1, got {self.max_dense}")
        check(0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")


# ----------------------------------------------------------------------------- draws
def carrier_draws(layer: TargetLayer, r_in: int, H: int, seed: int, carriers, n_const: int):
    """Raw weights of the given carriers [(o, m)]: w [len, r_in, H, D] (from the input carriers,
    Uniform[-1, 1], float32-rounded; t-major, so a prefix in r_in) and wc [len, n_const, taps]
    (from the constant neurons: the copy layer's bias block for layer 0)."""
    D, g = layer.d_in, layer.group
    w = np.empty((len(carriers), r_in, H, D))
    wc = np.empty((len(carriers), n_const, g))
    for i, (o, m) in enumerate(carriers):
        w[i] = f32(stream(seed, layer.index, OUT, o, m).uniform(-1.0, 1.0, (r_in, H, D)))
        if n_const:
            wc[i] = f32(stream(seed, layer.index, CONST_OUT, o, m).uniform(-1.0, 1.0,
                                                                          (n_const, g)))
    return w, wc


def const_betas(seed: int, layer: int, n: int) -> np.ndarray:
    """Biases beta_q of the n constant neurons of the G layer written with target layer
    ``layer`` (Uniform(0, 1], float32-rounded)."""
    return np.array([f32(stream(seed, layer, CONST_BETA, q).uniform(0.0, 1.0)) for q in range(n)])


# ----------------------------------------------------------------------------- the method
@register("burkholz")
class Burkholz(Method):
    """Copies of every unit: G of depth l + 1 (module docstring)."""

    Settings = Settings
    size = Size("rho", "rho_per_layer", 1, RHO_MAX, 8, "copies per unit (SubsetSum size)",
                growth="log")
    work = "SubsetSum"
    effective_keys = ("bias", "pos", "neg", "S", "P")

    # ---- structure
    def configure(self, target, eps, domain=None):
        layers = target_layers(target)
        _check_chain(target, layers)
        nb = tuple(bool(L.has_bias) for L in layers[1:]) + (False,)
        for L in layers:
            if L.has_bias and L.kind == "conv":
                bias_tap(L)
        s = self.settings
        H = 2
        if s.halves == "auto" and domain is not None and domain.kind == "box" and domain.lo >= 0:
            H = 1
        dom = None if domain is None else (("ball", domain.radius) if domain.kind == "ball"
                                           else ("box", domain.lo, domain.hi))
        return type(self)(dataclasses.replace(s, n_halves=H, next_bias=nb, domain=dom))

    @property
    def configured(self) -> bool:
        return self.settings.next_bias is not None

    def _need(self):
        if not self.configured:
            raise SlthError("burkholz: the method must be configured for its target first "
                            "(method.configure(target, eps, domain))")

    def halves_of(self, layer: TargetLayer) -> int:
        self._need()
        return self.settings.n_halves if layer.index == 0 else 1

    def n_const(self, layer: TargetLayer, r_out: int) -> int:
        """Constant neurons after the carriers of this layer's G tensor (for the next layer's
        bias)."""
        self._need()
        return r_out if self.settings.next_bias[layer.index] else 0

    def layer_sizes(self, sizes):
        rho = [int(k) for k in sizes]
        return [(rho[i], rho[i + 1] if i + 1 < len(rho) else 1) for i in range(len(rho))]

    def in_units(self, layer: TargetLayer, r_in: int) -> int:
        """Input neurons of the layer's G tensor (channels for a convolution / flattened map)."""
        C = layer.channels
        if layer.index == 0:
            return self.halves_of(layer) * r_in * C + (r_in if layer.has_bias else 0)
        return C * r_in + (r_in if layer.has_bias else 0)

    def tensors(self, layer: TargetLayer, size, plan=None) -> list[Tensor]:
        r_in, r_out = size
        C, g = layer.channels, layer.group
        m = self.in_units(layer, r_in)
        nc = self.n_const(layer, r_out)
        rows = layer.d_out * r_out + nc
        out = []
        if layer.index == 0:
            rows0 = self.in_units(layer, r_in)
            if layer.kind == "linear":
                out.append(Tensor("copy", (rows0, C), layer.has_bias))
            else:
                out.append(Tensor("copy", (rows0, C, 1, 1), layer.has_bias, op="conv",
                                  attrs={"stride": (1, 1), "padding": (0, 0),
                                         "dilation": (1, 1)}))
        if layer.kind == "conv":
            geo = layer.geometry
            out.append(Tensor("layer", (rows, m, *geo["kernel"]), nc > 0, per_row=r_out,
                              op="conv", attrs={k: geo[k] for k in ("stride", "padding",
                                                                    "dilation")},
                              extra_rows=nc))
        else:
            out.append(Tensor("layer", (rows, m * g), nc > 0, per_row=r_out, extra_rows=nc))
        return out

    def g_params(self, target, sizes) -> int:
        m = self if self.configured else self.configure(target, None)
        return sum(t.params for L, k in zip(target_layers(target), m.layer_sizes(sizes))
                   for t in m.tensors(L, k))

    # ---- sizes and memory
    def dense_entries(self, target, sizes) -> list[tuple[int, int]]:
        """Per layer, (rows, columns) of its largest dense array: G's layer tensor (carriers out
        x carriers in) or the effective form."""
        # unconfigured (no domain yet): count one half, the least; build checks again configured
        from ..certify import Domain
        m = self if self.configured else self.configure(target, None, Domain())
        out = []
        for L, (r_in, r_out) in zip(target_layers(target), m.layer_sizes(sizes)):
            out.append((L.d_out * r_out + m.n_const(L, r_out), m.in_units(L, r_in) * L.group))
        return out

    def size_range(self, target) -> tuple[int, int]:
        hi = RHO_MAX
        while hi > 1 and max(a * b for a, b in self.dense_entries(target, [hi] * target.depth)) \
                > self.settings.max_dense:
            hi -= 1
        return 1, hi

    def check_sizes(self, target, sizes) -> list[int]:
        L = target.depth
        ns = [int(sizes)] * L if np.ndim(sizes) == 0 else [int(k) for k in sizes]
        if len(ns) != L:
            raise SlthError(f"--n gave {len(ns)} sizes for a target of {L} layers")
        if any(not 1 <= k <= RHO_MAX for k in ns):
            raise SlthError(f"burkholz: sizes (copies per unit, the SubsetSum size) must be "
                            f"between 1 and {RHO_MAX}, got {ns}")
        self.too_dense(target, ns)
        return ns

    def too_dense(self, target, ns, why: str = "") -> None:
        for i, (a, b) in enumerate(self.dense_entries(target, ns)):
            if a * b > self.settings.max_dense:
                raise SlthError(f"burkholz: {why}rho_per_layer {ns} makes G's layer {i + 1} "
                                f"{a:,} x {b:,} = {a * b:,} entries (~{a * b * 13 / 2**30:.1f} GiB "
                                f"to build and run), over --max-dense "
                                f"{self.settings.max_dense:,}; use smaller sizes, a larger "
                                "--eps, or raise --max-dense")

    def unreachable(self, target, eps, sizes, bound):
        if sizes[0] < RHO_MAX:
            self.too_dense(target, [sizes[0] + 1] * target.depth,
                           f"eps={eps:g} is not reached at rho {sizes[0]} (certified bound "
                           f"{bound:.3g}); ")

    # ---- draws shared by solve and chunk_rows
    def _inputs(self, layer: TargetLayer, r_in: int, seed: int):
        """What the carriers read besides their own weights: (halves H, a [2, r_in, C] or None,
        the constant neurons' values or None, the copy layer's ``widen_inputs`` or None,
        number of constant neurons)."""
        H = self.halves_of(layer)
        n_const = r_in if layer.has_bias else 0
        if layer.index == 0:
            a, beta = draw_in(layer.channels, r_in, layer.has_bias, seed, 0)
            const = None if beta is None else np.maximum(beta, 0.0)
            return H, a, const, gadget_inputs(np.full(layer.channels, r_in), a, beta, H), n_const
        const = const_betas(seed, layer.index - 1, n_const) if n_const else None
        return H, None, const, None, n_const

    def _rows(self, layer: TargetLayer, r_in: int, w: np.ndarray, wc: np.ndarray,
              mask: np.ndarray, bias_mask: np.ndarray | None):
        """G's rows of some carriers: weights float32 [rows, m, taps] and mask bool (same), from
        their draws w [rows, r_in, H, D], wc [rows, n_const, taps] and chosen links mask
        [rows, H, D, r_in] (bias_mask [rows, n_const])."""
        rows, H, C, g = w.shape[0], w.shape[2], layer.channels, layer.group
        m = self.in_units(layer, r_in)
        Vw = np.empty((rows, m, g), np.float32)
        Vm = np.zeros((rows, m, g), bool)
        k = C * H * r_in
        # neuron (c, h, t) <- draw [t, h, c * g + s]
        Vw[:, :k] = np.transpose(w.reshape(rows, r_in, H, C, g),
                                 (0, 3, 2, 1, 4)).reshape(rows, k, g)
        Vm[:, :k] = np.transpose(mask.reshape(rows, H, C, g, r_in),
                                 (0, 2, 1, 4, 3)).reshape(rows, k, g)
        if wc.shape[1]:
            Vw[:, k:] = wc
            Vm[:, k:, bias_tap(layer)] = bias_mask
        return Vw, Vm

    def _solve_copies(self, layer: TargetLayer, r_in: int, m0: int, m1: int, seed: int,
                      threads=None) -> dict:
        """Copies m0 <= m < m1 of every unit of the chunk, solved: per-carrier arrays with
        leading dimensions [units, m1 - m0] (packed masks, effective rows, errors, kept)."""
        H, a, const, inputs, n_const = self._inputs(layer, r_in, seed)
        D, g, C = layer.d_in, layer.group, layer.channels
        k = m1 - m0
        carriers = [(o, m) for o in layer.rows for m in range(m0, m1)]
        rows = len(carriers)
        unit = np.repeat(np.arange(len(layer.rows)), k)              # carrier -> row of layer.W
        chan = np.arange(D) // g
        out = {"mask": np.zeros((rows, H, D, (r_in + 7) // 8), np.uint8),
               "err": np.zeros((rows, 2)), "kept": np.zeros(rows, np.int64),
               "bias": np.zeros(rows)}
        if n_const:
            out["bias_mask"] = np.zeros((rows, (n_const + 7) // 8), np.uint8)
        first = layer.index == 0
        for key, cols in (("pos", D), ("neg", D)) if first else (("S", D * r_in), ("P", D)):
            out[key] = np.zeros((rows, cols))
        block = max(1, BATCH // max(1, H * D * r_in))
        for b0 in range(0, rows, block):
            sel = slice(b0, min(rows, b0 + block))
            w, wc = carrier_draws(layer, r_in, H, seed, carriers[sel], n_const)
            mask = np.zeros((w.shape[0], H, D, r_in), bool)
            for h in range(H):
                coef = w[:, :, h, :]                                  # [b, r_in, D]
                if first:
                    coef = coef * a[h, :r_in][None, :, chan]          # b a, exact in float64
                coef = np.ascontiguousarray(np.transpose(coef, (0, 2, 1))).reshape(-1, r_in)
                want = (1.0 if h == 0 else -1.0) * layer.W[unit[sel]].ravel()
                r = subset_solve(coef, want, threads=threads)
                mask[:, h] = r.mask.reshape(-1, D, r_in)
                out["err"][sel, 0] = np.maximum(out["err"][sel, 0], np.abs(
                    r.sums - want).reshape(-1, D).max(1, initial=0.0))
            bm = None
            if n_const:
                coef = np.ascontiguousarray(wc[:, :, bias_tap(layer)] * const[None, :])
                r = subset_solve(coef, layer.c[unit[sel]], threads=threads)
                bm = r.mask
                out["bias_mask"][sel] = np.packbits(bm, axis=-1)
                out["err"][sel, 1] = np.abs(r.sums - layer.c[unit[sel]])
            out["mask"][sel] = np.packbits(mask, axis=-1)
            out["kept"][sel] = mask.reshape(len(mask), -1).sum(1) + (0 if bm is None
                                                                     else bm.sum(1))
            Vw, Vm = self._rows(layer, r_in, w, wc, mask, bm)
            if first:
                eff = combine_effective(Vw, Vm, *inputs, C)
                out["pos"][sel], out["neg"][sel], out["bias"][sel] = eff.pos, eff.neg, eff.bias
            else:
                eff = copies_effective(Vw, Vm, const, C, r_in, 1)
                out["S"][sel], out["P"][sel], out["bias"][sel] = eff.S, eff.P, eff.bias
        return {key: v.reshape(len(layer.rows), k, *v.shape[1:]) for key, v in out.items()}

    # ---- one chunk
    def solve(self, layer: TargetLayer, size, seed: int, plan=None, threads=None) -> dict:
        """The chunk's copies (o, m), m < r_out, of every unit. A carrier's solution depends on
        (its unit, m, r_in, seed) only, so copies solved for a larger r_out are reused (a
        process-local memo: the --eps search tries r_out = r, r - 1, ... at one r_in)."""
        r_in, r_out = size
        key = _memo_key(layer, r_in, self.halves_of(layer), seed)
        have = _memo_get(key)
        if have is None or have["mask"].shape[1] < r_out:
            m0 = 0 if have is None else have["mask"].shape[1]
            new = self._solve_copies(layer, r_in, m0, r_out, seed, threads)
            have = new if have is None else {k: np.concatenate([have[k], new[k]], axis=1)
                                             for k in new}
            _memo_put(key, have)
        per = {k: v[:, :r_out].reshape(-1, *v.shape[2:]) for k, v in have.items()}
        rows = len(per["bias"])
        first = layer.index == 0
        H, C, g = self.halves_of(layer), layer.channels, layer.group
        state = {"mask": per["mask"], "bias": per["bias"],
                 "max_errors": per["err"].max(axis=0, initial=0.0),
                 "sum_kept": np.array([int(per["kept"].sum())])}
        if "bias_mask" in per:
            state["bias_mask"] = per["bias_mask"]
        empty = np.zeros((rows, 0))
        if first:
            state.update(pos=per["pos"], neg=per["neg"], S=empty, P=empty)
            mask = np.unpackbits(per["mask"], axis=-1, count=r_in).astype(bool)
            state["used"] = mask.reshape(rows, H, C, g, r_in).any(axis=(0, 3))
            if "bias_mask" in per:
                state["used_bias"] = np.unpackbits(per["bias_mask"], axis=-1,
                                                   count=r_in).astype(bool).any(axis=0)
        else:
            state.update(S=per["S"], P=per["P"], pos=empty, neg=empty.copy())
        return state

    def state_shapes(self, layer: TargetLayer, size, plan=None) -> dict:
        r_in, r_out = size
        rows, D, H = len(layer.rows) * r_out, layer.d_in, self.halves_of(layer)
        n_const = r_in if layer.has_bias else 0
        first = layer.index == 0
        out = {"mask": (rows, H, D, (r_in + 7) // 8), "max_errors": (2,), "sum_kept": (1,),
               "bias": (rows,), "pos": (rows, D if first else 0), "neg": (rows, D if first else 0),
               "S": (rows, 0 if first else D * r_in), "P": (rows, 0 if first else D)}
        if n_const:
            out["bias_mask"] = (rows, (n_const + 7) // 8)
        if first:
            out["used"] = (H, layer.channels, r_in)
            if n_const:
                out["used_bias"] = (n_const,)
        return out

    def effective_of(self, layer: TargetLayer, size, arrays: dict):
        if layer.index == 0:
            return EffectiveLayer(arrays["pos"], arrays["neg"], arrays["bias"])
        return EffectiveCopies(arrays["S"], arrays["P"], arrays["bias"], size[0], size[1])

    def chunk_rows(self, layer: TargetLayer, size, seed: int, state: dict,
                   plan=None) -> dict[str, Rows]:
        r_in, r_out = size
        H, _, _, _, n_const = self._inputs(layer, r_in, seed)
        carriers = [(o, m) for o in layer.rows for m in range(r_out)]
        mask = np.unpackbits(state["mask"], axis=-1, count=r_in).astype(bool)
        bm = (np.unpackbits(state["bias_mask"], axis=-1, count=n_const).astype(bool)
              if n_const else None)
        w, wc = carrier_draws(layer, r_in, H, seed, carriers, n_const)
        Vw, Vm = self._rows(layer, r_in, w, wc, mask, bm)
        Vb = Vbm = None
        if self.n_const(layer, r_out):      # the tensor has biases (for its constant neurons)
            Vb = np.array([f32(stream(seed, layer.index, ROW_BIAS, o).uniform(-1.0, 1.0, r_out))
                           for o in layer.rows], np.float32).reshape(-1)
            Vbm = np.zeros(len(Vb), bool)
        shape = self.tensors(layer, size)[-1].shape[1:]
        return {"layer": Rows(Vw.reshape(-1, *shape), Vm.reshape(-1, *shape), Vb, Vbm)}

    # ---- whole-layer tensors: the copy layer, the constant neurons
    def layer_rows(self, layer: TargetLayer, size, seed: int, block: int | None = None,
                   plan=None):
        r_in, r_out = size
        tens = self.tensors(layer, size)
        if layer.index == 0:
            H, C = self.halves_of(layer), layer.channels
            a, beta = draw_in(C, r_in, layer.has_bias, seed, 0)
            shape = tens[0].shape[1:]
            Ub = None
            if beta is not None:
                nb = H * r_in * C
                Ub = f32(stream(seed, 0, FILL_B, 0, 0, 0).uniform(-1.0, 1.0, nb + len(beta)))
                Ub = Ub.astype(np.float32)
                Ub[nb:] = beta.astype(np.float32)
            for r0, U in copy_weight_rows(C, r_in, H, a, 0 if beta is None else len(beta),
                                          seed, block):
                yield "copy", r0, U.reshape(-1, *shape), (Ub if r0 == 0 else None)
        nc = self.n_const(layer, r_out)
        if nc:
            t = tens[-1]
            inner = int(np.prod(t.shape[1:]))
            W = np.stack([f32(stream(seed, layer.index, CONST_IN, q).uniform(-1.0, 1.0, inner))
                          for q in range(nc)]).astype(np.float32)
            yield ("layer", layer.d_out * r_out, W.reshape(nc, *t.shape[1:]),
                   const_betas(seed, layer.index, nc).astype(np.float32))

    def layer_masks(self, layer: TargetLayer, size, used: dict, plan=None) -> dict:
        r_in, r_out = size
        out = {}
        tens = self.tensors(layer, size)
        if layer.index == 0:
            H = self.halves_of(layer)
            c, h, t = np.nonzero(np.transpose(used["used"], (1, 0, 2)))   # [C, H, r_in]
            rows = (c * H + h) * r_in + t
            index = (rows, c) if layer.kind == "linear" else (rows, c, 0 * rows, 0 * rows)
            bm = None
            if layer.has_bias:
                bm = (H * r_in * layer.channels + np.flatnonzero(used["used_bias"]),)
            out["copy"] = (index, bm)
        nc = self.n_const(layer, r_out)
        if nc:
            nd = len(tens[-1].shape)
            none = tuple(np.zeros(0, np.int64) for _ in range(nd))
            out["layer"] = (none, (layer.d_out * r_out + np.arange(nc),))
        return out

    # ---- G's graph
    def graph(self, target, layers, tensors) -> dict:
        from .layout import _jsonable_attrs, _prune, graph_builder

        nodes = target.nodes
        out, where, by_layer, add = graph_builder(target, tensors)
        gadgets, prev = [], None
        for i, nd in enumerate(nodes[1:], start=1):
            if nd.op not in ("linear", "conv"):
                where[i] = add(nd.op, [where[j] for j in nd.inputs], _jsonable_attrs(nd.attrs))
                continue
            k = target.affine.index(i)
            L, src = layers[k], nd.inputs[0]
            js = by_layer[k]
            t = tensors[js[-1]][1]
            r_out, nc = t.per_row, t.extra_rows
            gd = {"kind": "copies", "layer": js[-1], "channels": L.channels, "group": L.group,
                  "copies_out": r_out, "carriers": L.d_out * r_out}
            if k == 0:
                h = where[nodes[src].inputs[0]] if L.kind == "flat" else where[src]
                u = tensors[js[0]][1]
                h = add(u.op, [h], _jsonable_attrs(u.attrs), layer=js[0])
                h = add("relu", [h])
                if L.kind == "flat":
                    h = add("flatten", [h])
                gd["widen"] = js[0]
            else:
                h = where[src]
                pt = tensors[prev][1]
                gd.update(prev=prev, copies_in=pt.per_row, const_in=pt.extra_rows if L.has_bias
                          else 0, prev_carriers=pt.shape[0] - pt.extra_rows)
            where[i] = add(t.op, [h], _jsonable_attrs(t.attrs), layer=js[-1])
            gadgets.append(gd)
            prev = js[-1]
            del nc
        return {"nodes": _prune(out), "gadgets": gadgets}

    # ---- reports
    def describe(self) -> dict:
        s = self.settings
        out = {"halves": s.halves, "max_dense": s.max_dense, "delta": s.delta}
        if s.n_halves is not None:
            out["copy_layer_halves"] = s.n_halves
        return out

    def info(self, target, sizes, reduced) -> dict:
        kept = sum(int(r["sum_kept"][0]) for r in reduced)
        return {"g_depth": target.depth + 1,
                "copies_per_layer": [k for _, k in self.layer_sizes(sizes)],
                "kept_coefficients_per_target_weight": kept / max(1, target.n_params)}

    def theory(self, target, eps: float) -> dict:
        return theory(self, target, eps, self.settings.delta)


# ----------------------------------------------------------------------------- the memo
_MEMO: dict = {}
_MEMO_LOCK = threading.Lock()
MEMO_BYTES = 1 << 30            # solved copies kept per process (oldest dropped first)


def _memo_key(layer: TargetLayer, r_in: int, H: int, seed: int) -> tuple:
    """Everything a chunk's copies depend on: the layer's rows (their weights, biases, shape,
    position and geometry), r_in, the halves and the seed."""
    import hashlib
    h = hashlib.sha1(np.ascontiguousarray(layer.W).tobytes())
    if layer.c is not None:
        h.update(np.ascontiguousarray(layer.c).tobytes())
    return (layer.index, layer.r0, layer.W.shape, layer.kind, layer.group,
            repr(sorted(layer.geometry.items())), r_in, H, int(seed), h.hexdigest())


def _memo_get(key: tuple):
    with _MEMO_LOCK:
        return _MEMO.get(key)


def _memo_put(key: tuple, value: dict) -> None:
    with _MEMO_LOCK:
        _MEMO.pop(key, None)
        _MEMO[key] = value
        size = lambda v: sum(a.nbytes for a in v.values())  # noqa: E731
        while len(_MEMO) > 1 and sum(size(v) for v in _MEMO.values()) > MEMO_BYTES:
            _MEMO.pop(next(iter(_MEMO)))


# ----------------------------------------------------------------------------- the copy layer
def copy_weight_rows(C: int, n: int, H: int, a: np.ndarray, n_bias: int, seed: int,
                     block: int | None = None):
    """The copy layer's weights float32 [m, C], ``block`` rows at a time: filler (Pensia's
    stream, drawn in order, so blocks are rows of the one-piece draw) with +-a[h, t, c] on
    neuron (c, h, t) = row (c H + h) n + t; the bias block's n_bias rows last. With H = 2 this
    is Pensia's widen layer (``blocks.widen_weight_rows``)."""
    m = H * n * C + n_bias
    g = stream(seed, 0, FILL_W, 0, 0, 0)
    r = np.arange(H * n * C)
    c, h, t = r // (H * n), (r // n) % H, r % n
    vals = (np.where(h == 0, 1.0, -1.0) * a[h, t, c]).astype(np.float32)
    for r0 in range(0, m, block or max(m, 1)):
        r1 = min(m, r0 + (block or m))
        U = g.uniform(-1.0, 1.0, (r1 - r0, C)).astype(np.float32)
        rr = np.arange(r0, min(r1, H * n * C))
        U[rr - r0, c[rr]] = vals[rr]
        yield r0, U


# ----------------------------------------------------------------------------- structure
def _check_chain(target, layers) -> None:
    """Refuse, in one line, targets this construction does not build: branches (residual adds,
    shortcuts, channel padding), a first layer that does not read the input, a layer whose input
    is not post-ReLU, constant channels that cannot reach a biased layer."""
    nodes = target.nodes
    users = [0] * len(nodes)
    for nd in nodes:
        for j in nd.inputs:
            users[j] += 1
    for i, nd in enumerate(nodes):
        if nd.op in ("add", "pad_channels", "subsample") or users[i] > 1:
            raise SlthError("burkholz: residual networks (adds, shortcuts, channel padding) are "
                            "not built: an add needs both branches to carry the same copies of "
                            "every channel and the same constant channels for the biases, which "
                            "this layout does not arrange; use --method pensia or orseau")
    for k, i in enumerate(target.affine):
        j, path = nodes[i].inputs[0], []
        while nodes[j].op not in ("input", "linear", "conv"):
            if nodes[j].op not in PATH_OPS:
                raise SlthError(f"burkholz: op {nodes[j].op!r} before layer {k} is not supported")
            path.append(nodes[j])
            j = nodes[j].inputs[0]
        if k == 0:
            if any(p.op != "flatten" for p in path):
                raise SlthError("burkholz: the target's first layer must read the input itself "
                                "(at most through a flatten); its copy layer needs the raw input")
            continue
        if not any(p.op == "relu" for p in path):
            raise SlthError(f"burkholz: layer {k} reads a value without a ReLU after layer "
                            f"{k - 1}; copies need post-ReLU (nonnegative) inputs")
        if layers[k].has_bias:
            for p in path:
                if p.op == "avgpool" and max(p.attrs["padding"]) > 0 and \
                        p.attrs["count_include_pad"]:
                    raise SlthError(f"burkholz: the average pooling before layer {k} counts its "
                                    "zero padding, so a constant channel does not stay constant "
                                    f"and layer {k}'s bias cannot be built; use --method pensia")


# ----------------------------------------------------------------------------- theory
AUTHORS_C = 2.7      # LT-existence's own reading of C (main_ssa_stats.py::expC, natural log)


def theory(method: Burkholz, target, eps: float, delta: float = 0.1) -> dict:
    """The theorem's copies per layer for this target, beside ours (``theory_rho``), with G's
    size at those copies."""
    dom = method.settings.domain
    H = method.settings.n_halves or 2
    rho, eta, n_ss = theory_rho(target, eps, delta, _domain(dom), H)
    authors = [math.ceil(AUTHORS_C * math.log(1 / min(e, delta / n_ss))) for e in eta]
    return {"theory_rho_per_layer": rho, "theory_eta_per_layer": eta,
            "theory_n_subsetsums": n_ss, "theory_delta": delta,
            "theory_rho_per_layer_authors_c": authors,
            "theory_random_params": method.g_params(target, rho),
            "theory_note": THEORY_NOTE}


THEORY_NOTE = ("rho_i = ceil(log2(1 / min(eta_i, delta / N_SS))) copies per unit (C = 1, one bit "
               "per coefficient, as for pensia), fixpoint over N_SS = sum_i (H_i nnz(W_i) + "
               "nnz(c_i)) rho_{i+1} SubsetSums (union bound; H_0 halves, rho_l = 1) and "
               "eta_i = eps / (l (1 + B_i) prod_{k>i} max(1, ||W_k||_inf)), B_i = sup ||h_i||_1 "
               "over the domain (interval bounds). Burkholz (NeurIPS 2022), as we read it (not "
               "quoted from the paper), asks for widths C n_T log(1/min(eps_l, delta/rho)) with "
               "rho = C N_T^(1+gamma) "
               "log^(1+gamma)(1/min(eps_l, delta)) a union-bound count and C a generic constant; "
               "authors_c: C = 2.7 with ln (LT-existence's expC). The certificate uses the exact "
               "amplification (the l1 norm of the chosen random weights), not ||W||_inf.")


def _domain(dom):
    from ..certify import Domain
    if dom is None:
        return Domain()
    return Domain("ball", radius=dom[1]) if dom[0] == "ball" else Domain("box", lo=dom[1],
                                                                           hi=dom[2])


def input_l1_bounds(target, domain) -> list[float]:
    """B_i = sup over the domain of ||h_i||_1, h_i the input of target layer i, from interval
    bounds of the target (B_0 = sup ||x||_1)."""
    import torch
    import torch.nn.functional as F

    from ..certify import Affine

    nodes = target.nodes
    d0 = int(np.prod(nodes[0].shape))
    if domain.kind == "ball":
        l, u = np.full(d0, -domain.radius), np.full(d0, domain.radius)
        b0 = domain.radius * math.sqrt(d0)
    else:
        l, u = np.full(d0, float(domain.lo)), np.full(d0, float(domain.hi))
        b0 = d0 * max(abs(domain.lo), abs(domain.hi))
    vals, out = {0: (l, u)}, []
    for i, nd in enumerate(nodes[1:], start=1):
        l, u = vals[nd.inputs[0]]
        shape = tuple(nodes[nd.inputs[0]].shape)
        if nd.op in ("linear", "conv"):
            out.append(b0 if not out else float(np.maximum(np.abs(l), np.abs(u)).sum()))
            lo, hi = Affine(nd, shape).imul(nd.weight, l, u)
            c = Affine(nd, shape).per_unit(nd.bias, len(lo))
            vals[i] = (lo + c, hi + c)
        elif nd.op == "relu":
            vals[i] = (np.maximum(l, 0), np.maximum(u, 0))
        elif nd.op == "flatten":
            vals[i] = (l, u)
        else:
            fn = {"maxpool": lambda t, a=nd.attrs: F.max_pool2d(t, a["kernel"], a["stride"],
                                                               a["padding"], a["dilation"]),
                  "avgpool": lambda t, a=nd.attrs: F.avg_pool2d(
                      t, a["kernel"], a["stride"], a["padding"],
                      count_include_pad=a["count_include_pad"]),
                  "adaptive_avgpool": lambda t, a=nd.attrs: F.adaptive_avg_pool2d(t, a["output"])
                  }[nd.op]
            vals[i] = tuple(fn(torch.from_numpy(np.ascontiguousarray(v)).reshape(1, *shape)
                               ).reshape(-1).numpy() for v in (l, u))
    return out


def theory_rho(target, eps: float, delta: float, domain=None, halves: int = 2):
    """(rho per layer, eta per layer, N_SS): ``THEORY_NOTE``'s fixpoint."""
    from ..certify import Domain

    layers = target_layers(target)
    L = len(layers)
    B = input_l1_bounds(target, domain or Domain())
    norms = [float(np.abs(Ly.W).sum(1).max(initial=0.0)) for Ly in layers]
    eta = []
    for i in range(L):
        amp = float(np.prod([max(1.0, v) for v in norms[i + 1:]]))
        eta.append(eps / (L * (1 + B[i]) * amp))
    work = [(halves if i == 0 else 1) * int(np.count_nonzero(Ly.W)) +
            (0 if Ly.c is None else int(np.count_nonzero(Ly.c))) for i, Ly in enumerate(layers)]
    rho = [max(1, math.ceil(math.log2(1 / e))) for e in eta]
    for _ in range(20):
        outs = rho[1:] + [1]
        n_ss = sum(w * r for w, r in zip(work, outs))
        new = [max(1, math.ceil(math.log2(1 / min(e, delta / n_ss)))) for e in eta]
        if new == rho:
            break
        rho = new
    return rho, eta, n_ss


def construct(target, **kw):
    """This method's ticket for ``target`` (``slth.constructions.construct``)."""
    from . import construct as _construct
    return _construct(target, method="burkholz", **kw)
