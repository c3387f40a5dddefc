"""Tickets: a random network G plus binary masks, as standard PyTorch modules.

G is an MLP ``Linear -> ReLU -> Linear -> ... -> Linear`` (ReLU after every layer but the last).
``Ticket.module()`` returns exactly that as an ``nn.Sequential`` whose Linear layers carry
``weight_orig`` / ``weight_mask`` (and ``bias_orig`` / ``bias_mask``) as
``torch.nn.utils.prune`` makes them, so it runs with nothing of ours. Files: ``slth.ticket.files``;
the effective form the certification reads: ``slth.ticket.effective``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import SlthError
from .effective import EffectiveLayer, combine_effective, widen_inputs


@dataclass
class Layer:
    """One Linear layer of G. weight float32 [out, in]; mask bool [out, in]; bias/bias_mask [out]."""

    weight: np.ndarray
    mask: np.ndarray
    bias: np.ndarray | None = None
    bias_mask: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def masked_weight(self, dtype=np.float64) -> np.ndarray:
        return np.where(self.mask, self.weight.astype(dtype), 0.0)

    def masked_bias(self, dtype=np.float64) -> np.ndarray | None:
        if self.bias is None:
            return None
        return np.where(self.bias_mask, self.bias.astype(dtype), 0.0)

    @property
    def n_params(self) -> int:
        return int(self.weight.size + (0 if self.bias is None else self.bias.size))

    @property
    def n_active(self) -> int:
        return int(self.mask.sum() + (0 if self.bias_mask is None else self.bias_mask.sum()))


@dataclass
class Ticket:
    """G (its random weights, dense) and the masks that select the ticket. meta: JSON-able.
    graph: G's nodes when G is not a Linear/ReLU chain (None: the chain of ``layers``)."""

    layers: list[Layer]
    meta: dict = field(default_factory=dict)
    graph: list | None = None

    # ---------------------------------------------------------------- sizes
    @property
    def widths(self) -> list[int]:
        return [self.layers[0].shape[1]] + [L.shape[0] for L in self.layers]

    @property
    def random_params(self) -> int:
        """Number of weights (and biases) of G."""
        return sum(L.n_params for L in self.layers)

    @property
    def active_params(self) -> int:
        """Number of weights (and biases) the masks keep."""
        return sum(L.n_active for L in self.layers)

    @property
    def density(self) -> float:
        """Fraction of G's parameters kept (active / random)."""
        return self.active_params / max(1, self.random_params)

    @property
    def sparsity(self) -> float:
        """Fraction of G's parameters removed (1 - density)."""
        return 1.0 - self.density

    def sparsity_report(self) -> dict:
        """Density and sparsity per layer and in total (weights and biases counted together)."""
        return sparsity_summary([(L.shape, L.n_params, L.n_active) for L in self.layers])

    # ---------------------------------------------------------------- torch
    def module(self):
        """``nn.Sequential`` of Linear/ReLU (a graph ticket: ``torch.fx.GraphModule``) whose
        Linear/Conv2d layers carry prune-style ``weight_orig``/``weight_mask``."""
        if self.graph is not None:
            from .graph import graph_module
            return graph_module(self)
        import torch
        from torch import nn
        from torch.nn.utils import prune

        mods = []
        for i, L in enumerate(self.layers):
            lin = nn.Linear(L.shape[1], L.shape[0], bias=L.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(L.weight, np.float32)))
                if L.bias is not None:
                    lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(L.bias, np.float32)))
            prune.custom_from_mask(lin, "weight", torch.from_numpy(L.mask))
            if L.bias is not None:
                prune.custom_from_mask(lin, "bias", torch.from_numpy(L.bias_mask))
            mods.append(lin)
            if i < len(self.layers) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    def forward(self, x: np.ndarray, dtype=None, batch: int = 1000) -> np.ndarray:
        """Output of the pruned network on x [N, d_0] -> [N, d_out] (float64 by default).

        Exactly the masked network: layers whose masks keep at most one input per neuron are
        applied as a gather (no reassociation at all); the others as a masked dense product.
        """
        import torch

        if self.graph is not None:
            from .graph import graph_batch, graph_forward
            batch = min(batch, graph_batch(self))
            with torch.no_grad():
                outs = [graph_forward(self, torch.as_tensor(np.ascontiguousarray(x[i:i + batch]),
                                                            dtype=dtype or torch.float64),
                                      dtype).numpy() for i in range(0, len(x), batch)]
            return np.concatenate(outs) if outs else np.zeros((0, self.layers[-1].shape[0]))
        net = self.fast_module(dtype or torch.float64)
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch]), dtype=net.dtype)
                outs.append(net(xb).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.widths[-1]))

    def fast_module(self, dtype=None):
        """A callable computing the pruned network efficiently (see ``forward``)."""
        import torch

        if self.graph is not None:
            from .graph import graph_forward
            return lambda x: graph_forward(self, x, dtype or torch.float64)
        return _FastTicketNet(self, dtype or torch.float64)

    # ---------------------------------------------------------------- effective form
    def effective(self) -> list[EffectiveLayer]:
        """Read each (widen, combine) layer pair of the ticket in the target's terms.

        Needs G of even depth whose odd layers keep, per neuron, either one input weight or only
        its bias (the gadget form all three constructions produce). Computed from G's weights and
        masks alone - not from any construction's bookkeeping.
        """
        if self.graph is not None:
            from .graph import graph_effective
            return graph_effective(self)
        if len(self.layers) % 2:
            raise SlthError(f"ticket has {len(self.layers)} layers; the effective form needs "
                            "an even depth (pairs of widen/combine layers)")
        out = []
        for p in range(0, len(self.layers), 2):
            U, V = self.layers[p], self.layers[p + 1]
            col, a, beta = widen_inputs(U.weight, U.mask, U.bias, U.bias_mask, 2 * p)
            bias = None if V.bias is None else V.masked_bias()
            out.append(combine_effective(V.weight, V.mask, col, a, beta, U.shape[1], bias))
        return out

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the full ticket (G and masks) as safetensors (``slth.ticket.files``)."""
        from .files import TicketFile

        with TicketFile(path, self.tensor_specs(), self.meta, self.graph) as f:
            for k, L in zip(self.names, self.layers):
                f.put(f"{k}.weight_orig", L.weight)
                f.put(f"{k}.weight_mask", L.mask)
                if L.bias is not None:
                    f.put(f"{k}.bias_orig", L.bias)
                    f.put(f"{k}.bias_mask", L.bias_mask)

    @property
    def names(self) -> list[str]:
        """State-dict prefix of each layer: 0, 2, 4, ... in a chain; its node's position - 1 in
        a graph."""
        if self.graph is None:
            return [str(2 * i) for i in range(len(self.layers))]
        return self.names_of(self.graph)

    @staticmethod
    def names_of(graph: dict) -> list[str]:
        at = {nd["layer"]: i for i, nd in enumerate(graph["nodes"]) if "layer" in nd}
        return [str(at[j] - 1) for j in range(len(at))]

    def tensor_specs(self) -> dict:
        from .files import ticket_specs

        return ticket_specs([(L.shape, L.bias is not None) for L in self.layers], self.names)

    def save_compact(self, path: str | os.PathLike) -> None:
        """Write only the active weights (CSR per layer; ``slth.ticket.files``)."""
        import torch
        from safetensors.torch import save_file

        from .files import _atomic_save, _metadata

        tensors = {}
        for k, L in zip(self.names, self.layers):
            rows, cols = np.nonzero(L.mask.reshape(L.shape[0], -1))
            crow = np.zeros(L.shape[0] + 1, np.int64)
            np.add.at(crow, rows + 1, 1)
            tensors[f"{k}.crow_indices"] = torch.from_numpy(np.cumsum(crow))
            tensors[f"{k}.col_indices"] = torch.from_numpy(cols.astype(np.int32))
            tensors[f"{k}.values"] = torch.from_numpy(
                L.weight.reshape(L.shape[0], -1)[rows, cols].astype(np.float32))
            tensors[f"{k}.shape"] = torch.tensor(list(L.shape), dtype=torch.int64)
            if L.bias is not None:
                tensors[f"{k}.bias"] = torch.from_numpy(L.masked_bias(np.float32).astype(np.float32))
        _atomic_save(save_file, tensors, path, _metadata(self.meta, compact=True,
                                                         graph=self.graph))


def sparsity_summary(layers: list[tuple[tuple[int, int], int, int]]) -> dict:
    """Density and sparsity per layer and in total from each layer's (shape, params, active)."""
    out = []
    for i, (shape, params, active) in enumerate(layers):
        d = active / max(1, params)
        out.append({"layer": 2 * i, "shape": list(shape), "params": int(params),
                    "active": int(active), "density": d, "sparsity": 1 - d})
    params = sum(int(p) for _, p, _ in layers)
    active = sum(int(k) for _, _, k in layers)
    density = active / max(1, params)
    return {"layers": out, "params": params, "active": active, "density": density,
            "sparsity": 1.0 - density}


class _FastTicketNet:
    """Callable torch computation of a ticket: gathers for one-input-per-neuron layers, masked
    dense products otherwise. Differentiable (used for gradient ascent on inputs)."""

    def __init__(self, ticket: Ticket, dtype):
        import torch

        self.dtype = dtype
        self.ops = []
        for L in ticket.layers:
            kept = L.mask.sum(1)
            b = None if L.bias is None else torch.as_tensor(L.masked_bias(), dtype=dtype)
            if kept.max(initial=0) <= 1:
                col = torch.as_tensor(np.where(kept == 1, L.mask.argmax(1), 0))
                w = torch.as_tensor(np.where(kept == 1, L.weight[np.arange(L.shape[0]),
                                                                 col.numpy()], 0.0), dtype=dtype)
                self.ops.append(("gather", col, w, b))
            else:
                self.ops.append(("dense", torch.as_tensor(L.masked_weight(), dtype=dtype).T.contiguous(), None, b))

    def __call__(self, x):
        import torch

        h = x
        for i, (kind, a, w, b) in enumerate(self.ops):
            h = h[:, a] * w if kind == "gather" else h @ a
            if b is not None:
                h = h + b
            if i < len(self.ops) - 1:
                h = torch.relu(h)
        return h
