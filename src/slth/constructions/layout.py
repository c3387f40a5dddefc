"""G's graph for a target that is a graph: how the gadgets of a construction stand in for the
target's affine ops, the rest of the target (pooling, flatten, residual adds, shortcuts) copied
into G unpruned (``slth.ticket.graph`` describes the format)."""

from __future__ import annotations

from .base import TargetLayer, Tensor


def graph_builder(target, tensors: list[tuple[int, Tensor]]):
    """The start of G's graph for a ``Net`` target: (nodes [the input], where {target node:
    G node}, by_layer {target layer: indices of its tensors}, add(op, inputs, attrs, **kw) ->
    the new node's index)."""
    out = [{"op": "input", "inputs": [], "shape": list(target.nodes[0].shape)}]
    by_layer: dict[int, list[int]] = {}
    for j, (i, _) in enumerate(tensors):
        by_layer.setdefault(i, []).append(j)

    def add(op, inputs, attrs=None, **kw):
        out.append({"op": op, "inputs": list(inputs), "attrs": attrs or {}, **kw})
        return len(out) - 1

    return out, {0: 0}, by_layer, add


def pair_graph(target, layers: list[TargetLayer], tensors: list[tuple[int, Tensor]]) -> dict:
    """G's graph (``slth.ticket.graph``) for a ``Net`` target and a gadget of tensors per affine
    op (widen ... combine): the target's graph with every affine op replaced by its tensors
    (ReLU between them; a Linear reading a flattened map gets its first tensor before the
    flatten), every other node copied."""
    nodes = target.nodes
    out, where, by_layer, add = graph_builder(target, tensors)
    gadgets = []
    for i, nd in enumerate(nodes[1:], start=1):
        if nd.op not in ("linear", "conv"):
            where[i] = add(nd.op, [where[j] for j in nd.inputs], _jsonable_attrs(nd.attrs))
            continue
        k = target.affine.index(i)
        L, src = layers[k], nd.inputs[0]
        h = where[nodes[src].inputs[0]] if L.kind == "flat" else where[src]
        js = by_layer[k]
        for n, j in enumerate(js):
            t = tensors[j][1]
            if L.kind == "flat" and t.op == "linear" and out[h]["op"] != "flatten":
                h = add("flatten", [h])
            h = add(t.op, [h], _jsonable_attrs(t.attrs), layer=j)
            if n < len(js) - 1:
                h = add("relu", [h])
        where[i] = h
        gadgets.append({"kind": "pair", "widen": js[0], "combine": js[-1],
                        "channels": L.channels, "group": L.group})
    return {"nodes": _prune(out), "gadgets": gadgets}


def _jsonable_attrs(a: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()}


def _prune(nodes: list[dict]) -> list[dict]:
    """Drop nodes the output does not depend on (a target's flatten whose Linear now reads the
    widened map), renumbering the rest."""
    need = {len(nodes) - 1}
    for i in range(len(nodes) - 1, -1, -1):
        if i in need:
            need.update(nodes[i]["inputs"])
    keep = sorted(need)
    new = {old: k for k, old in enumerate(keep)}
    return [{**nodes[i], "inputs": [new[j] for j in nodes[i]["inputs"]]} for i in keep]
