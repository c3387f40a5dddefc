"""Certified output error of a ticket, and the errors actually found.

``certified_bound`` is a rigorous upper bound on ``max_{x in X} ||F(x) - G_hat(x)||_inf`` for
X = ``box`` ([lo, hi]^d, default [0, 1]^d: images) or ``ball`` (||x||_2 <= R, default R = 1 as in
the theorems). It uses the target's actual weights and the ticket's actual per-weight errors,
read through ``Ticket.effective()``: each widen/combine pair computes
``z_hat = P relu(h_hat) + N relu(-h_hat) + c_hat`` where the target computes ``z = W h + c``.

Propagation is differential (no product of norms): the deviation D = G_hat - F of every node of
the target's graph is carried node by node as an affine function of x plus an interval remainder.
Linear layers and convolutions are applied as operators (a convolution is never a dense matrix,
except on the input, where the exact first-layer form needs one).

* An affine op on the input: D = (P - W) relu(x) + (N + W) relu(-x) + (c_hat - c). On the box
  with lo >= 0 it is exactly affine; on the ball its exact per-unit range is
  R * ||max(+-E, 0)||_2.
* ReLU: with z in [l, u] (interval bounds of the target) and D in [dl, du], the change of the
  activation lies in [min(0, dl), max(0, du)], in [-max(0, u), max(0, u + du)], and is exactly 0
  when u <= 0 and u + du <= 0, exactly D when l >= 0 and l + dl >= 0 (then the affine part is
  kept).
* Other affine ops: D = W delta + (P - W) relu(h_hat) + (N + W) relu(-h_hat) + (c_hat - c) (the N
  term vanishes for post-ReLU inputs), h_hat the ticket's input interval; interval arithmetic on
  each term, the affine part carried through W.
* Average pooling is linear with nonnegative weights (the affine part passes through it); for
  max pooling, max(h + D) - max(h) lies in [min D, max D] over the window; residual adds add the
  deviations; subsampling and zero channels select and add units.

* The network's trailing chain (flatten) linear (ReLU linear)+ is then bounded again backwards
  (CROWN-style, ``_tail_upper``): each layer's deviation is substituted by the ReLU chords of
  the layer below, down to the chain's input, so the signs of W cancel across layers; every
  layer's bounds are tightened in turn, and the smaller of the two bounds is kept. On LeNet5 this
  halves the bound, within 5% of the linear program over the same relaxation.

What limits it on deep networks: the target's own bounds are plain intervals (they widen layer by
layer, so more units are unstable), an unstable unit drops its affine part, and every layer adds
its weight errors as an interval that later layers multiply by |W|. Past a max pooling whose
windows have no surely-largest element nothing relational survives (no linear bound of a max
beats its interval), so the chain's input enters as independent intervals; most of what is left
are the chords' constants (about half of each unstable unit's deviation range).

The bound is sound for any target (no norm assumptions). It is evaluated in float64; sums of
products are widened by a relative 1e-12 to cover rounding in the bound itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import SlthError
from .targets import MLP
from .ticket import EffectiveCopies, EffectiveLayer

DOMAINS = ("box", "ball")
_ROUND = 1e-12


@dataclass
class Domain:
    """Input set: ``box`` [lo, hi]^d or ``ball`` ||x||_2 <= radius."""

    kind: str = "box"
    radius: float = 1.0
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self):
        if self.kind not in DOMAINS:
            raise SlthError(f"unknown domain {self.kind!r}; use 'box' or 'ball'")
        if self.kind == "ball" and not self.radius > 0:
            raise SlthError(f"ball radius must be > 0, got {self.radius}")
        if self.kind == "box" and not self.hi > self.lo:
            raise SlthError(f"box needs lo < hi, got [{self.lo}, {self.hi}]")

    def describe(self) -> str:
        return (f"ball ||x||_2 <= {self.radius:g}" if self.kind == "ball"
                else f"box [{self.lo:g}, {self.hi:g}]^d")

    def contains(self, x: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Bool [N]: which rows of x lie in the domain."""
        if self.kind == "ball":
            return np.linalg.norm(x, axis=1) <= self.radius * (1 + tol)
        return ((x >= self.lo - tol) & (x <= self.hi + tol)).all(1)

    def project(self, x):
        """Project a torch tensor of inputs [B, d] onto the domain."""
        import torch

        if self.kind == "ball":
            norm = x.norm(dim=1, keepdim=True).clamp_min(1e-300)
            return x * torch.clamp(self.radius / norm, max=1.0)
        return x.clamp(self.lo, self.hi)

    def as_dict(self) -> dict:
        return ({"kind": "ball", "radius": self.radius} if self.kind == "ball"
                else {"kind": "box", "lo": self.lo, "hi": self.hi})


def _concretize(A: np.ndarray, dom: Domain) -> tuple[np.ndarray, np.ndarray]:
    """Range of A x over the domain, per row: (low, high)."""
    if dom.kind == "ball":
        r = dom.radius * np.linalg.norm(A, axis=1)
        return -r, r
    Ap, An = np.maximum(A, 0), np.minimum(A, 0)
    low = dom.lo * Ap.sum(1) + dom.hi * An.sum(1)
    high = dom.hi * Ap.sum(1) + dom.lo * An.sum(1)
    return low, high


class Affine:
    """One affine op of the target (a Linear layer or a convolution) as a linear map on flat
    vectors of units: ``apply(K, v)`` is the op with kernel K (the target's own weight, or any
    array of its shape) on v [units_in] or on the columns of v [units_in, k]."""

    def __init__(self, node, in_shape: tuple, W: np.ndarray | None = None):
        self.node, self.in_shape = node, tuple(in_shape)
        self.conv = node.op == "conv"
        self.W = node.weight if W is None else W

    def kernel(self, M: np.ndarray) -> np.ndarray:
        return M.reshape(M.shape[0], -1, *self.node.weight.shape[2:])

    def apply(self, K: np.ndarray, v: np.ndarray) -> np.ndarray:
        if not self.conv:
            return K.reshape(K.shape[0], -1) @ v
        import torch
        import torch.nn.functional as F

        cols = v.ndim == 2
        x = (v.T if cols else v[None]).reshape(-1, *self.in_shape)
        a = self.node.attrs
        y = F.conv2d(torch.from_numpy(np.ascontiguousarray(x)),
                     torch.from_numpy(np.ascontiguousarray(self.kernel(K), np.float64)),
                     None, a["stride"], a["padding"], a["dilation"]).reshape(len(x), -1).numpy()
        return y.T if cols else y[0]

    def per_unit(self, c: np.ndarray | None, units: int) -> np.ndarray:
        """A per-output-channel vector (bias) repeated over the output's units."""
        if c is None:
            return np.zeros(units)
        return np.repeat(np.asarray(c, np.float64), units // len(c))

    def imul(self, K: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval of K v for v in [lo, hi] (elementwise), widened for rounding."""
        c = (lo + hi) / 2
        r = (hi - lo) / 2
        mid = self.apply(K, c)
        aK = np.abs(K)
        rad = self.apply(aK, r)
        slack = _ROUND * self.apply(aK, np.maximum(np.abs(lo), np.abs(hi)))
        return mid - rad - slack, mid + rad + slack

    @property
    def macs(self) -> int:
        """Multiply-adds of one application (per input vector)."""
        return int(np.prod(self.W.shape[1:])) * int(np.prod(self.node.shape))

    def matrix(self, K: np.ndarray) -> np.ndarray:
        """The op with kernel K as a dense matrix [units_out, units_in]."""
        if not self.conv:
            return K.reshape(K.shape[0], -1)
        n = int(np.prod(self.in_shape))
        return self.apply(K, np.eye(n))


@dataclass
class _Form:
    """An affine bound M x + b over the input (M None: the constant b), one row per unit."""

    M: np.ndarray | None
    b: np.ndarray

    def low(self, dom: Domain) -> np.ndarray:
        return self.b if self.M is None else _concretize(self.M, dom)[0] + self.b

    def high(self, dom: Domain) -> np.ndarray:
        return self.b if self.M is None else _concretize(self.M, dom)[1] + self.b

    def rows(self, idx, pad: tuple = (0, 0)) -> "_Form":
        def take(a):
            return np.concatenate([np.zeros((pad[0], *a.shape[1:])), a[idx],
                                   np.zeros((pad[1], *a.shape[1:]))])
        return _Form(None if self.M is None else take(self.M), take(self.b))

    def scaled(self, s: np.ndarray, shift: np.ndarray) -> "_Form":
        """s * (self - shift), row by row."""
        return _Form(None if self.M is None else s[:, None] * self.M, s * (self.b - shift))

    def mapped(self, fn) -> "_Form":
        """A linear map with nonnegative weights (average pooling) applied to the bound."""
        return _Form(None if self.M is None else fn(self.M.T).T, fn(self.b[None])[0])


def _zero(n: int) -> _Form:
    return _Form(None, np.zeros(n))


def _plus(a: _Form, b: _Form, c: np.ndarray | float = 0.0) -> _Form:
    M = a.M if b.M is None else (b.M if a.M is None else a.M + b.M)
    return _Form(M, a.b + b.b + c)


class _Budget:
    """Multiply-adds the symbolic forms may still cost; past it, forms are replaced by their
    concrete bounds and the bound goes on with intervals."""

    def __init__(self, limit: float):
        self.left = float(limit)

    def afford(self, cost: float) -> bool:
        if cost <= self.left:
            self.left -= cost
            return True
        self.left = 0.0
        return False


@dataclass
class _Value:
    """What the bound knows of one node's value, as symbolic intervals over the input x: the
    target's value F in [FL, FU] (per unit; concrete bounds [l, u]), and the deviation
    D = G_hat - F of each of G's carriers of it (``copies`` per unit, carrier of unit u copy m at
    u * copies + m along the channel axis) in [DL, DU], within [el, eh] (exact bounds, or None).
    nonneg: both values are >= 0; is_input: the input itself (possibly flattened)."""

    l: np.ndarray
    u: np.ndarray
    FL: _Form
    FU: _Form
    DL: _Form
    DU: _Form
    el: np.ndarray | None = None
    eh: np.ndarray | None = None
    nonneg: bool = False
    gl: np.ndarray | None = None      # the ticket's value interval, when known more tightly
    gh: np.ndarray | None = None
    is_input: bool = False
    copies: int = 1

    def unit(self, a: np.ndarray, shape: tuple) -> np.ndarray:
        """A per-unit array repeated over this value's carriers."""
        return _expand(a, shape, self.copies)

    def deviation(self, dom: Domain) -> tuple[np.ndarray, np.ndarray]:
        """Concrete bounds [dl, dh] of D over the domain (widened for rounding)."""
        dl, dh = self.DL.low(dom), self.DU.high(dom)
        if self.el is not None:
            dl, dh = np.maximum(dl, self.el), np.minimum(dh, self.eh)
        return dl - _ROUND * np.abs(dl), dh + _ROUND * np.abs(dh)

    def ticket(self, dom: Domain, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """The ticket's value interval per carrier."""
        if self.gl is not None:
            return self.gl, self.gh
        dl, dh = self.deviation(dom)
        return self.unit(self.l, shape) + dl, self.unit(self.u, shape) + dh

    def concrete(self, dom: Domain) -> "_Value":
        """The same value with every form replaced by its concrete bound."""
        dl, dh = self.deviation(dom)
        return dataclasses.replace(self, FL=_Form(None, self.l), FU=_Form(None, self.u),
                                   DL=_Form(None, dl), DU=_Form(None, dh), el=None, eh=None)

    @property
    def symbolic(self) -> bool:
        return any(f.M is not None for f in (self.FL, self.FU, self.DL, self.DU))


def _expand(a: np.ndarray, shape: tuple, copies: int) -> np.ndarray:
    """Per-unit values of a node of ``shape`` ((d,) or (C, H, W)) repeated for ``copies``
    carriers per unit (copies of a channel are adjacent channels)."""
    return a if copies == 1 else np.repeat(a.reshape(shape[0], -1), copies, axis=0).ravel()


def _input_value(d0: int, dom: Domain) -> _Value:
    if dom.kind == "ball":
        l, u = np.full(d0, -dom.radius), np.full(d0, dom.radius)
    else:
        l, u = np.full(d0, float(dom.lo)), np.full(d0, float(dom.hi))
    x = _Form(np.eye(d0), np.zeros(d0))
    return _Value(l, u, x, x, _zero(d0), _zero(d0), nonneg=dom.kind == "box" and dom.lo >= 0,
                  is_input=True)


def _lin(op: "Affine", K: np.ndarray, lo: _Form, hi: _Form, mag: np.ndarray, same: bool = False):
    """Bounds of K v for v in [lo, hi] (forms): (lower, upper) forms, widened by the rounding
    slack ROUND |K| mag (mag >= |v|). same: lo is hi (an exact form: one product)."""
    Kp, Kn = np.maximum(K, 0.0), np.minimum(K, 0.0)
    slack = _ROUND * op.apply(np.abs(K), mag)
    if same:
        mid = op.apply(K, hi.b)
        M = None if hi.M is None else op.apply(K, hi.M)
        return _Form(M, mid - slack), _Form(M, mid + slack)
    ub = op.apply(Kp, hi.b) + op.apply(Kn, lo.b) + slack
    lb = op.apply(Kp, lo.b) + op.apply(Kn, hi.b) - slack

    def mat(A, B):
        if A.M is None and B.M is None:
            return None
        return ((0.0 if A.M is None else op.apply(Kp, A.M))
                + (0.0 if B.M is None else op.apply(Kn, B.M)))
    return _Form(mat(lo, hi), lb), _Form(mat(hi, lo), ub)


def _first_affine(op: Affine, e: EffectiveLayer, c, dom: Domain, d0: int, keep: bool) -> _Value:
    """An affine op on the input itself (exact x): F = W x + c exactly, and
    D = (P - W) relu(x) + (N + W) relu(-x) + (b - c), exactly affine on a nonnegative box; on the
    ball its exact per-unit range is R ||max(+-E, 0)||_2. (e's rows may be several copies of each
    output channel.)"""
    W = op.W.reshape(op.W.shape[0], -1)
    k = e.pos.shape[0] // W.shape[0]
    Wk = np.repeat(W, k, axis=0) if k > 1 else W
    ck = None if c is None else np.repeat(c, k)
    Wm = op.matrix(W)
    units = Wm.shape[0]
    l, u = _concretize(Wm, dom)
    cu = op.per_unit(c, units)
    l, u = l + cu, u + cu
    FL = FU = _Form(Wm, cu)
    if not keep:
        FL, FU = _Form(None, l), _Form(None, u)
    opk = Affine(op.node, op.in_shape, Wk) if k > 1 else op
    Ep = opk.matrix(e.pos.reshape(Wk.shape) - Wk)
    eb = opk.per_unit(e.bias, len(Ep)) - opk.per_unit(ck, len(Ep))
    if dom.kind == "box" and dom.lo >= 0:
        el, eh = _concretize(Ep, dom)
        D = _Form(Ep, eb)
        return _Value(l, u, FL, FU, D, D, el + eb, eh + eb, copies=k)
    En = opk.matrix(e.neg.reshape(Wk.shape) + Wk)
    S = Ep + En  # E+ relu(x) + E- relu(-x) = E+ x + (E+ + E-) relu(-x)
    R = dom.radius if dom.kind == "ball" else max(abs(dom.lo), abs(dom.hi)) * np.sqrt(d0)
    rl = eb - R * np.linalg.norm(np.maximum(-S, 0), axis=1)
    rh = eb + R * np.linalg.norm(np.maximum(S, 0), axis=1)
    if dom.kind == "ball":
        eh = eb + R * np.linalg.norm(np.maximum(np.maximum(Ep, En), 0), axis=1)
        el = eb - R * np.linalg.norm(np.maximum(np.maximum(-Ep, -En), 0), axis=1)
    else:  # box with negative part: per coordinate, f(x) = Ep x (x>=0) or -En x (x<0)
        lo, hi = dom.lo, dom.hi
        cand = np.stack([Ep * max(hi, 0), Ep * max(lo, 0), -En * min(lo, 0), -En * min(hi, 0),
                         np.zeros_like(Ep)])
        el, eh = eb + cand.min(0).sum(1), eb + cand.max(0).sum(1)
    return _Value(l, u, FL, FU, _Form(Ep, rl), _Form(Ep, rh), el, eh, copies=k)


def _target_affine(op: Affine, W: np.ndarray, c, v: _Value, dom: Domain):
    """F' = W F + c: forms and concrete bounds (intersected with interval arithmetic)."""
    mag = np.maximum(np.abs(v.l), np.abs(v.u))
    FL, FU = _lin(op, W, v.FL, v.FU, mag, same=v.FL is v.FU)
    cu = op.per_unit(c, len(FL.b))
    FL, FU = _Form(FL.M, FL.b + cu), _Form(FU.M, FU.b + cu)
    il, iu = op.imul(W, v.l, v.u)
    return FL, FU, np.maximum(FL.low(dom), il + cu), np.minimum(FU.high(dom), iu + cu)


def _affine(op: Affine, e, c, v: _Value, dom: Domain) -> _Value:
    """D' = P delta + (P - W) F + (b - c) for nonnegative inputs (P = W + (P - W): the ticket's
    weights), F and delta as symbolic intervals; for inputs of either sign
    D' = W delta + (P - W) relu(h_hat) + (N + W) relu(-h_hat) + (b - c), h_hat as an interval."""
    if isinstance(e, EffectiveCopies):
        return _affine_copies(op, e, c, v, dom)
    if v.copies != 1:
        raise SlthError("a widen/combine gadget cannot read copied units")
    W = op.W.reshape(op.W.shape[0], -1)
    P = e.pos.reshape(W.shape)
    Ep = P - W
    FL, FU, l, u = _target_affine(op, W, c, v, dom)
    dl, dh = v.deviation(dom)
    dmag = np.maximum(np.abs(dl), np.abs(dh))
    fmag = np.maximum(np.abs(v.l), np.abs(v.u))
    eb = op.per_unit(e.bias, len(l)) - op.per_unit(c, len(l))
    if v.nonneg:
        AL, AU = _lin(op, P, v.DL, v.DU, dmag, same=v.DL is v.DU)
        BL, BU = _lin(op, Ep, v.FL, v.FU, fmag, same=v.FL is v.FU)
        return _Value(l, u, FL, FU, _plus(AL, BL, eb), _plus(AU, BU, eb))
    gl, gh = v.ticket(dom, op.in_shape)
    AL, AU = _lin(op, W, v.DL, v.DU, dmag, same=v.DL is v.DU)
    pl, ph = op.imul(Ep, np.maximum(gl, 0), np.maximum(gh, 0))
    nl, nh = op.imul(e.neg.reshape(W.shape) + W, np.maximum(-gh, 0), np.maximum(-gl, 0))
    return _Value(l, u, FL, FU, _Form(AL.M, AL.b + pl + nl + eb), _Form(AU.M, AU.b + ph + nh + eb))


def _affine_copies(op: Affine, e: EffectiveCopies, c, v: _Value, dom: Domain) -> _Value:
    """Copies: D' = S delta + (P - W) F + (b - c) per output carrier, F the target's
    (nonnegative) input, delta the input carriers' deviations; symbolic through S."""
    if not v.nonneg or v.copies != e.copies_in:
        raise SlthError("a copies gadget needs nonnegative inputs with as many copies as it reads")
    W = op.W.reshape(op.W.shape[0], -1)
    k = e.copies_out
    Wk, ck = (np.repeat(W, k, axis=0), None if c is None else np.repeat(c, k)) if k > 1 else (W, c)
    in_c = (op.in_shape[0] * v.copies, *op.in_shape[1:])
    S = Affine(op.node, in_c, e.S)
    E = Affine(op.node, op.in_shape, Wk)
    FL, FU, l, u = _target_affine(op, W, c, v, dom)
    dl, dh = v.deviation(dom)
    AL, AU = _lin(S, e.S, v.DL, v.DU, np.maximum(np.abs(dl), np.abs(dh)), same=v.DL is v.DU)
    BL, BU = _lin(E, e.P - Wk, v.FL, v.FU, np.maximum(np.abs(v.l), np.abs(v.u)),
                  same=v.FL is v.FU)
    eb = E.per_unit(e.bias, len(AL.b)) - E.per_unit(ck, len(AL.b))
    return _Value(l, u, FL, FU, _plus(AL, BL, eb), _plus(AU, BU, eb), copies=k)


def _relu(v: _Value, dom: Domain, shape: tuple) -> tuple[_Value, int]:
    """The target: F stays its form where the unit is surely active, 0 where surely inactive;
    else relu(F) <= s (F - l) (s = u / (u - l)) and relu(F) >= F or >= 0 (DeepPoly's choice).
    The deviation Delta = relu(F + D) - relu(F): D where the unit is active for both, 0 where
    inactive for both; else it lies between min(0, D) and max(0, D), bounded by the chords
    dh (D - dl) / (dh - dl) above and -dl (D - dh) / (dh - dl) below, and within
    [-max(0, u), max(0, u + dh)]. Every bound is its input's form scaled row by row."""
    dl, dh = v.deviation(dom)
    l, u = v.l, v.u
    up, mid = l >= 0, (l < 0) & (u > 0)
    s = np.where(mid, u / np.where(mid, u - l, 1.0), up * 1.0)
    FU = v.FU.scaled(s, np.where(mid, l, 0.0))
    FL = v.FL.scaled((up | (mid & (u > -l))) * 1.0, 0.0)
    lc, uc = v.unit(l, shape), v.unit(u, shape)
    inactive = (uc <= 0) & (uc + dh <= 0)
    active = (lc >= 0) & (lc + dl >= 0)
    unstable = ~(inactive | active)
    both = unstable & (dl < 0) & (dh > 0)
    width = np.where(both, dh - dl, 1.0)
    DU = v.DU.scaled(np.where(both, dh / width, (active | unstable & (dl >= 0)) * 1.0),
                     np.where(both, dl, 0.0))
    DL = v.DL.scaled(np.where(both, -dl / width, (active | unstable & (dh <= 0)) * 1.0),
                     np.where(both, dh, 0.0))
    el = np.where(unstable, np.maximum(np.minimum(0, dl), -np.maximum(0, uc)),
                  np.where(active, dl, 0.0))
    eh = np.where(unstable, np.minimum(np.maximum(0, dh), np.maximum(0, uc + dh)),
                  np.where(active, dh, 0.0))
    out = _Value(np.maximum(l, 0), np.maximum(u, 0), FL, FU, DL, DU, el, eh, nonneg=True,
                 gl=np.maximum(lc + dl, 0), gh=np.maximum(uc + dh, 0), copies=v.copies)
    return out, int(unstable.sum())


def _pool(fn, v: _Value, shape: tuple, dom: Domain, linear: bool) -> _Value:
    """Pooling: ``fn`` on [N, C, H, W] tensors. Average pooling is linear with nonnegative
    weights (the forms go through it); for max pooling, max(h + D) - max(h) lies in
    [min D, max D] over the window, and the target in [max l, max u]."""
    import torch

    def over(sh):
        def f(a):
            t = torch.from_numpy(np.ascontiguousarray(a, np.float64))
            return fn(t.reshape(-1, *sh)).reshape(t.shape[0], -1).numpy()
        return f

    unit, carrier = over(shape), over((shape[0] * v.copies, *shape[1:]))
    gl, gh = v.ticket(dom, shape)
    one_u, one_c = (lambda a: unit(a[None])[0]), (lambda a: carrier(a[None])[0])
    if linear:
        ex = v.el is not None
        return _Value(one_u(v.l), one_u(v.u), v.FL.mapped(unit), v.FU.mapped(unit),
                      v.DL.mapped(carrier), v.DU.mapped(carrier), one_c(v.el) if ex else None,
                      one_c(v.eh) if ex else None, nonneg=v.nonneg, gl=one_c(gl), gh=one_c(gh),
                      copies=v.copies)
    dl, dh = v.deviation(dom)
    l, u = one_u(v.l), one_u(v.u)
    return _Value(l, u, _Form(None, l), _Form(None, u), _Form(None, -one_c(-dl)),
                  _Form(None, one_c(dh)), nonneg=v.nonneg, gl=one_c(gl), gh=one_c(gh),
                  copies=v.copies)


def _select(v: _Value, shape: tuple, step: tuple = (1, 1), pad: tuple = (0, 0)) -> _Value:
    """Subsampling (every step-th row and column) and zero channels (pad = before, after) of a
    [C, H, W] value, for per-unit and per-carrier arrays alike."""
    C, H, W = shape

    def index(k):
        idx = np.arange(C * k * H * W).reshape(C * k, H, W)[:, ::step[0], ::step[1]].ravel()
        n = len(idx) // (C * k)
        return idx, (pad[0] * k * n, pad[1] * k * n)

    def pick(a, k):
        if a is None:
            return None
        idx, (p0, p1) = index(k)
        return np.concatenate([np.zeros(p0), a[idx], np.zeros(p1)])

    k = v.copies
    iu, pu = index(1)
    ic, pc = index(k)
    return _Value(pick(v.l, 1), pick(v.u, 1), v.FL.rows(iu, pu), v.FU.rows(iu, pu),
                  v.DL.rows(ic, pc), v.DU.rows(ic, pc), pick(v.el, k), pick(v.eh, k), v.nonneg,
                  pick(v.gl, k), pick(v.gh, k), copies=k)


def _add(a: _Value, b: _Value, dom: Domain, shape: tuple) -> _Value:
    if a.copies != b.copies:
        raise SlthError("a residual add of values with different numbers of copies")
    agl, agh = a.ticket(dom, shape)
    bgl, bgh = b.ticket(dom, shape)
    adl, adh = a.deviation(dom)
    bdl, bdh = b.deviation(dom)
    return _Value(a.l + b.l, a.u + b.u, _plus(a.FL, b.FL), _plus(a.FU, b.FU), _plus(a.DL, b.DL),
                  _plus(a.DU, b.DU), adl + bdl, adh + bdh, nonneg=a.nonneg and b.nonneg,
                  gl=agl + bgl, gh=agh + bgh, copies=a.copies)


def _node_value(nd, vals: dict, shapes: dict, dom: Domain) -> _Value:
    """A node that is not affine and not a ReLU, from its inputs' values."""
    import torch.nn.functional as F

    a = nd.attrs
    v = vals[nd.inputs[0]]
    shape = shapes[nd.inputs[0]]
    if nd.op == "flatten":
        return v
    if nd.op == "add":
        return _add(v, vals[nd.inputs[1]], dom, shape)
    if nd.op == "maxpool":
        return _pool(lambda t: F.max_pool2d(t, a["kernel"], a["stride"], a["padding"],
                                            a["dilation"]), v, shape, dom, False)
    if nd.op == "avgpool":
        return _pool(lambda t: F.avg_pool2d(t, a["kernel"], a["stride"], a["padding"],
                                            count_include_pad=a["count_include_pad"]),
                     v, shape, dom, True)
    if nd.op == "adaptive_avgpool":
        return _pool(lambda t: F.adaptive_avg_pool2d(t, a["output"]), v, shape, dom, True)
    if nd.op == "subsample":
        return _select(v, shape, step=tuple(a["stride"]))
    if nd.op == "pad_channels":
        return _select(v, shape, pad=(a["before"], a["after"]))
    raise SlthError(f"the certification does not handle op {nd.op!r}")


def _tail_start(nodes) -> int | None:
    """The node feeding the network's trailing chain (flatten)* linear (relu linear)+, each node
    reading the one before, or None when there is no such chain."""
    ops = [nd.op for nd in nodes]
    i = len(nodes) - 1
    while i >= 2 and ops[i] == "linear" and ops[i - 1] == "relu" and ops[i - 2] == "linear" \
            and nodes[i].inputs == (i - 1,) and nodes[i - 1].inputs == (i - 2,):
        i -= 2
    if i == len(nodes) - 1 or ops[i] != "linear":
        return None
    while i > 0 and nodes[i].inputs == (i - 1,) and ops[i - 1] == "flatten":
        i -= 1
    return i - 1 if nodes[i].inputs == (i - 1,) else None


@dataclass
class _TailLayer:
    """One linear layer of the tail: target W, c; ticket P, b; its input's target interval
    [hl, hu] (>= 0); its output's target pre-activation [l, u] and deviation [dl, dh]."""

    W: np.ndarray
    eb: np.ndarray
    P: np.ndarray
    hl: np.ndarray
    hu: np.ndarray
    l: np.ndarray
    u: np.ndarray
    dl: np.ndarray
    dh: np.ndarray


def _chords(t: _TailLayer):
    """Linear bounds of the ReLU deviation relu(z + D) - relu(z) in D (as in ``_relu``):
    upper au D + bu, lower al D + bl, per unit."""
    l, u, dl, dh = t.l, t.u, t.dl, t.dh
    active, inactive = (l >= 0) & (l + dl >= 0), (u <= 0) & (u + dh <= 0)
    unstable = ~(active | inactive)
    both = unstable & (dl < 0) & (dh > 0)
    w = np.where(both, dh - dl, 1.0)
    au = np.where(both, dh / w, (active | unstable & (dl >= 0)) * 1.0)
    al = np.where(both, -dl / w, (active | unstable & (dh <= 0)) * 1.0)
    return au, np.where(both, -dh * dl / w, 0.0), al, np.where(both, dl * dh / w, 0.0)


def _tail_upper(C: np.ndarray, tail: list[_TailLayer], m: int, e0: tuple,
                parts: dict | None = None) -> np.ndarray:
    """Upper bounds of C D_m (rows of C [k, units of layer m]), D_m the deviation of tail layer
    m's output, by substituting backwards (CROWN-style) D_j = P_j e_{j-1} + (P_j - W_j) h_{j-1}
    + (b_j - c_j) and the ReLU chords of each layer's deviation e_j, down to the tail's input
    deviation e0 = (lo, hi); the target's h_j enter as intervals (their coefficients are the
    tiny P - W). ``parts``, when given, receives the bound term by term (per row)."""
    A, const, mass = C, np.zeros(len(C)), np.zeros(len(C))

    def concretize(G, lo, hi, what):
        nonlocal const, mass
        term = np.maximum(G * lo, G * hi).sum(1)
        const = const + term
        mass = mass + (np.abs(G) * np.maximum(np.abs(lo), np.abs(hi))).sum(1)
        if parts is not None:
            parts[what] = parts.get(what, 0.0) + term

    for j in range(m, -1, -1):
        t = tail[j]
        concretize(A, t.eb, t.eb, f"own errors of tail layer {j}")
        concretize(A @ (t.P - t.W), t.hl, t.hu, f"own errors of tail layer {j}")
        A = A @ t.P
        if j == 0:
            concretize(A, *e0, "chain input deviation")
            break
        au, bu, al, bl = _chords(tail[j - 1])
        pos = A >= 0
        concretize(np.where(pos, A, 0.0), bu, bu, f"chords of the ReLU after tail layer {j - 1}")
        concretize(np.where(pos, 0.0, A), bl, bl, f"chords of the ReLU after tail layer {j - 1}")
        A = np.where(pos, A * au, A * al)
    return const + 1e-10 * mass     # rounding of the float64 sums, generously


def _tail_layer(tail: list | None, nd, e, v: "_Value", out: "_Value", dom: Domain):
    """``tail`` with the affine node ``nd`` (ticket form ``e``, input value v, output value
    out) appended when it belongs to the trailing chain (the chain's input deviation first);
    None when the chain cannot be bounded backwards (copies, or an input of either sign)."""
    if isinstance(e, EffectiveCopies) or v.copies != 1 or not v.nonneg \
            or e.pos.shape[0] != nd.weight.shape[0]:
        return None
    if not tail:
        tail = [v.deviation(dom)]
    c = np.zeros(nd.weight.shape[0]) if nd.bias is None else np.asarray(nd.bias, np.float64)
    dl, dh = out.deviation(dom)
    return tail + [_TailLayer(nd.weight, e.bias - c, e.pos, v.l, v.u, out.l, out.u, dl, dh)]


TAIL_BUDGET = 2e9   # multiply-adds the tail's backward bounds may cost


def _tail_bound(tail: list[_TailLayer], e0: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Deviation bounds (lo, hi) of the tail's output: every layer's bounds tightened by
    substituting backwards (intersected with the forward ones) before the next layer's chords
    use them. Returns the last layer's bounds."""
    for m, t in enumerate(tail):
        eye = np.eye(len(t.l))
        hi = _tail_upper(eye, tail, m, e0)
        lo = -_tail_upper(-eye, tail, m, e0)
        tail[m] = dataclasses.replace(t, dl=np.maximum(t.dl, lo), dh=np.minimum(t.dh, hi))
    return tail[-1].dl, tail[-1].dh


def _tail_cost(tail_dims: list[tuple[int, int]]) -> float:
    """Multiply-adds of ``_tail_bound`` for layers of (units out, units in)."""
    return sum(2 * out * sum(o * i for o, i in tail_dims[:m + 1])
               for m, (out, _) in enumerate(tail_dims))


SYMBOLIC_BUDGET = 4e10   # multiply-adds the symbolic forms may cost (about a minute on 2 cores)


def bound_details(target, eff: list[EffectiveLayer], domain: Domain,
                  budget: float = SYMBOLIC_BUDGET, tail: bool = True) -> dict:
    """Per-layer deviation bounds and the certified bound on max_{x in domain}
    ||F(x) - G_hat(x)||_inf (see the module docstring): target and deviation carried node by
    node as symbolic intervals over x through the target's graph (Linear layers, convolutions,
    ReLU, pooling, flatten, residual adds, shortcuts), the effective form ``eff`` standing in for
    each affine op. ``budget``: multiply-adds the symbolic forms may cost before the bound
    continues with intervals (0: intervals from the second affine op on). tail: also bound the
    trailing linear/ReLU chain backwards (when it costs at most ``TAIL_BUDGET``)."""
    nodes = target.nodes
    affine = [i for i, nd in enumerate(nodes) if nd.op in ("linear", "conv")]
    if len(eff) != len(affine):
        raise SlthError(f"ticket has {len(eff)} widen/combine pairs but the target has "
                        f"{len(affine)} layers")
    for k, (e, i) in enumerate(zip(eff, affine)):
        P = e.P if isinstance(e, EffectiveCopies) else e.pos
        if P.shape[1] * nodes[i].weight.shape[0] != nodes[i].weight.size:
            raise SlthError(f"ticket layer pair {k} computes {list(P.shape)} but the target "
                            f"layer is {list(nodes[i].weight.shape)}")
    shapes = {i: tuple(nd.shape) for i, nd in enumerate(nodes)}
    d0 = int(np.prod(shapes[0]))
    last = list(range(len(nodes)))
    for i, nd in enumerate(nodes):
        for j in nd.inputs:
            last[j] = max(last[j], i)
    money = _Budget(budget)
    start = _tail_start(nodes)
    chain = [] if tail and start is not None and _tail_cost(
        [(nd.weight.shape[0], nd.weight.shape[1]) for nd in nodes[start + 1:]
         if nd.op == "linear"]) <= TAIL_BUDGET else None
    vals = {0: _input_value(d0, domain)}
    per_layer, n_unstable, symbolic = [], [], []
    for i, nd in enumerate(nodes[1:], start=1):
        if nd.op in ("linear", "conv"):
            k = affine.index(i)
            op = Affine(nd, shapes[nd.inputs[0]])
            v = vals[nd.inputs[0]]
            if v.is_input:
                keep = money.afford(op.macs * d0)
                vals[i] = _first_affine(op, eff[k], nd.bias, domain, d0, keep)
            else:
                if v.symbolic and not money.afford(12 * op.macs * d0 * v.copies):
                    v = v.concrete(domain)
                vals[i] = _affine(op, eff[k], nd.bias, v, domain)
            symbolic.append(vals[i].symbolic)
            if chain is not None and i > start:
                chain = _tail_layer(chain, nd, eff[k], vals[nd.inputs[0]], vals[i], domain)
            dl, dh = vals[i].deviation(domain)
            per_layer.append(float(np.maximum(np.abs(dl), np.abs(dh)).max(initial=0.0)))
        elif nd.op == "relu":
            vals[i], unstable = _relu(vals[nd.inputs[0]], domain, shapes[nd.inputs[0]])
            n_unstable.append(unstable)
        else:
            vals[i] = _node_value(nd, vals, shapes, domain)
        for j in set(nd.inputs):
            if last[j] == i:
                del vals[j]
    dl, dh = vals[len(nodes) - 1].deviation(domain)
    if chain:
        e0 = chain.pop(0)
        lo, hi = _tail_bound(chain, e0)
        dl, dh = np.maximum(dl, lo), np.minimum(dh, hi)
        for m, t in enumerate(chain):
            per_layer[len(per_layer) - len(chain) + m] = float(
                np.maximum(np.abs(t.dl), np.abs(t.dh)).max(initial=0.0))
    bound = float(np.maximum(np.abs(dl), np.abs(dh)).max(initial=0.0))
    return {"certified_bound": bound, "per_layer_deviation": per_layer,
            "unstable_units": n_unstable, "symbolic_layers": symbolic}


# ------------------------------------------------------------------------------------------
# errors actually found


def effective_forward(target, eff: list[EffectiveLayer], x):
    """The ticket's function through its effective form (torch; differentiable): the target's
    graph with every affine op z = W h + c replaced by P relu(h) + N relu(-h) + b. ``target``: a
    target (MLP or Net) or, for an MLP, its widths."""
    import torch

    if isinstance(target, (list, tuple, MLP)):
        h = x
        for i, e in enumerate(eff):
            h = _effective_linear(e, h, x.dtype)
            if i < len(eff) - 1:
                h = torch.relu(h)
        return h
    return _effective_graph(target, eff, x)


def _effective_linear(e, h, dtype):
    import torch

    if isinstance(e, EffectiveCopies):   # inputs are post-ReLU carriers
        return h @ torch.as_tensor(e.S, dtype=dtype).T + torch.as_tensor(e.bias, dtype=dtype)
    P = torch.as_tensor(e.pos, dtype=dtype)
    N = torch.as_tensor(e.neg, dtype=dtype)
    b = torch.as_tensor(e.bias, dtype=dtype)
    # inputs that are all >= 0 (past layer 1: post-ReLU; images) make relu(-h) = 0: the
    # N term vanishes exactly, value and gradient
    return (torch.relu(h) @ P.T + torch.relu(-h) @ N.T if bool((h < 0).any())
            else h @ P.T) + b


def _effective_graph(target, eff, x):
    import torch
    import torch.nn.functional as F

    from .nets import AFFINE_OPS, apply_node

    nodes = target.nodes
    k = iter(eff)
    vals = {0: x.reshape(x.shape[0], *target.in_shape)}
    copies = {0: 1}       # carriers per unit of each value (Burkholz's copies)
    for i, nd in enumerate(nodes[1:], start=1):
        h = vals[nd.inputs[0]]
        copies[i] = copies[nd.inputs[0]]
        if nd.op == "pad_channels" and copies[i] > 1:
            c = copies[i]
            vals[i] = F.pad(h, (0, 0, 0, 0, nd.attrs["before"] * c, nd.attrs["after"] * c))
            continue
        if nd.op not in AFFINE_OPS:
            vals[i] = apply_node(nd, [vals[j] for j in nd.inputs])
            continue
        e = next(k)
        copies[i] = (e.copies_out if isinstance(e, EffectiveCopies)
                     else e.pos.shape[0] // nd.weight.shape[0])
        if nd.op == "linear":
            vals[i] = _effective_linear(e, h, x.dtype)
            continue
        a, kshape = nd.attrs, nd.weight.shape[2:]
        conv = lambda t, M: F.conv2d(t, torch.as_tensor(M.reshape(M.shape[0], -1, *kshape),  # noqa: E731
                                                        dtype=x.dtype),
                                     None, a["stride"], a["padding"], a["dilation"])
        if isinstance(e, EffectiveCopies):
            y = conv(h, e.S)
        else:
            y = conv(torch.relu(h), e.pos)
            if bool((h < 0).any()):
                y = y + conv(torch.relu(-h), e.neg)
        vals[i] = y + torch.as_tensor(e.bias, dtype=x.dtype)[:, None, None]
    return vals[len(nodes) - 1]


def _target_torch(target, x):
    import torch

    if not isinstance(target, MLP):
        return target.torch_forward(x)
    h = x
    for i, (W, c) in enumerate(zip(target.weights, target.biases)):
        h = h @ torch.as_tensor(W, dtype=x.dtype).T
        if c is not None:
            h = h + torch.as_tensor(c, dtype=x.dtype)
        if i < target.depth - 1:
            h = torch.relu(h)
    return h


def ascend_in_groups(target, eff: list[EffectiveLayer], domain: Domain, x0: np.ndarray,
                     steps: int) -> np.ndarray:
    """Projected gradient ascent on ||F(x) - G_hat(x)||_inf over the domain from each row of x0
    [M, d] (``search_starts``): ``ascend`` in consecutive groups of ``ASCENT_GROUP`` rows."""
    return np.concatenate([ascend(target, eff, domain, x0[i:i + ASCENT_GROUP], steps)
                           for i in range(0, len(x0), ASCENT_GROUP)] or [x0])


ASCENT_GROUP = 16   # points per ascent batch: fixed, so results do not depend on how many run at once


def search_starts(d: int, domain: Domain, starts: np.ndarray | None, restarts: int,
                  seed: int) -> np.ndarray:
    """Starting points of the ascent [M, d]: ``starts`` projected onto the domain, then
    ``restarts`` points drawn uniformly from it (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if domain.kind == "ball":
        rnd = torch.randn(restarts, d, generator=g, dtype=torch.float64)
        radii = domain.radius * torch.rand(restarts, 1, generator=g, dtype=torch.float64) ** (1 / d)
        rnd = rnd / rnd.norm(dim=1, keepdim=True).clamp_min(1e-300) * radii
    else:
        rnd = domain.lo + (domain.hi - domain.lo) * torch.rand(restarts, d, generator=g,
                                                               dtype=torch.float64)
    x = rnd
    if starts is not None and len(starts):
        x = torch.cat([domain.project(torch.as_tensor(starts, dtype=torch.float64)), rnd])
    return x.numpy()


def ascend(target, eff: list[EffectiveLayer], domain: Domain, x0: np.ndarray,
           steps: int) -> np.ndarray:
    """``steps`` steps of projected gradient ascent from each row of x0 [M, d]; returns, per row,
    the point of largest error it visited [M, d]. Rows do not interact (each follows its own
    deviation)."""
    import torch

    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    best = x.detach().clone()
    best_err = torch.full((len(x),), -1.0, dtype=torch.float64)
    scale = domain.radius if domain.kind == "ball" else (domain.hi - domain.lo)
    for t in range(steps + 1):
        diff = _target_torch(target, x) - effective_forward(target, eff, x)
        err = diff.abs().max(dim=1).values
        with torch.no_grad():
            better = err > best_err
            best_err = torch.where(better, err, best_err)
            best[better] = x[better]
        if t == steps:
            break
        (grad,) = torch.autograd.grad(err.sum(), x)
        step = 0.05 * scale * (1 - t / steps) + 1e-3 * scale
        with torch.no_grad():
            if domain.kind == "ball":
                x += step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            else:
                x += step * grad.sign()
            x.copy_(domain.project(x))
    return best.numpy()
