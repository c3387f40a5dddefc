"""Supermask layers (edge-popup, Ramanujan et al. 2019): frozen random weights, learned scores.

Every prunable tensor W (a weight, or a bias when biases are prunable) has a score tensor S of
the same shape. The forward pass uses ``W * M`` where M keeps the k entries of largest |S|
(k = ``n_keep(W.numel(), density)``), per tensor ("layer" scope) or over all tensors of a model
at once ("global" scope, see ``SearchNet``). The backward pass is straight-through: the gradient
of ``W * M`` with respect to M (that is ``grad * W``) is handed to |S| as if M were |S|, so
``dL/dS = grad * W * sign(S)``. W itself is a buffer: it never receives a gradient.

The mask is found without any full sort: ``torch.topk`` on the smaller side (the k largest, or
the n - k smallest), and during training ``TopK`` ranks only the entries near the previous
step's threshold. ``selector="sort"`` switches a layer to a faithful
copy of hidden-networks' ``GetSubnet`` (clone, full sort, scatter), used only by
``slth bench supermask`` to measure the difference on the same structure.

Weight initialisations (fan_in = inputs per output unit):

* ``kaiming-normal``: N(0, 2 / fan_in).
* ``kaiming-uniform``: Uniform[-sqrt(6 / fan_in), sqrt(6 / fan_in)].
* ``signed-constant``: +-sqrt(2 / fan_in), random sign (Ramanujan et al.'s best).
* ``pensia``: N(0, 2 / fan_in) with Pensia et al.'s fan-ins: 1 for the copies of a redundant
  layer (so N(0, 2)) and the *base* layer's input width for its outgoing layer (not r times it).

Scores start Uniform[-1/sqrt(fan_in), 1/sqrt(fan_in)] (hidden-networks' ``kaiming_uniform_``
with a = sqrt(5)); in a redundant layer they start Uniform[-std, std] with the weights' std
(sqrt(2) for the copies, sqrt(2 / d_in) after them) as in Pensia et al.'s code. With a global
top-k, ``SearchNet`` rescales every layer's scores to one common range (the mean of the layers'
ranges) so that no layer starts ahead in the global ranking.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SlthError

INITS = ("kaiming-normal", "kaiming-uniform", "signed-constant", "pensia")


def check_density(density: float, what: str = "density") -> float:
    """Return density as float if 0 < density <= 1, else raise SlthError."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise SlthError(f"{what} must be a number in (0, 1], got {density!r}") from None
    if not 0.0 < d <= 1.0:
        raise SlthError(f"{what} must be in (0, 1] (the fraction of weights kept), got {density:g}")
    return d


def n_keep(numel: int, density: float) -> int:
    """Entries a tensor of ``numel`` entries keeps at ``density``: round(density * numel), at
    least 1 (a tensor is never pruned away entirely) and at most numel."""
    return max(1, min(int(numel), round(density * numel)))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Float 0/1 mask of ``scores``' shape keeping exactly the k largest entries (ties broken
    by topk). Uses topk on the smaller side; no sort."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores)
    if k <= n - k:
        idx = torch.topk(flat, k, sorted=False).indices
        return torch.zeros_like(flat).index_fill_(0, idx, 1.0).view_as(scores)
    idx = torch.topk(flat, n - k, largest=False, sorted=False).indices
    return torch.ones_like(flat).index_fill_(0, idx, 0.0).view_as(scores)


class TopK:
    """Exact top-k masks of a tensor whose values drift a little between calls (scores during
    training). The last call's threshold t brackets the next one: entries above t + w are kept
    outright, entries below t - w dropped, and only the few in the band are ranked (topk on
    them). If the band does not hold the k-th value it falls back to ``topk_mask``. Same result
    as ``topk_mask`` (exactly k kept, every kept value >= every dropped one) at a fraction of the
    cost on large tensors; w adapts so the band holds about max(2048, n / 256) entries."""

    def __init__(self):
        self.t: float | None = None
        self.w = 0.0

    def __call__(self, a: torch.Tensor, k: int) -> torch.Tensor:
        flat = a.reshape(-1)
        n = flat.numel()
        target = max(2048, n // 256)
        if k >= n or n < 4 * target or self.t is None:
            return self._full(a, k)
        hi, lo = self.t + self.w, self.t - self.w
        above = flat > hi
        n_above = int(above.sum())
        band = (flat >= lo) & ~above
        idx = band.nonzero().squeeze(1)
        if n_above > k or n_above + idx.numel() < k:
            self.w *= 4
            return self._full(a, k)
        vals = flat[idx]
        top = torch.topk(vals, k - n_above, sorted=False)
        mask = above.to(a.dtype)
        mask[idx[top.indices]] = 1.0
        if top.values.numel():
            self.t = float(top.values.min())
        if idx.numel() > 4 * target:
            self.w /= 2
        elif idx.numel() < target / 4:
            self.w *= 1.5
        return mask.view_as(a)

    def _full(self, a, k):
        mask = topk_mask(a, k)
        if k < a.numel():
            kept = a.reshape(-1)[mask.reshape(-1) > 0]
            self.t = float(kept.min())
            self.w = self.w or 0.01 * float(kept.max() - self.t) + 1e-12
        return mask


class _MaskedWeight(torch.autograd.Function):
    """(weight, scores, mask) -> weight * mask; straight-through gradient to the scores only."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        # d(w m)/dm = w, passed straight through the top-k, then through |s| (sign(s))
        return None, (grad * weight).mul_(scores.sign()), None


class SortGetSubnet(torch.autograd.Function):
    """hidden-networks' ``GetSubnet``, reproduced faithfully: clone the scores, sort all of
    them, set the lowest int((1 - k) n) to 0 and the rest to 1; straight-through backward.
    k is the fraction kept (their "prune rate")."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat_out = out.flatten()
        flat_out[idx[:j]] = 0
        flat_out[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


def init_weight(shape, fan_in: int, init: str, gen: torch.Generator) -> torch.Tensor:
    """A float32 tensor of ``shape`` drawn by ``init`` (see the module docstring)."""
    if init not in INITS:
        raise SlthError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    std = math.sqrt(2.0 / fan_in)
    if init in ("kaiming-normal", "pensia"):
        return torch.randn(shape, generator=gen) * std
    if init == "kaiming-uniform":
        return (torch.rand(shape, generator=gen) * 2 - 1) * (math.sqrt(3.0) * std)
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -std, std)


def uniform_scores(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


class Supermask(nn.Module):
    """Base of the supermask layers. Subclasses register buffers ``weight`` (and ``bias``) and
    parameters ``scores`` (and ``bias_scores``) and use ``masked()`` in their forward."""

    selector = "topk"  # or "sort" (hidden-networks' GetSubnet; layer scope only)
    score_bound = 1.0  # scores start Uniform[-score_bound, score_bound]

    def __init__(self, density: float):
        super().__init__()
        self.density = check_density(density)
        self._given: list[torch.Tensor] | None = None
        self._topk = [TopK(), TopK()]  # weight, bias

    def prunable(self) -> list[tuple[torch.Tensor, nn.Parameter]]:
        """[(frozen tensor, its scores)]: the weight, then the bias if it is prunable."""
        out = [(self.weight, self.scores)]
        if getattr(self, "bias_scores", None) is not None:
            out.append((self.bias, self.bias_scores))
        return out

    def compute_masks(self) -> list[torch.Tensor]:
        """This layer's own top-k masks (float 0/1), one per prunable tensor."""
        with torch.no_grad():
            return [sel(s.abs(), n_keep(s.numel(), self.density))
                    for sel, (_, s) in zip(self._topk, self.prunable())]

    def set_masks(self, masks: list[torch.Tensor] | None) -> None:
        """Use these masks (e.g. from a global top-k) instead of the layer's own; None: own."""
        self._given = masks

    def masks(self) -> list[torch.Tensor]:
        return self._given if self._given is not None else self.compute_masks()

    def masked(self) -> list[torch.Tensor | None]:
        """[weight * mask, bias * mask or None], differentiable in the scores."""
        if self.selector == "sort":
            w = self.weight * SortGetSubnet.apply(self.scores.abs(), self.density)
            b = None if self.bias is None else self.bias * SortGetSubnet.apply(
                self.bias_scores.abs(), self.density)
            return [w, b]
        ms = self.masks()
        w = _MaskedWeight.apply(self.weight, self.scores, ms[0])
        b = None if self.bias is None else _MaskedWeight.apply(self.bias, self.bias_scores, ms[1])
        return [w, b]


class SupermaskLinear(Supermask):
    """y = x @ (W * M)^T (+ b * M_b). x [B, in] -> [B, out]. W frozen [out, in]."""

    def __init__(self, in_features: int, out_features: int, density: float = 0.5,
                 bias: bool = False, init: str = "kaiming-normal", fan_in: int | None = None,
                 gen: torch.Generator | None = None, weight: torch.Tensor | None = None,
                 bias_value: torch.Tensor | None = None, score_bound: float | None = None):
        super().__init__(density)
        gen = gen or torch.Generator().manual_seed(0)
        fan = fan_in or in_features
        sb = self.score_bound = score_bound or 1 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        if weight is None:
            weight = init_weight((out_features, in_features), fan, init, gen)
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32).clone())
        self.scores = nn.Parameter(uniform_scores((out_features, in_features), sb, gen))
        if bias or bias_value is not None:
            if bias_value is None:
                bias_value = uniform_scores((out_features,), 1 / math.sqrt(in_features), gen)
            self.register_buffer("bias", torch.as_tensor(bias_value, dtype=torch.float32).clone())
            self.bias_scores = nn.Parameter(uniform_scores((out_features,), sb, gen))
        else:
            self.bias, self.bias_scores = None, None

    def forward(self, x):
        w, b = self.masked()
        return F.linear(x, w, b)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density:g}")


class SupermaskConv2d(Supermask):
    """conv2d(x, W * M, b * M_b). x [B, C_in, H, W]. W frozen [C_out, C_in, kh, kw]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, density: float = 0.5, bias: bool = False,
                 init: str = "kaiming-normal", gen: torch.Generator | None = None):
        super().__init__(density)
        gen = gen or torch.Generator().manual_seed(0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        fan = in_channels * kernel_size * kernel_size
        self.score_bound = 1 / math.sqrt(fan)
        self.register_buffer("weight", init_weight(shape, fan, init, gen))
        self.scores = nn.Parameter(uniform_scores(shape, self.score_bound, gen))
        if bias:
            self.register_buffer("bias", uniform_scores((out_channels,), 1 / math.sqrt(fan), gen))
            self.bias_scores = nn.Parameter(uniform_scores((out_channels,), self.score_bound, gen))
        else:
            self.bias, self.bias_scores = None, None

    def forward(self, x):
        w, b = self.masked()
        return F.conv2d(x, w, b, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
                f"density={self.density:g}")


class SupermaskCopies(Supermask):
    """The first half of Pensia et al.'s redundant layer: every input i is copied to r units,
    unit i*r + c computing x_i * u[i, c] (one random weight each). x [B, in] -> [B, in * r].

    As a Linear layer this is a [in * r, in] matrix with one entry per row (``dense_weight``).
    """

    bias = None
    bias_scores = None

    def __init__(self, in_features: int, r: int, density: float = 0.5,
                 init: str = "pensia", gen: torch.Generator | None = None):
        super().__init__(density)
        gen = gen or torch.Generator().manual_seed(0)
        self.in_features, self.r = in_features, r
        self.register_buffer("weight", init_weight((in_features, r), 1, init, gen))
        self.score_bound = math.sqrt(2.0)
        self.scores = nn.Parameter(uniform_scores((in_features, r), self.score_bound, gen))

    def forward(self, x):
        (u, _) = self.masked()
        return (x.unsqueeze(2) * u).reshape(x.shape[0], -1)

    def dense(self, t: torch.Tensor) -> torch.Tensor:
        """A [in, r] tensor laid out as the [in * r, in] Linear weight (zeros off the copies)."""
        d, r = self.in_features, self.r
        out = torch.zeros(d * r, d, dtype=t.dtype)
        out[torch.arange(d * r), torch.arange(d).repeat_interleave(r)] = t.reshape(-1)
        return out

    def extra_repr(self):
        return f"in_features={self.in_features}, r={self.r}, density={self.density:g}"
