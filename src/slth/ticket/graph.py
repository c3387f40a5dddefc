"""Tickets whose G is a graph (convolutional and residual targets), as plain PyTorch.

``Ticket.graph`` = {"nodes": [...], "gadgets": [...]}: G's nodes in topological order, each
{"op", "inputs", "attrs"} (ops of ``slth.nets``; node 0 is the input with its "shape"), a Linear or
convolution of G naming its tensor with "layer" (index into ``Ticket.layers``); and per affine op
of the target, the gadget standing in for it: {"kind": "pair", "widen": i, "combine": j,
"channels": C, "group": g} (tensor indices; the combine's columns read channel c at tap s as
column (widen neuron, s), s < g), or {"kind": "copies", "layer": j, "carriers": rows, ...}
(Burkholz: ``effective.copies_gadget_effective``). A parameter node at position k of the graph
is named ``k - 1`` in the state dict (an MLP's ``nn.Sequential`` numbering, generalised).

``graph_module`` builds a ``torch.fx.GraphModule`` whose Linear/Conv2d submodules carry
``weight_orig``/``weight_mask`` as ``torch.nn.utils.prune`` makes them: it runs with torch alone.
"""

from __future__ import annotations

import operator

import numpy as np

from .effective import EffectiveLayer, combine_effective, copies_gadget_effective, widen_inputs


def _nodes(graph: dict):
    from ..nets import Node

    return [Node(nd["op"], tuple(nd["inputs"]), tuple(nd.get("shape", ())), None, None,
                 _attrs(nd.get("attrs", {}))) for nd in graph["nodes"]]


def _attrs(a: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}


def graph_forward(ticket, x, dtype=None):
    """The masked G on torch inputs x [N, d] (float64 by default); differentiable."""
    import torch

    from ..nets import run_graph

    dtype = dtype or torch.float64
    nodes = _nodes(ticket.graph)
    layer_of = {i: nd["layer"] for i, nd in enumerate(ticket.graph["nodes"]) if "layer" in nd}

    def params(i):
        L = ticket.layers[layer_of[i]]
        b = None if L.bias is None else torch.as_tensor(L.masked_bias(), dtype=dtype)
        return torch.as_tensor(L.masked_weight(), dtype=dtype), b

    shape = ticket.graph["nodes"][0]["shape"]
    return run_graph(nodes, x.reshape(x.shape[0], *shape), params)


def graph_batch(ticket, budget: int = 1 << 25) -> int:
    """Inputs per batch so that no convolution's unfolded input ([C_in kh kw, H_out W_out] per
    input, float64) exceeds ``budget`` numbers."""
    import torch

    from ..nets import run_graph

    biggest = [1]
    nodes = _nodes(ticket.graph)
    layer_of = {i: nd["layer"] for i, nd in enumerate(ticket.graph["nodes"]) if "layer" in nd}

    def params(i):   # a shape-only pass: one zero input, the sizes of every convolution
        L = ticket.layers[layer_of[i]]
        return torch.zeros(L.shape, dtype=torch.float32), None

    def probe(nd, args, w, b):
        if nd.op == "conv":
            out = torch.nn.functional.conv2d(args[0], w, None, nd.attrs["stride"],
                                             nd.attrs["padding"], nd.attrs["dilation"])
            biggest[0] = max(biggest[0], int(np.prod(w.shape[1:])) * out.shape[2] * out.shape[3])
    shape = ticket.graph["nodes"][0]["shape"]
    run_graph(nodes, torch.zeros(1, *shape), params, probe)
    return max(1, budget // biggest[0])


def graph_module(ticket):
    """``torch.fx.GraphModule`` computing the ticket (float32), prune-style parameters."""
    import torch
    import torch.fx as fx
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils import prune

    root, g = nn.Module(), fx.Graph()
    nodes = ticket.graph["nodes"]
    vals = {0: g.call_method("reshape", (g.placeholder("x"), -1, *nodes[0]["shape"]))}
    for i, nd in enumerate(nodes[1:], start=1):
        op, a, ins = nd["op"], _attrs(nd.get("attrs", {})), [vals[j] for j in nd["inputs"]]
        if op in ("linear", "conv"):
            L = ticket.layers[nd["layer"]]
            w = torch.from_numpy(np.ascontiguousarray(L.weight, np.float32))
            mod = (nn.Linear(w.shape[1], w.shape[0], bias=L.bias is not None) if op == "linear"
                   else nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=a["stride"],
                                  padding=a["padding"], dilation=a["dilation"],
                                  bias=L.bias is not None))
            with torch.no_grad():
                mod.weight.copy_(w)
                if L.bias is not None:
                    mod.bias.copy_(torch.from_numpy(np.ascontiguousarray(L.bias, np.float32)))
            prune.custom_from_mask(mod, "weight", torch.from_numpy(L.mask))
            if L.bias is not None:
                prune.custom_from_mask(mod, "bias", torch.from_numpy(L.bias_mask))
            root.add_module(str(i - 1), mod)
            vals[i] = g.call_module(str(i - 1), (ins[0],))
        elif op == "relu":
            vals[i] = g.call_function(torch.relu, (ins[0],))
        elif op == "add":
            vals[i] = g.call_function(torch.add, (ins[0], ins[1]))
        elif op == "flatten":
            vals[i] = g.call_function(torch.flatten, (ins[0], 1))
        elif op == "maxpool":
            vals[i] = g.call_function(F.max_pool2d, (ins[0], a["kernel"], a["stride"],
                                                     a["padding"], a["dilation"]))
        elif op == "avgpool":
            vals[i] = g.call_function(F.avg_pool2d, (ins[0], a["kernel"], a["stride"],
                                                     a["padding"]),
                                      {"count_include_pad": a["count_include_pad"]})
        elif op == "adaptive_avgpool":
            vals[i] = g.call_function(F.adaptive_avg_pool2d, (ins[0], a["output"]))
        elif op == "subsample":
            sh, sw = a["stride"]
            vals[i] = g.call_function(operator.getitem, (ins[0], (
                slice(None), slice(None), slice(None, None, sh), slice(None, None, sw))))
        elif op == "pad_channels":
            vals[i] = g.call_function(F.pad, (ins[0], (0, 0, 0, 0, a["before"], a["after"])))
        else:  # pragma: no cover - graphs are built by slth
            raise ValueError(f"unknown op {op!r}")
    g.output(vals[len(nodes) - 1])
    return fx.GraphModule(root, g, class_name="Ticket")


def graph_effective(ticket) -> list[EffectiveLayer]:
    """Each gadget of a graph ticket read in the target's terms (from G's weights and masks)."""
    out = []
    for gd in ticket.graph["gadgets"]:
        if gd.get("kind") == "copies":      # Burkholz's copies of every unit
            out.append(copies_gadget_effective(ticket.layers, gd))
            continue
        U, V = ticket.layers[gd["widen"]], ticket.layers[gd["combine"]]
        col, a, beta = widen_inputs(U.weight, U.mask, U.bias, U.bias_mask, gd["widen"])
        m, g = U.shape[0], gd["group"]
        bias = None if V.bias is None else V.masked_bias()
        out.append(combine_effective(V.weight.reshape(len(V.weight), m, g),
                                     V.mask.reshape(len(V.mask), m, g), col, a, beta,
                                     gd["channels"], bias))
    return out
