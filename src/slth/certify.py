"""Certified output error of a ticket, and the errors actually found.

``certified_bound`` is a rigorous upper bound on ``max_{x in X} ||F(x) - G_hat(x)||_inf`` for
X = ``box`` ([lo, hi]^d, default [0, 1]^d: images) or ``ball`` (||x||_2 <= R, default R = 1 as in
the theorems). It uses the target's actual weights and the ticket's actual per-weight errors,
read through ``Ticket.effective()``: each widen/combine pair computes
``z_hat = P relu(h_hat) + N relu(-h_hat) + c_hat`` where the target computes ``z = W h + c``.

Propagation (no product of norms): the deviation D_i = z_hat_i - z_i is carried layer by layer
as an affine function of x plus an interval remainder.

* Layer 1: D_1 = (P - W) relu(x) + (N + W) relu(-x) + (c_hat - c). On the box with lo >= 0 it is
  exactly affine; on the ball its exact per-unit range is R * ||max(+-E, 0)||_2.
* ReLU: with z in [l, u] (interval bounds of the target) and D in [dl, du], the change of the
  activation lies in [min(0, dl), max(0, du)], in [-max(0, u), max(0, u + du)], and is exactly 0
  when u <= 0 and u + du <= 0, exactly D when l >= 0 and l + dl >= 0 (then the affine part is
  kept).
* Layer i >= 2 (inputs are post-ReLU, so the N term vanishes): D_i = W delta + (P - W) h_hat +
  (c_hat - c), with h_hat in [relu(l + dl), relu(u + du)] - interval arithmetic on each term.

The bound is sound for any target (no norm assumptions). It is evaluated in float64; sums of
products are widened by a relative 1e-12 to cover rounding in the bound itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SlthError
from .targets import MLP
from .ticket import EffectiveLayer

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


def _imul(M: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of M @ v for v in [lo, hi] (elementwise), widened for rounding."""
    c = (lo + hi) / 2
    r = (hi - lo) / 2
    mid = M @ c
    rad = np.abs(M) @ r
    slack = _ROUND * (np.abs(M) @ np.maximum(np.abs(lo), np.abs(hi)))
    return mid - rad - slack, mid + rad + slack


def target_bounds(target: MLP, dom: Domain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bounds [l_i, u_i] of the target's pre-activations z_i over the domain."""
    out = []
    W, c = target.weights[0], target.biases[0]
    l, u = _concretize(W, dom)
    if c is not None:
        l, u = l + c, u + c
    out.append((l, u))
    for W, c in zip(target.weights[1:], target.biases[1:]):
        l, u = _imul(W, np.maximum(l, 0), np.maximum(u, 0))
        if c is not None:
            l, u = l + c, u + c
        out.append((l, u))
    return out


def bound_details(target: MLP, eff: list[EffectiveLayer], domain: Domain) -> dict:
    """Per-layer deviation bounds and the final certified bound (see the module docstring)."""
    if len(eff) != target.depth:
        raise SlthError(f"ticket has {len(eff)} widen/combine pairs but the target has "
                        f"{target.depth} layers")
    for i, (e, W) in enumerate(zip(eff, target.weights)):
        if e.pos.shape != W.shape:
            raise SlthError(f"ticket layer pair {i} computes {list(e.pos.shape)} but the target "
                            f"layer is {list(W.shape)}")
    zb = target_bounds(target, domain)
    d0 = target.dims[0]
    per_layer = []
    n_unstable = []
    # ---- layer 1
    W, c, e = target.weights[0], target.biases[0], eff[0]
    Ep = e.pos - W
    En = e.neg + W
    eb = e.bias - (0.0 if c is None else c)
    if domain.kind == "box" and domain.lo >= 0:
        A = Ep
        rl = rh = eb
        exact_l, exact_h = _concretize(Ep, domain)
        exact_l, exact_h = exact_l + eb, exact_h + eb
    else:
        S = Ep + En  # E+ relu(x) + E- relu(-x) = E+ x + (E+ + E-) relu(-x)
        A = Ep
        R = domain.radius if domain.kind == "ball" else max(abs(domain.lo), abs(domain.hi)) * np.sqrt(d0)
        rl = eb - R * np.linalg.norm(np.maximum(-S, 0), axis=1)
        rh = eb + R * np.linalg.norm(np.maximum(S, 0), axis=1)
        if domain.kind == "ball":
            exact_h = eb + R * np.linalg.norm(np.maximum(np.maximum(Ep, En), 0), axis=1)
            exact_l = eb - R * np.linalg.norm(np.maximum(np.maximum(-Ep, -En), 0), axis=1)
        else:  # box with negative part: per coordinate, f(x) = Ep x (x>=0) or -En x (x<0)
            lo, hi = domain.lo, domain.hi
            cand = np.stack([Ep * max(hi, 0), Ep * max(lo, 0), -En * min(lo, 0), -En * min(hi, 0),
                             np.zeros_like(Ep)])
            exact_l = eb + cand.min(0).sum(1)
            exact_h = eb + cand.max(0).sum(1)
    for i in range(target.depth):
        al, ah = _concretize(A, domain)
        dl = np.maximum(al + rl, exact_l)
        dh = np.minimum(ah + rh, exact_h)
        dl = dl - _ROUND * np.abs(dl)
        dh = dh + _ROUND * np.abs(dh)
        per_layer.append(float(np.maximum(np.abs(dl), np.abs(dh)).max(initial=0.0)))
        if i == target.depth - 1:
            break
        # ---- ReLU
        l, u = zb[i]
        inactive = (u <= 0) & (u + dh <= 0)
        active = (l >= 0) & (l + dl >= 0)
        unstable = ~(inactive | active)
        n_unstable.append(int(unstable.sum()))
        del_l = np.maximum(np.minimum(0, dl), -np.maximum(0, u))
        del_h = np.minimum(np.maximum(0, dh), np.maximum(0, u + dh))
        A = np.where(active[:, None], A, 0.0)
        rl = np.where(active, rl, np.where(unstable, del_l, 0.0))
        rh = np.where(active, rh, np.where(unstable, del_h, 0.0))
        hhat_l = np.maximum(l + dl, 0)
        hhat_h = np.maximum(u + dh, 0)
        # ---- next layer
        W, c, e = target.weights[i + 1], target.biases[i + 1], eff[i + 1]
        Ep = e.pos - W
        eb = e.bias - (0.0 if c is None else c)
        wl, wh = _imul(W, rl, rh)
        pl, ph = _imul(Ep, hhat_l, hhat_h)
        A = W @ A
        rl = wl + pl + eb
        rh = wh + ph + eb
        exact_l = np.full(W.shape[0], -np.inf)
        exact_h = np.full(W.shape[0], np.inf)
    return {"certified_bound": per_layer[-1], "per_layer_deviation": per_layer,
            "unstable_units": n_unstable}


def certified_bound(target: MLP, eff: list[EffectiveLayer], domain: Domain | None = None) -> float:
    """Rigorous upper bound on max_{x in domain} ||F(x) - G_hat(x)||_inf (see module docs)."""
    return bound_details(target, eff, domain or Domain())["certified_bound"]


# ------------------------------------------------------------------------------------------
# errors actually found


def effective_forward(target_dims, eff: list[EffectiveLayer], x):
    """The ticket's function through its effective form (torch; differentiable)."""
    import torch

    h = x
    for i, e in enumerate(eff):
        P = torch.as_tensor(e.pos, dtype=x.dtype)
        N = torch.as_tensor(e.neg, dtype=x.dtype)
        b = torch.as_tensor(e.bias, dtype=x.dtype)
        # inputs that are all >= 0 (past layer 1: post-ReLU; images) make relu(-h) = 0: the
        # N term vanishes exactly, value and gradient
        h = (torch.relu(h) @ P.T + torch.relu(-h) @ N.T if bool((h < 0).any())
             else h @ P.T) + b
        if i < len(eff) - 1:
            h = torch.relu(h)
    return h


def _target_torch(target: MLP, x):
    import torch

    h = x
    for i, (W, c) in enumerate(zip(target.weights, target.biases)):
        h = h @ torch.as_tensor(W, dtype=x.dtype).T
        if c is not None:
            h = h + torch.as_tensor(c, dtype=x.dtype)
        if i < target.depth - 1:
            h = torch.relu(h)
    return h


def ascend_in_groups(target: MLP, eff: list[EffectiveLayer], domain: Domain, x0: np.ndarray,
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


def ascend(target: MLP, eff: list[EffectiveLayer], domain: Domain, x0: np.ndarray,
           steps: int) -> np.ndarray:
    """``steps`` steps of projected gradient ascent from each row of x0 [M, d]; returns [M, d].
    Rows do not interact (each follows its own deviation)."""
    import torch

    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    scale = domain.radius if domain.kind == "ball" else (domain.hi - domain.lo)
    for t in range(steps):
        diff = _target_torch(target, x) - effective_forward(target.dims, eff, x)
        obj = diff.abs().max(dim=1).values.sum()
        (grad,) = torch.autograd.grad(obj, x)
        step = 0.05 * scale * (1 - t / steps) + 1e-3 * scale
        with torch.no_grad():
            if domain.kind == "ball":
                x += step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            else:
                x += step * grad.sign()
            x.copy_(domain.project(x))
    return x.detach().numpy()


def max_output_error(target: MLP, ticket_forward, x: np.ndarray) -> float:
    """max over rows of ||F(x) - G_hat(x)||_inf, G_hat evaluated by ``ticket_forward`` (float64)."""
    if len(x) == 0:
        return 0.0
    return float(np.abs(target.forward(x) - ticket_forward(x)).max())
