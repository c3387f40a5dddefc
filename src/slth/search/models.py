"""Searchable networks: Pensia et al.'s structures for FC2 / FC4 / LeNet5, and any ticket's G.

Base networks (ReLU between layers, no biases by default, as in Pensia et al.'s Experiment 2):

* ``fc2``: d - 500 - C; ``fc4``: d - 500 - 500 - 500 - C (d input pixels, C classes).
* ``lenet5``: a frozen random convolution stem, then FC layers f - 120 - 84 - C. On 28x28 images
  the stem is LeNet5's: conv 5x5 (6 channels, padding 2), ReLU, max-pool 2, conv 5x5 (16),
  ReLU, max-pool 2, so f = 400. Images smaller than 16 pixels a side (digits, 8x8) cannot go
  through two 5x5 convolutions and two poolings (8 -> 4 -> 0), so for them both kernels become
  3x3 with padding 1 and the second pooling is dropped: 8x8 -> 4x4 x 6 -> 4x4 x 16, f = 256. The stem's weights are drawn once (Kaiming normal) and never trained or pruned,
  unless ``prune_convs`` (then they are ``SupermaskConv2d`` layers searched like the rest).

Structures (what replaces each FC layer d_in -> d_out of the base):

* ``redundant-linear`` / ``redundant-relu``: Pensia et al.'s redundant layer. Every input is
  copied to r units with one random weight each (``SupermaskCopies``, N(0, 2)), with a ReLU
  after them in the ReLU variant, then a dense ``SupermaskLinear`` r d_in -> d_out
  (N(0, 2 / d_in)). r (d_in d_out + d_in) weights.
* ``wide``: the base with every hidden layer widened to one width H chosen so the weight count
  matches the redundant structure's (Pensia et al.'s formula: FC2 2508, FC4 1314, LeNet5 378 on
  28x28 images with r = 5), Kaiming normal.
* ``dense``: the base network itself, random and searched (Kaiming normal).
* ``trained``: the base network with ordinary trainable weights (the dense trained baseline).

Counting follows the paper: "parameters" are the searched (or trained) FC weights, not the
frozen convolutions.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

import torch
from torch import nn

from ..errors import SlthError
from .supermask import (Supermask, SupermaskConv2d, SupermaskCopies, SupermaskLinear,
                        TopK, check_density, n_keep, uniform_scores, init_weight)

MODELS = ("fc2", "fc4", "lenet5")
STRUCTURES = ("redundant-linear", "redundant-relu", "wide", "dense", "trained")
SEARCHED = STRUCTURES[:4]
SCOPES = ("layer", "global")
LENET_HIDDEN = (120, 84)


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise SlthError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def lenet_stem_shape(image_shape) -> tuple[int, int, int, int, bool]:
    """(kernel, padding 1, padding 2, flattened features, second pool?) of the conv stem."""
    c, h, w = image_shape
    if min(h, w) >= 16:  # LeNet5's own stem
        k, p1, p2, pool2 = 5, 2, 0, True
    else:  # small images: 3x3 kernels, padding 1, one pooling only
        k, p1, p2, pool2 = 3, 1, 1, False
    h1, w1 = (h + 2 * p1 - k + 1) // 2, (w + 2 * p1 - k + 1) // 2
    h2, w2 = h1 + 2 * p2 - k + 1, w1 + 2 * p2 - k + 1
    if pool2:
        h2, w2 = h2 // 2, w2 // 2
    return k, p1, p2, 16 * h2 * w2, pool2


def base_dims(model: str, image_shape, n_classes: int, hidden: int = 500) -> list[int]:
    """Widths of the base network's FC part: [d_in, hidden..., n_classes]."""
    check_choice(model, MODELS, "model")
    d = int(math.prod(image_shape))
    if model == "fc2":
        return [d, hidden, n_classes]
    if model == "fc4":
        return [d, hidden, hidden, hidden, n_classes]
    return [lenet_stem_shape(image_shape)[3], *LENET_HIDDEN, n_classes]


def redundant_params(dims: list[int], r: int) -> int:
    """Weights of the redundant structure: sum over layers of r (d_in d_out + d_in)."""
    return sum(r * (a * b + a) for a, b in zip(dims[:-1], dims[1:]))


def wide_width(dims: list[int], r: int) -> int:
    """Hidden width H of the wide baseline: d_0 H + (L - 2) H^2 + H d_L = redundant weights."""
    p = redundant_params(dims, r)
    a, b = len(dims) - 3, dims[0] + dims[-1]
    h = p / b if a == 0 else (math.sqrt(b * b + 4 * a * p) - b) / (2 * a)
    return int(round(h))


class SearchNet(nn.Module):
    """A network whose supermask layers are searched. Input x [B, d] (flattened pixels), output
    logits [B, C]. ``scope``: top-k per tensor ("layer") or over all searched tensors ("global").
    ``info``: model, structure, widths, parameter counts (JSON-able)."""

    def __init__(self, body: nn.Sequential, density: float = 1.0, scope: str = "layer",
                 info: dict | None = None):
        super().__init__()
        self.body = body
        self.density = check_density(density)
        self.scope = check_choice(scope, SCOPES, "scope")
        self.info = dict(info or {})
        self._fixed = False
        self._topk = TopK()
        layers = self.supermasks()
        for m in layers:
            m.density = self.density
        if self.scope == "global" and layers:
            # equal starting ranges: otherwise layers with small fan-in win the global ranking
            common = sum(m.score_bound for m in layers) / len(layers)
            with torch.no_grad():
                for m in layers:
                    for _, s in m.prunable():
                        s.mul_(common / m.score_bound)
                    m.score_bound = common

    def supermasks(self) -> list[Supermask]:
        return [m for m in self.body.modules() if isinstance(m, Supermask)]

    @property
    def searched_params(self) -> int:
        """Weights (and biases) that can be kept or removed; for ``trained``: weights trained."""
        if self.supermasks():
            return sum(t.numel() for m in self.supermasks() for t, _ in m.prunable())
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def kept_params(self) -> int:
        with self.fixed_masks():
            return int(sum(int(k.sum()) for m in self.supermasks() for k in m.masks())) \
                if self.supermasks() else self.searched_params

    def compute_masks(self) -> list[list[torch.Tensor]]:
        """Float 0/1 masks of every supermask layer (one list per layer, one per tensor)."""
        layers = self.supermasks()
        if self.scope == "layer":
            return [m.compute_masks() for m in layers]
        with torch.no_grad():
            scores = [s for m in layers for _, s in m.prunable()]
            flat = torch.cat([s.detach().abs().reshape(-1) for s in scores])
            mask = self._topk(flat, n_keep(flat.numel(), self.density))
            parts = iter(torch.split(mask, [s.numel() for s in scores]))
            return [[next(parts).view_as(s) for _, s in m.prunable()] for m in layers]

    @contextlib.contextmanager
    def fixed_masks(self):
        """Compute the masks once and use them for every forward inside (evaluation, export)."""
        if self._fixed:
            yield
            return
        for m, ms in zip(self.supermasks(), self.compute_masks()):
            m.set_masks(ms)
        self._fixed = True
        try:
            yield
        finally:
            self._fixed = False
            for m in self.supermasks():
                m.set_masks(None)

    def forward(self, x):
        if self.scope == "global" and not self._fixed:
            for m, ms in zip(self.supermasks(), self.compute_masks()):
                m.set_masks(ms)
        return self.body(x)


def _fc_stack(dims, structure, density, r, bias, init, gen) -> list[nn.Module]:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if structure.startswith("redundant"):
            mods.append(SupermaskCopies(a, r, density, init=init or "pensia", gen=gen))
            if structure == "redundant-relu":
                mods.append(nn.ReLU())
            fan = a if (init or "pensia") == "pensia" else a * r
            mods.append(SupermaskLinear(a * r, b, density, bias, init or "pensia", fan, gen,
                                        score_bound=math.sqrt(2.0 / fan)))
        elif structure == "trained":
            lin = nn.Linear(a, b, bias=bias)
            with torch.no_grad():  # PyTorch's default init, drawn from our generator
                lin.weight.copy_(uniform_scores((b, a), 1 / math.sqrt(a), gen))
                if bias:
                    lin.bias.copy_(uniform_scores((b,), 1 / math.sqrt(a), gen))
            mods.append(lin)
        else:
            mods.append(SupermaskLinear(a, b, density, bias, init or "kaiming-normal", None, gen))
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return mods


def build(model: str, structure: str, image_shape, n_classes: int = 10, *, density: float = 0.5,
          scope: str = "layer", r: int = 5, hidden: int = 500, bias: bool = False,
          init: str | None = None, prune_convs: bool = False, seed: int = 0) -> SearchNet:
    """Build ``structure`` of ``model`` for images of ``image_shape`` (C, H, W); all random draws
    come from ``seed``. Input x [B, C*H*W] -> logits [B, n_classes]."""
    check_choice(model, MODELS, "model")
    check_choice(structure, STRUCTURES, "structure")
    if r < 1:
        raise SlthError(f"redundancy r must be >= 1, got {r}")
    if hidden < 1:
        raise SlthError(f"hidden width must be >= 1, got {hidden}")
    density = check_density(density)
    gen = torch.Generator().manual_seed(int(seed))
    dims = base_dims(model, image_shape, n_classes, hidden)
    if structure == "wide":
        dims = [dims[0]] + [wide_width(dims, r)] * (len(dims) - 2) + [dims[-1]]
    mods: list[nn.Module] = []
    if model == "lenet5":
        k, p1, p2, _, pool2 = lenet_stem_shape(image_shape)
        mods.append(nn.Unflatten(1, tuple(image_shape)))
        for cin, cout, p, pool in ((image_shape[0], 6, p1, True), (6, 16, p2, pool2)):
            if prune_convs and structure != "trained":
                mods.append(SupermaskConv2d(cin, cout, k, 1, p, density, init=init or "kaiming-normal", gen=gen))
            else:
                conv = nn.Conv2d(cin, cout, k, padding=p, bias=False)
                conv.weight.requires_grad_(False)
                with torch.no_grad():
                    conv.weight.copy_(init_weight(conv.weight.shape, cin * k * k, "kaiming-normal", gen))
                mods.append(conv)
            mods += [nn.ReLU(), nn.MaxPool2d(2)] if pool else [nn.ReLU()]
        mods.append(nn.Flatten())
    mods += _fc_stack(dims, structure, density, r, bias, init, gen)
    info = {"model": model, "structure": structure, "image_shape": list(image_shape),
            "n_classes": n_classes, "widths": dims, "redundancy": r if structure.startswith("redundant") else None,
            "bias": bias, "init": init, "prune_convs": prune_convs, "seed": seed}
    net = SearchNet(nn.Sequential(*mods), density, scope, info)
    net.info["searched_params"] = net.searched_params
    return net


def from_ticket(ticket, density: float = 0.5, scope: str = "global", seed: int = 0,
                rescale: bool = True) -> SearchNet:
    """A SearchNet over the G of a ``slth.ticket.Ticket``: its frozen weights (and biases, made
    prunable), ReLU between layers; the ticket's own masks are not used. Scores from ``seed``.

    rescale: the constructions draw G's weights from Uniform[-1, 1] (or wider), hundreds of
    times the Kaiming scale edge-popup is tuned for; its search then barely moves or diverges.
    So layer i's weights are divided by c_i = std(W_i) sqrt(fan_in_i / 2) and its biases by
    c_1 ... c_i: the searched net computes G(x) / (c_1 ... c_L) for every mask (ReLU is positively
    homogeneous), so masks, argmax and accuracy are G's. ``info["output_scale"]`` = c_1 ... c_L.
    Exports (``to_ticket``, ``to_sequential``) always carry the ticket's original weights.
    """
    gen = torch.Generator().manual_seed(int(seed))
    mods: list[nn.Module] = []
    scale = 1.0
    for i, L in enumerate(ticket.layers):
        out_d, in_d = L.shape
        w = torch.from_numpy(np.ascontiguousarray(L.weight, np.float32))
        c = float(w.double().std()) * math.sqrt(in_d / 2.0) if rescale and w.numel() > 1 else 1.0
        c = c if c > 0 else 1.0
        scale *= c
        b = None if L.bias is None else torch.from_numpy(np.ascontiguousarray(L.bias, np.float32))
        mods.append(SupermaskLinear(in_d, out_d, density, weight=w / c,
                                    bias_value=None if b is None else b / scale, gen=gen))
        if i < len(ticket.layers) - 1:
            mods.append(nn.ReLU())
    info = {"model": "ticket", "structure": "ticket", "widths": ticket.widths, "seed": seed,
            "rescale": rescale, "output_scale": scale, "ticket_meta": ticket.meta}
    net = SearchNet(nn.Sequential(*mods), density, scope, info)
    net.info["searched_params"] = net.searched_params
    net.source_ticket = ticket  # exports use its original weights
    return net
