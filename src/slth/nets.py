"""Feed-forward target networks as a graph: convolutions, pooling, residual adds.

A :class:`Net` is a list of :class:`Node` in topological order. Node 0 is the input, the last node
is the output (a vector). The operations (``OPS``) are ``linear``, ``conv`` (groups=1), ``relu``,
``maxpool``, ``avgpool``, ``adaptive_avgpool``, ``flatten``, ``add`` (residual sums), and the two
parameter-free pieces of option-A ResNet shortcuts: ``subsample`` (``x[:, :, ::sh, ::sw]``) and
``pad_channels`` (zero channels before/after, ``F.pad(x, (0, 0, 0, 0, before, after))``).
Eval-mode batch norm is folded exactly into the conv/linear right before it
(``W' = W·γ/√(var+eps)``, ``b' = (b − μ)·γ/√(var+eps) + β``); the node records it in ``folded``.

One interpreter (``torch.nn.functional`` ops, :func:`run_graph`) computes ``Net.forward`` (float64,
batched), ``Net.torch_forward`` (float64, differentiable) and ``Net.to_module()`` (float32), so the
three cannot disagree.

Where a Net comes from
----------------------
* an ``nn.Module``: traced with ``torch.fx`` (:func:`net_from_module`); every operation is mapped
  to the ops above or refused with one line naming it and where it is. The Net is then checked
  numerically against the module (float64 copy, random inputs): a graph that does not reproduce
  the model (e.g. in-place updates of a tensor seen through a view) is refused.
* a ``.safetensors`` file written by :meth:`Net.save`: the graph (nodes without weights) is JSON in
  the safetensors metadata (``slth.format = "slth.net"``), weights are tensors ``node{i}.weight`` /
  ``node{i}.bias`` (float64). Reading it runs no code.
* a ``torch.export`` archive (``.pt2``, :func:`net_from_pt2`), its ATen graph mapped the same way.

What loading a ``.pt2`` can do (torch 2.13, read from ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``): ``torch.export.load`` is documented as using pickle, and it
does run code from the file in these places: (1) weights or constants stored with
``use_pickle: true`` are read with ``torch.load(weights_only=False)``; (2) "custom_obj" and
"opaque_obj" constants are unpickled (TorchScript pickle / ``pickle.loads``); (3) the sample inputs
(and legacy-format state dicts) go through ``deserialize_torch_artifact``, which falls back to
``torch.load(weights_only=False)`` when the safe load fails; (4) files under
``data/aotinductor/`` are loaded as compiled shared libraries; (5) symbolic shape expressions
(``expr_str``) are parsed with ``sympy.sympify``, which evaluates Python; (6) ``guards_code`` strings
are compiled into Python when ``ExportedProgram.module()`` is called. slth therefore inspects the
zip archive *before* calling ``torch.export.load`` and refuses it unless: it is the current archive
format; it holds only models/, data/weights/, data/constants/, data/sample_inputs/, extra/ entries;
every weight/constant is a plain tensor payload (``use_pickle: false``, no custom/opaque objects);
every sample-inputs file loads with ``torch.load(weights_only=True)``; every ``expr_str`` is a plain
``Symbol('s0', ...)``/integer expression over a small allow-list of names; and every graph node is an
ATen operator or a ``_operator``/``math``/``torch.sym_*`` builtin. slth never calls
``ExportedProgram.module()`` or runs the program; it reads the graph and the tensors, and only
folds constants through an allow-list of ATen ops (transpose/permute/view/...).
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import io
import json
import linecache
import operator
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SlthError

OPS = ("input", "linear", "conv", "relu", "maxpool", "avgpool", "adaptive_avgpool", "flatten",
       "add", "subsample", "pad_channels")
AFFINE_OPS = ("linear", "conv")
SUPPORTED = ("slth supports Linear, Conv2d (groups=1), ReLU, max/avg pooling (ceil_mode=False), "
             "adaptive average pooling, flatten, batch norm (eval mode, right after a conv/linear), "
             "residual adds and option-A shortcuts (x[:, :, ::2, ::2], zero channel padding)")
NET_FORMAT = "slth.net"
NET_FORMAT_VERSION = "1"
_ARITY = {"input": 0, "add": 2}


@dataclass(eq=False)
class Node:
    """One operation of a :class:`Net` (see the module docstring for ``op`` and ``attrs``)."""

    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    name: str = ""
    folded: str | None = None

    @property
    def n_params(self) -> int:
        return int((0 if self.weight is None else self.weight.size)
                   + (0 if self.bias is None else self.bias.size))


# --------------------------------------------------------------------------------------------
# attributes and shapes


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (bool, np.bool_)):
        raise SlthError(f"{what} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in v):
        return (int(v[0]), int(v[-1]))
    raise SlthError(f"{what} must be an int or a pair of ints, got {v!r}")


def normalize_attrs(op: str, attrs: dict | None, where: str = "") -> dict:
    """Attributes with defaults filled in and pairs as int tuples (the form fingerprints hash)."""
    a = dict(attrs or {})
    w = f"node {where}: " if where else ""
    try:
        if op == "conv":
            out = {"stride": _pair(a.pop("stride", 1), w + "conv stride"),
                   "padding": _pair(a.pop("padding", 0), w + "conv padding"),
                   "dilation": _pair(a.pop("dilation", 1), w + "conv dilation")}
        elif op == "maxpool":
            k = _pair(a.pop("kernel"), w + "maxpool kernel")
            s = a.pop("stride", None)
            out = {"kernel": k, "stride": k if s is None else _pair(s, w + "maxpool stride"),
                   "padding": _pair(a.pop("padding", 0), w + "maxpool padding"),
                   "dilation": _pair(a.pop("dilation", 1), w + "maxpool dilation")}
        elif op == "avgpool":
            k = _pair(a.pop("kernel"), w + "avgpool kernel")
            s = a.pop("stride", None)
            out = {"kernel": k, "stride": k if s is None else _pair(s, w + "avgpool stride"),
                   "padding": _pair(a.pop("padding", 0), w + "avgpool padding"),
                   "count_include_pad": bool(a.pop("count_include_pad", True))}
        elif op == "adaptive_avgpool":
            out = {"output": _pair(a.pop("output"), w + "adaptive_avgpool output")}
        elif op == "subsample":
            out = {"stride": _pair(a.pop("stride"), w + "subsample stride")}
        elif op == "pad_channels":
            out = {"before": int(a.pop("before", 0)), "after": int(a.pop("after", 0))}
        else:
            out = {}
    except KeyError as e:
        raise SlthError(f"{w}op {op!r} needs attribute {e.args[0]!r}") from None
    if a:
        raise SlthError(f"{w}unknown attributes {sorted(a)} for op {op!r}")
    for key in ("stride", "dilation", "kernel", "output"):
        if key in out and min(out[key]) < 1:
            raise SlthError(f"{w}{op} {key} must be >= 1, got {out[key]}")
    for key in ("padding",):
        if key in out and min(out[key]) < 0:
            raise SlthError(f"{w}{op} padding must be >= 0, got {out[key]}")
    if op == "pad_channels" and min(out["before"], out["after"]) < 0:
        raise SlthError(f"{w}pad_channels needs before, after >= 0, got {out}")
    return out


def _window_out(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def infer_shape(op: str, in_shapes: list[tuple[int, ...]], weight, attrs: dict,
                where: str = "") -> tuple[int, ...]:
    """The output shape (without batch) of ``op``; SlthError when the inputs do not fit."""
    at = f" at {where}" if where else ""
    if len(in_shapes) != _ARITY.get(op, 1):
        raise SlthError(f"{op}{at} takes {_ARITY.get(op, 1)} inputs, got {len(in_shapes)}")
    s = tuple(in_shapes[0]) if in_shapes else ()
    if op == "linear":
        if weight is None or weight.ndim != 2:
            raise SlthError(f"linear{at} needs a 2-D weight")
        if len(s) != 1:
            raise SlthError(f"linear{at} receives a {len(s)}-D map {list(s)}; flatten it first")
        if weight.shape[1] != s[0]:
            raise SlthError(f"layer{at} expects {weight.shape[1]} inputs but receives {s[0]}; "
                            "check input_shape")
        return (int(weight.shape[0]),)
    if op in ("relu",):
        return s
    if op == "add":
        if tuple(in_shapes[1]) != s:
            raise SlthError(f"add{at} of shapes {list(s)} and {list(in_shapes[1])}; "
                            "residual adds need equal shapes")
        return s
    if op == "flatten":
        return (int(np.prod(s)),)
    if len(s) != 3:
        raise SlthError(f"{op}{at} needs a (C, H, W) map, got {list(s)}")
    c, h, w = s
    if op == "conv":
        if weight is None or weight.ndim != 4:
            raise SlthError(f"conv{at} needs a 4-D weight")
        if weight.shape[1] != c:
            raise SlthError(f"conv{at} expects {weight.shape[1]} input channels but receives {c}; "
                            "check input_shape")
        (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
        oh = _window_out(h, weight.shape[2], sh, ph, dh)
        ow = _window_out(w, weight.shape[3], sw, pw, dw)
        out = (int(weight.shape[0]), oh, ow)
    elif op in ("maxpool", "avgpool"):
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        dh, dw = attrs.get("dilation", (1, 1))
        if 2 * ph > dh * (kh - 1) + 1 or 2 * pw > dw * (kw - 1) + 1:
            raise SlthError(f"{op}{at}: padding {attrs['padding']} exceeds half the kernel")
        out = (c, _window_out(h, kh, sh, ph, dh), _window_out(w, kw, sw, pw, dw))
    elif op == "adaptive_avgpool":
        out = (c, *attrs["output"])
    elif op == "subsample":
        sh, sw = attrs["stride"]
        out = (c, -(-h // sh), -(-w // sw))
    elif op == "pad_channels":
        out = (c + attrs["before"] + attrs["after"], h, w)
    else:
        raise SlthError(f"unknown op {op!r}{at}; ops are {', '.join(OPS)}")
    if min(out) < 1:
        raise SlthError(f"{op}{at} turns a {list(s)} map into {list(out)}; the input is too "
                        "small for this network (check input_shape)")
    return tuple(int(v) for v in out)


# --------------------------------------------------------------------------------------------
# the interpreter


def apply_node(node: Node, args: list, weight=None, bias=None):
    """One node on torch tensors [N, ...] (shared by forward, torch_forward and to_module)."""
    op, a = node.op, node.attrs
    x = args[0]
    if op == "linear":
        return F.linear(x, weight, bias)
    if op == "conv":
        return F.conv2d(x, weight, bias, a["stride"], a["padding"], a["dilation"])
    if op == "relu":
        return F.relu(x)
    if op == "maxpool":
        return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"])
    if op == "avgpool":
        return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"],
                            count_include_pad=a["count_include_pad"])
    if op == "adaptive_avgpool":
        return F.adaptive_avg_pool2d(x, a["output"])
    if op == "flatten":
        return torch.flatten(x, 1)
    if op == "add":
        return x + args[1]
    if op == "subsample":
        sh, sw = a["stride"]
        return x[:, :, ::sh, ::sw]
    if op == "pad_channels":
        return F.pad(x, (0, 0, 0, 0, a["before"], a["after"]))
    raise SlthError(f"unknown op {op!r}")


def _last_use(nodes) -> list[int]:
    last = list(range(len(nodes)))
    for i, nd in enumerate(nodes):
        for j in nd.inputs:
            last[j] = max(last[j], i)
    return last


def run_graph(nodes, x, params, visit=None):
    """Evaluate ``nodes`` on ``x`` [N, *in_shape]; ``params(i)`` gives (weight, bias) tensors of
    affine node i (``visit(node, inputs, weight, bias)`` sees each affine op first).
    Intermediate values are dropped after their last use."""
    last = _last_use(nodes)
    vals = {}
    for i, nd in enumerate(nodes):
        if i == 0:
            v = x
        elif nd.op in AFFINE_OPS:
            w, b = params(i)
            if visit is not None:
                visit(nd, [vals[nd.inputs[0]]], w, b)
            v = apply_node(nd, [vals[nd.inputs[0]]], w, b)
        else:
            v = apply_node(nd, [vals[j] for j in nd.inputs])
        vals[i] = v
        for j in set(nd.inputs):
            if last[j] == i:
                del vals[j]
    return vals[len(nodes) - 1]


def _as_tensor64(a: np.ndarray | None):
    if a is None:
        return None
    if not a.flags.writeable or not a.flags.c_contiguous or a.dtype != np.float64:
        return torch.tensor(np.asarray(a, dtype=np.float64))
    return torch.from_numpy(a)


class NetModule(nn.Module):
    """A plain torch module computing a :class:`Net` (Linear/Conv2d parameters, float32).

    Parameters live in ``self.layers["node{i}"]``; ``forward`` accepts [N, *in_shape] or [N, in_dim].
    """

    def __init__(self, net: "Net"):
        super().__init__()
        self.input_shape = tuple(net.in_shape)
        self._nodes = [Node(n.op, tuple(n.inputs), tuple(n.shape), None, None, dict(n.attrs),
                            n.name, n.folded) for n in net.nodes]
        self.layers = nn.ModuleDict()
        for i in net.affine:
            nd = net.nodes[i]
            w = torch.tensor(nd.weight, dtype=torch.float32)
            if nd.op == "linear":
                m = nn.Linear(w.shape[1], w.shape[0], bias=nd.bias is not None)
            else:
                a = nd.attrs
                m = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=a["stride"],
                              padding=a["padding"], dilation=a["dilation"],
                              bias=nd.bias is not None)
            with torch.no_grad():
                m.weight.copy_(w)
                if nd.bias is not None:
                    m.bias.copy_(torch.tensor(nd.bias, dtype=torch.float32))
            self.layers[f"node{i}"] = m

    def _params(self, i):
        m = self.layers[f"node{i}"]
        return m.weight, m.bias

    def forward(self, x):
        x = x.reshape(x.shape[0], *self.input_shape)
        return run_graph(self._nodes, x, self._params)


# --------------------------------------------------------------------------------------------
# Net


class Net:
    """A feed-forward network as a graph of :class:`Node` (see the module docstring)."""

    def __init__(self, nodes: list[Node], name: str = ""):
        self.nodes = list(nodes)
        self.name = name
        self._validate()
        self.affine = [i for i, n in enumerate(self.nodes) if n.op in AFFINE_OPS]

    def _validate(self) -> None:
        nodes = self.nodes
        if not nodes or nodes[0].op != "input":
            raise SlthError("a Net starts with one 'input' node")
        if len(nodes) < 2:
            raise SlthError("a Net needs at least one operation after its input")
        for i, nd in enumerate(nodes):
            where = f"{i} ({nd.name})" if nd.name else str(i)
            if nd.op not in OPS:
                raise SlthError(f"node {where}: unknown op {nd.op!r}; ops are {', '.join(OPS)}")
            if i > 0 and nd.op == "input":
                raise SlthError(f"node {where}: only node 0 may be the input")
            nd.inputs = tuple(int(j) for j in nd.inputs)
            if any(not 0 <= j < i for j in nd.inputs):
                raise SlthError(f"node {where}: inputs {list(nd.inputs)} must be earlier nodes")
            nd.attrs = normalize_attrs(nd.op, nd.attrs, where)
            if nd.op in AFFINE_OPS:
                if nd.weight is None:
                    raise SlthError(f"node {where}: {nd.op} needs a weight")
                nd.weight = np.ascontiguousarray(nd.weight, dtype=np.float64)
                if nd.bias is not None:
                    nd.bias = np.ascontiguousarray(nd.bias, dtype=np.float64).reshape(-1)
                    if nd.bias.shape != (nd.weight.shape[0],):
                        raise SlthError(f"node {where}: bias has {nd.bias.size} entries, "
                                        f"expected {nd.weight.shape[0]}")
                if not np.all(np.isfinite(nd.weight)) or (
                        nd.bias is not None and not np.all(np.isfinite(nd.bias))):
                    raise SlthError(f"node {where}: NaN or inf weights; retrain or fix the target")
            elif nd.weight is not None or nd.bias is not None:
                raise SlthError(f"node {where}: {nd.op} has no weights")
            if i == 0:
                shape = tuple(int(v) for v in nd.shape)
                if len(shape) not in (1, 3) or min(shape) < 1:
                    raise SlthError(f"input shape {list(shape)} must be (d,) or (C, H, W)")
            else:
                shape = infer_shape(nd.op, [nodes[j].shape for j in nd.inputs], nd.weight,
                                    nd.attrs, where)
                if nd.shape is not None and tuple(nd.shape) != shape:
                    raise SlthError(f"node {where}: shape {list(nd.shape)} but {nd.op} gives "
                                    f"{list(shape)}")
            nd.shape = shape
        if len(nodes[-1].shape) != 1:
            raise SlthError(f"the output has shape {list(nodes[-1].shape)}; a Net outputs a "
                            "vector (end with flatten/linear)")

    # ---- read-only views
    @property
    def weights(self) -> list[np.ndarray]:
        return [self.nodes[i].weight for i in self.affine]

    @property
    def biases(self) -> list[np.ndarray | None]:
        return [self.nodes[i].bias for i in self.affine]

    @property
    def depth(self) -> int:
        return len(self.affine)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.nodes[0].shape)

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_dim(self) -> int:
        return int(self.nodes[-1].shape[0])

    @property
    def n_params(self) -> int:
        return sum(n.n_params for n in self.nodes)

    @property
    def has_bias(self) -> bool:
        return any(self.nodes[i].bias is not None for i in self.affine)

    def __repr__(self) -> str:
        ops = {}
        for n in self.nodes[1:]:
            ops[n.op] = ops.get(n.op, 0) + 1
        desc = ", ".join(f"{k}×{v}" for k, v in ops.items())
        return (f"Net({self.name or 'net'}: input {list(self.in_shape)} -> {self.out_dim}, "
                f"{desc}, {self.n_params:,} parameters)")

    # ---- evaluation
    def _input(self, x):
        shape = tuple(x.shape)
        if len(shape) == 2 and shape[1] == self.in_dim:
            return x.reshape(shape[0], *self.in_shape)
        if shape[1:] == self.in_shape:
            return x
        raise SlthError(f"input of shape {list(shape)}; this network takes [N, {self.in_dim}] or "
                        f"[N, {', '.join(map(str, self.in_shape))}]")

    def _params64(self):
        cache = {i: (_as_tensor64(self.nodes[i].weight), _as_tensor64(self.nodes[i].bias))
                 for i in self.affine}
        return cache.__getitem__

    def _auto_batch(self) -> int:
        biggest = max(int(np.prod(n.shape)) for n in self.nodes)
        return int(np.clip((1 << 23) // max(1, 4 * biggest), 1, 4096))

    def forward(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """x: [N, in_dim] or [N, *in_shape] -> [N, out_dim] float64."""
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        x = self._input(x)
        bs = batch_size or self._auto_batch()
        out = np.empty((n, self.out_dim))
        params = self._params64()
        with torch.no_grad():
            for i in range(0, n, bs):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + bs]))
                out[i:i + bs] = run_graph(self.nodes, xb, params).numpy()
        return out

    def torch_forward(self, x):
        """Differentiable float64 forward: x [N, in_dim] or [N, *in_shape] (tensor or array)."""
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.asarray(x, dtype=np.float64))
        x = self._input(x.to(torch.float64))
        return run_graph(self.nodes, x, self._params64())

    def to_module(self) -> NetModule:
        """A plain torch module (float32) computing this network."""
        return NetModule(self)

    # ---- identity and description
    def structure(self) -> dict:
        """The graph without weights, JSON-ready."""
        return {"name": self.name, "nodes": [
            {"op": n.op, "inputs": list(n.inputs), "shape": list(n.shape),
             "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in n.attrs.items()},
             "name": n.name, "folded": n.folded, "bias": n.bias is not None}
            for n in self.nodes]}

    def fingerprint(self) -> str:
        """sha256[:16] over the structure (ops, inputs, shapes, attrs) and the float64 weights."""
        h = hashlib.sha256()
        struct = [[n.op, list(n.inputs), list(n.shape),
                   {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(n.attrs.items())}]
                  for n in self.nodes]
        h.update(json.dumps(struct, sort_keys=True, separators=(",", ":")).encode())
        for i in self.affine:
            nd = self.nodes[i]
            h.update(np.ascontiguousarray(nd.weight, dtype=np.float64).tobytes())
            if nd.bias is None:
                h.update(b"-")
            else:
                h.update(b"b" + np.ascontiguousarray(nd.bias, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> list[dict]:
        """One row per node: index, op, name, inputs, shape, params, folded."""
        return [{"index": i, "op": n.op, "name": n.name, "inputs": list(n.inputs),
                 "shape": list(n.shape), "params": n.n_params, "folded": n.folded}
                for i, n in enumerate(self.nodes)]

    def with_weights(self, weights: list[np.ndarray], biases: list[np.ndarray | None]) -> "Net":
        """A copy with the affine nodes' weights/biases replaced (same structure)."""
        if len(weights) != self.depth or len(biases) != self.depth:
            raise SlthError(f"need {self.depth} weights and biases, got {len(weights)}/{len(biases)}")
        nodes = [copy.copy(n) for n in self.nodes]
        for k, i in enumerate(self.affine):
            nodes[i].weight, nodes[i].bias = weights[k], biases[k]
        return Net(nodes, self.name)

    def save(self, path: str | os.PathLike) -> None:
        """``.safetensors`` (graph as JSON metadata, float64 weights) or ``.pt2`` (torch.export of
        :meth:`to_module`, float32)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {}
            for i in self.affine:
                nd = self.nodes[i]
                tensors[f"node{i}.weight"] = torch.from_numpy(np.array(nd.weight, dtype=np.float64))
                if nd.bias is not None:
                    tensors[f"node{i}.bias"] = torch.from_numpy(np.array(nd.bias, dtype=np.float64))
            meta = {"slth.format": NET_FORMAT, "slth.version": NET_FORMAT_VERSION,
                    "slth.net": json.dumps(self.structure(), separators=(",", ":"))}
            save_file(tensors, str(tmp), metadata=meta)
        elif path.suffix == ".pt2":
            write_pt2(export_module(self.to_module(), self.in_shape), tmp)
        else:
            raise SlthError(f"cannot save a network as {path.name}; use .safetensors or .pt2")
        os.replace(tmp, path)


def export_module(module: nn.Module, in_shape) -> "torch.export.ExportedProgram":
    """``torch.export`` a module (eval mode) with a dynamic batch dimension."""
    import warnings

    module = module.eval()
    example = torch.zeros(2, *in_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            dims = ({0: torch.export.Dim("batch")},)
            return torch.export.export(module, (example,), dynamic_shapes=dims)
        except Exception:  # a model that specializes on the batch size: export it as is
            return torch.export.export(module, (example,))


def write_pt2(ep, path) -> None:
    """``torch.export.save`` to ``path`` (any name; written through a buffer)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.export.save(ep, buf)
    Path(path).write_bytes(buf.getvalue())


def net_from_structure(struct: dict, tensors: dict, origin: str) -> Net:
    """Rebuild a Net from :meth:`Net.structure` and its ``node{i}.weight/bias`` tensors."""
    try:
        nodes = []
        for i, d in enumerate(struct["nodes"]):
            attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("attrs", {}).items()}
            w = tensors.get(f"node{i}.weight")
            b = tensors.get(f"node{i}.bias")
            if d["op"] in AFFINE_OPS and w is None:
                raise SlthError(f"{origin}: node {i} ({d['op']}) has no tensor node{i}.weight; "
                                "the file is incomplete")
            if bool(d.get("bias")) != (b is not None):
                raise SlthError(f"{origin}: node {i} bias does not match its tensors; "
                                "the file is inconsistent")
            nodes.append(Node(d["op"], tuple(d["inputs"]), tuple(d["shape"]),
                              None if w is None else np.asarray(w, dtype=np.float64),
                              None if b is None else np.asarray(b, dtype=np.float64),
                              attrs, d.get("name", ""), d.get("folded")))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SlthError):
            raise
        raise SlthError(f"{origin}: malformed slth network metadata ({type(e).__name__}: {e}); "
                        "write it again with Net.save") from None
    used = {f"node{i}.{k}" for i, n in enumerate(nodes) for k, v in
            (("weight", n.weight), ("bias", n.bias)) if v is not None}
    extra = sorted(set(tensors) - used)
    if extra:
        raise SlthError(f"{origin}: tensors {extra[:3]} belong to no node; the file is inconsistent")
    try:
        return Net(nodes, struct.get("name", ""))
    except SlthError as e:
        raise SlthError(f"{origin}: {e}") from None


def load_net_safetensors(path: str | os.PathLike):
    """A Net from a ``.safetensors`` file written by :meth:`Net.save`, or None when the file has no
    slth graph metadata (a plain state_dict)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("slth.format") != NET_FORMAT:
                return None
            tensors = {k: f.get_tensor(k).to(torch.float64).numpy() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SlthError(f"{path} is not a readable safetensors file ({e})") from None
    if meta.get("slth.version") != NET_FORMAT_VERSION:
        raise SlthError(f"{path} holds an slth network of format version {meta.get('slth.version')}; "
                        f"this slth reads version {NET_FORMAT_VERSION} (upgrade slth)")
    try:
        struct = json.loads(meta["slth.net"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SlthError(f"{path}: malformed slth network metadata ({e}); write it again with "
                        "Net.save") from None
    return net_from_structure(struct, tensors, str(path))


# --------------------------------------------------------------------------------------------
# reading graphs (torch.fx from modules, ATen graphs from torch.export)


class _Ref:
    """A tensor of the Net being built: node index and the version it was read at."""

    __slots__ = ("idx", "ver")

    def __init__(self, idx: int, ver: int):
        self.idx, self.ver = idx, ver


class _Const:
    """A constant tensor (parameter, buffer, folded constant)."""

    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


class _BatchSize:
    def __repr__(self):
        return "N"


BATCH = _BatchSize()


class _Bad:
    """A value that exists in the graph but that slth cannot use (e.g. max-pool indices)."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what


class _Skip(Exception):
    pass


_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')
_INT64_MAX = 9223372036854775807


def _user_line(stack_trace: str | None) -> str:
    """'file.py:12' of the innermost frame outside torch in an fx stack trace."""
    if not stack_trace:
        return ""
    frames = [(f, int(ln)) for f, ln in _FRAME_RE.findall(stack_trace)
              if not os.path.abspath(f).startswith(_TORCH_DIR) and not f.startswith("torch/")]
    if not frames:
        return ""
    f, ln = frames[-1]
    return f"{os.path.basename(f)}:{ln}"


def _flat_values(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat_values(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat_values(o)
    elif isinstance(obj, slice):
        yield from _flat_values((obj.start, obj.stop, obj.step))
    else:
        yield obj


def _unwrap(obj):
    if isinstance(obj, _Const):
        return obj.t
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, slice):
        return slice(_unwrap(obj.start), _unwrap(obj.stop), _unwrap(obj.step))
    return obj


_REQ = object()


def _bind(args, kwargs, spec: str, what: str):
    """Bind positional/keyword arguments to ``spec`` ('input, kernel_size, stride=None, ...')."""
    names, defaults = [], {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            names.append(k.strip())
            defaults[k.strip()] = ast.literal_eval(v.strip())
        else:
            names.append(part)
    out = dict(defaults)
    if len(args) > len(names):
        raise SlthError(f"{what}: too many arguments")
    for k, v in zip(names, args):
        out[k] = v
    for k, v in kwargs.items():
        if k not in names:
            raise _Skip(k)
        out[k] = v
    for k in names:
        if k not in out:
            raise SlthError(f"{what}: missing argument {k!r}")
    return out


# Argument specs of the functions and ATen ops slth reads.
_SPEC = {
    "relu": "input, inplace=False",
    "maxpool": ("input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, "
                "return_indices=False"),
    "avgpool": ("input, kernel_size, stride=None, padding=0, ceil_mode=False, "
                "count_include_pad=True, divisor_override=None"),
    "adaptive": "input, output_size",
    "flatten": "input, start_dim=0, end_dim=-1",
    "pad": "input, pad, mode='constant', value=None",
    "add": "input, other, alpha=1",
    "linear": "input, weight, bias=None",
    "conv": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "batch_norm": ("input, running_mean, running_var, weight=None, bias=None, training=False, "
                   "momentum=0.1, eps=1e-05"),
    "dropout": "input, p=0.5, training=True, inplace=False",
    "mean": "input, dim=None, keepdim=False, dtype=None",
    # ATen
    "a.conv2d": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "a.convolution": ("input, weight, bias, stride, padding, dilation, transposed, "
                      "output_padding, groups"),
    "a.linear": "input, weight, bias=None",
    "a.addmm": "bias, input, mat2, beta=1, alpha=1",
    "a.mm": "input, mat2",
    "a.relu": "input",
    "a.add": "input, other, alpha=1",
    "a.max_pool2d": "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False",
    "a.avg_pool2d": ("input, kernel_size, stride=None, padding=0, ceil_mode=False, "
                     "count_include_pad=True, divisor_override=None"),
    "a.adaptive_avg_pool2d": "input, output_size",
    "a.mean": "input, dim=None, keepdim=False, dtype=None",
    "a.view": "input, size",
    "a.flatten": "input, start_dim=0, end_dim=-1",
    "a.slice": "input, dim=0, start=None, end=None, step=1",
    "a.pad": "input, pad, mode='constant', value=None",
    "a.constant_pad_nd": "input, pad, value=0",
    "a.batch_norm": ("input, weight, bias, running_mean, running_var, training, momentum, eps, "
                     "cudnn_enabled=True"),
    "a.bn_no_training": "input, weight, bias, running_mean, running_var, momentum, eps",
    "a.native_batch_norm": "input, weight, bias, running_mean, running_var, training, momentum, eps",
    "a.dropout": "input, p, train",
    "a.sym_size": "input, dim",
}

# ATen ops that slth evaluates on constants (weights) only, e.g. the transpose before addmm.
_ATEN_CONST_OK = {"t", "permute", "transpose", "view", "reshape", "_unsafe_view", "contiguous",
                  "clone", "detach", "alias", "unsqueeze", "squeeze", "expand", "lift_fresh_copy",
                  "_to_copy", "mul", "div", "add", "sub", "neg", "numpy_T"}
_ATEN_ALIAS = {"clone", "alias", "detach", "contiguous", "_to_copy", "lift_fresh_copy", "to",
               "type_as"}
_ATEN_IGNORE_PREFIX = ("_assert", "sym_constrain_range", "_print")
_ATEN_BATCH_NORM = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                    "_native_batch_norm_legit", "_native_batch_norm_legit_functional"}


def _aten_name(target) -> str | None:
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return target._opname
    return None


class _Reader:
    """Maps an fx graph (symbolic trace of a module, or a torch.export ATen graph) to Net nodes."""

    def __init__(self, origin: str, in_shape, root_name: str, modules: dict | None,
                 trusted: bool, example_batch=None):
        self.origin = origin
        self.root_name = root_name
        self.modules = modules or {}
        self.trusted = trusted
        self.example_batch = example_batch
        shape = None if in_shape is None else tuple(int(v) for v in in_shape)
        self.nodes: list[Node] = [Node("input", (), shape, name="input")]
        self.version = [0]
        self.uses = [0]
        self.env: dict = {}
        self.cur = None  # the fx node being read
        self.mutates = False

    # ---- messages
    def _path(self, n) -> str:
        if n.op == "call_module":
            return str(n.target)
        stack = n.meta.get("nn_module_stack") or {}
        for v in reversed(list(stack.values())):
            p = v[0] if isinstance(v, tuple) else str(v)
            if p:
                return str(p)
        return ""

    def where(self, n=None) -> str:
        n = n or self.cur
        path = self._path(n)
        return path or f"{self.root_name}.forward"

    def unsupported(self, what: str, detail: str = "", hint: str = "") -> SlthError:
        n = self.cur
        src = _user_line(n.meta.get("stack_trace")) if n is not None else ""
        if n is not None and n.op == "call_module" and n.target in self.modules:
            t = type(self.modules[n.target]).__name__
            if not detail.startswith(t):
                detail = f"{t}, {detail}" if detail else t
        extra = ", ".join(s for s in (detail, src) if s)
        msg = f"unsupported operation '{what}' at {self.where()}"
        if extra:
            msg += f" ({extra})"
        return SlthError(f"{msg}; {hint + '; ' if hint else ''}{SUPPORTED}")

    def error(self, text: str) -> SlthError:
        return SlthError(f"{text} at {self.where()}; {SUPPORTED}")

    def node_name(self, n=None) -> str:
        n = n or self.cur
        if n.op == "call_module":
            return str(n.target)
        path = self._path(n)
        stack = n.meta.get("nn_module_stack") or {}
        if path and stack:
            ty = list(stack.values())[-1]
            ty = ty[1] if isinstance(ty, tuple) and len(ty) > 1 else ""
            tyname = ty if isinstance(ty, str) else getattr(ty, "__module__", "")
            if tyname.startswith("torch.nn."):
                return path
        return f"{path}.{n.name}" if path else n.name

    # ---- building
    def ref(self, i: int) -> _Ref:
        return _Ref(i, self.version[i])

    def idx(self, v) -> int:
        if not isinstance(v, _Ref):
            raise self.error(f"expected a tensor computed from the input, got {type(v).__name__}")
        if v.ver != self.version[v.idx]:
            raise self.unsupported(
                "use of a tensor after it was changed in place or folded into a batch norm",
                f"node {self.nodes[v.idx].name or v.idx}",
                "write the model without in-place updates of tensors that are used again")
        return v.idx

    def shape(self, v) -> tuple[int, ...]:
        s = self.nodes[self.idx(v)].shape
        if s is None:
            raise SlthError(f"{self.origin}: the model's input is used at {self.where()} in a way "
                            "that needs its shape; pass input_shape=(C, H, W) (or (d,))")
        return s

    def emit(self, op, inputs, weight=None, bias=None, attrs=None, name=None) -> _Ref:
        name = name or self.node_name()
        idxs = [self.idx(v) for v in inputs]
        if 0 in idxs and self.nodes[0].shape is None:
            if op == "linear" and weight is not None and weight.ndim == 2:
                self.nodes[0].shape = (int(weight.shape[1]),)
            else:
                raise SlthError(f"{self.origin}: layer {name!r} ({op}) is not supported without an "
                                "input shape; pass input_shape=(C, H, W), e.g. "
                                "load_target(model, input_shape=(1, 28, 28))")
        attrs = normalize_attrs(op, attrs, name)
        shape = infer_shape(op, [self.nodes[j].shape for j in idxs], weight, attrs, name)
        self.nodes.append(Node(op, tuple(idxs), shape, weight, bias, attrs, name))
        self.version.append(0)
        self.uses.append(0)
        for j in idxs:
            self.uses[j] += 1
        return self.ref(len(self.nodes) - 1)

    def arr(self, c, what: str) -> np.ndarray | None:
        if c is None:
            return None
        if isinstance(c, _Const):
            c = c.t
        if isinstance(c, torch.Tensor):
            return c.detach().to("cpu", torch.float64).numpy().copy()
        raise self.unsupported(f"{what} computed from the input",
                               hint="weights must be parameters or constants")

    # ---- semantic operations
    def relu(self, x):
        return self.emit("relu", [x])

    def add(self, a, b, alpha=1):
        if isinstance(a, _Ref) and isinstance(b, _Ref):
            if alpha != 1:
                raise self.unsupported("add with alpha != 1")
            sa, sb = self.shape(a), self.shape(b)
            if sa != sb:
                raise self.unsupported("add of tensors of different shapes",
                                       f"{list(sa)} + {list(sb)}")
            return self.emit("add", [a, b])
        if isinstance(b, _Ref) and isinstance(a, _Const):
            a, b = b, a
        if isinstance(a, _Ref) and isinstance(b, _Const) and alpha == 1:
            return self.add_bias(a, b)
        if isinstance(a, _Ref) or isinstance(b, _Ref):
            raise self.unsupported("add of a number or constant to a tensor",
                                   hint="fold it into a layer's bias")
        if a is BATCH or b is BATCH:
            raise self.unsupported("arithmetic on the batch size")
        return a + alpha * b if alpha != 1 else a + b

    def add_bias(self, x, c):
        i = self.idx(x)
        nd = self.nodes[i]
        t = c.t.detach().to(torch.float64)
        n_out = nd.shape[0]
        ok_shapes = [(n_out,), (1, n_out)] if nd.op == "linear" else [(n_out, 1, 1), (1, n_out, 1, 1)]
        if nd.op not in AFFINE_OPS or self.uses[i] or tuple(t.shape) not in ok_shapes:
            raise self.unsupported("add of a constant tensor",
                                   hint="only a bias right after a linear/conv can be folded")
        b = t.reshape(-1).numpy().copy()
        nd.bias = b if nd.bias is None else nd.bias + b
        self.version[i] += 1
        return self.ref(i)

    def linear(self, x, w, b):
        if not isinstance(w, _Const):
            raise self.unsupported("linear with a weight computed from the input")
        wa = self.arr(w, "weight")
        if wa.ndim != 2:
            raise self.error(f"linear weight of shape {list(wa.shape)}")
        if isinstance(x, _Ref) and self.nodes[self.idx(x)].shape is not None and len(self.shape(x)) != 1:
            raise self.unsupported("linear on a (C, H, W) map", f"shape {list(self.shape(x))}",
                                   "flatten before the linear layer")
        return self.emit("linear", [x], wa, self.arr(b, "bias"))

    def matmul(self, x, w):
        if isinstance(x, _Ref) and isinstance(w, _Const) and w.t.ndim == 2:
            return self.linear(x, _Const(w.t.t()), None)
        raise self.unsupported("matmul", hint="only x @ W with a constant 2-D W is supported")

    def conv(self, x, w, b, stride, padding, dilation, groups, padding_mode="zeros",
             transposed=False):
        if transposed:
            raise self.unsupported("transposed convolution")
        if groups != 1:
            raise self.unsupported(f"grouped convolution (groups={groups})",
                                   hint="only groups=1 convolutions are supported")
        if padding_mode != "zeros":
            raise self.unsupported(f"convolution with padding_mode={padding_mode!r}")
        if not isinstance(w, _Const):
            raise self.unsupported("convolution with a weight computed from the input")
        wa = self.arr(w, "weight")
        if wa.ndim != 4:
            raise self.unsupported(f"{wa.ndim - 2}-D convolution", hint="only Conv2d is supported")
        dil = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                tot = [d * (k - 1) for d, k in zip(dil, wa.shape[2:])]
                if any(t % 2 for t in tot):
                    raise self.unsupported("padding='same' with an even kernel")
                padding = tuple(t // 2 for t in tot)
            else:
                raise self.unsupported(f"convolution padding {padding!r}")
        return self.emit("conv", [x], wa, self.arr(b, "bias"),
                         {"stride": stride, "padding": padding, "dilation": dil})

    def maxpool(self, x, kernel, stride, padding, dilation, ceil_mode, return_indices=False):
        if ceil_mode:
            raise self.unsupported("max pooling with ceil_mode=True",
                                   hint="use ceil_mode=False")
        if return_indices:
            raise self.unsupported("max pooling with return_indices=True")
        stride = None if stride in (None, [], ()) else stride
        return self.emit("maxpool", [x], attrs={"kernel": kernel, "stride": stride,
                                                "padding": padding, "dilation": dilation})

    def avgpool(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        if ceil_mode:
            raise self.unsupported("average pooling with ceil_mode=True",
                                   hint="use ceil_mode=False")
        if divisor_override is not None:
            raise self.unsupported("average pooling with divisor_override")
        stride = None if stride in (None, [], ()) else stride
        return self.emit("avgpool", [x], attrs={"kernel": kernel, "stride": stride,
                                                "padding": padding,
                                                "count_include_pad": bool(count_include_pad)})

    def adaptive(self, x, output):
        s = self.shape(x)
        if s is None or len(s) != 3:
            raise self.unsupported("adaptive pooling of a non-image tensor")
        if isinstance(output, (int, np.integer)) or output is None:
            output = (output, output)
        output = tuple(s[1 + k] if o is None else int(o) for k, o in enumerate(output))
        return self.emit("adaptive_avgpool", [x], attrs={"output": output})

    def mean(self, x, dim, keepdim):
        s = self.shape(x)
        if s is not None and len(s) == 3 and dim is not None:
            dims = [dim] if isinstance(dim, int) else list(dim)
            dims = sorted(d % 4 for d in dims)
            if dims == [2, 3]:
                r = self.emit("adaptive_avgpool", [x], attrs={"output": (1, 1)})
                return r if keepdim else self.emit("flatten", [r], name=self.node_name() + ".flatten")
        raise self.unsupported("mean", f"dim={dim}",
                               "only the global average over (H, W) is supported")

    def flatten(self, x, start, end):
        i = self.idx(x)
        s = self.nodes[i].shape
        if s is None:  # input of unknown shape: flattening a vector input changes nothing
            if start == 1:
                return x
            raise self.unsupported(f"flatten(start_dim={start})")
        nd = len(s) + 1
        start, end = start % nd, end % nd
        if start == 0:
            raise self.unsupported("flatten of the batch dimension (start_dim=0)",
                                   hint="use torch.flatten(x, 1)")
        if start == 1 and end == nd - 1:
            return x if len(s) == 1 else self.emit("flatten", [x])
        if start == end:
            return x
        raise self.unsupported(f"flatten(start_dim={start}, end_dim={end})",
                               hint="only flattening all of (C, H, W) is supported")

    def view(self, x, size):
        i = self.idx(x)
        s = self.nodes[i].shape
        size = list(size)
        if len(size) == 1 and isinstance(size[0], (tuple, list)):
            size = list(size[0])
        first = size[0] if size else None
        is_batch = first is BATCH or first == -1 or (
            self.example_batch is not None and first == self.example_batch)
        if any(v is BATCH for v in size[1:]) or not is_batch:
            raise self.unsupported(f"view/reshape to {size}",
                                   hint="only x.view(x.size(0), -1) style flattening is supported")
        rest = [int(v) for v in size[1:]]
        if s is None:  # input of unknown shape
            if rest in ([-1],):
                return x
            if i == 0 and len(rest) in (1, 3) and -1 not in rest:
                self.nodes[0].shape = tuple(rest)
                return x
            raise self.unsupported(f"view/reshape to {size}")
        total = int(np.prod(s))
        if -1 in rest:
            if rest.count(-1) > 1:
                raise self.unsupported(f"view/reshape to {size}")
            known = int(np.prod([v for v in rest if v != -1]))
            if known == 0 or total % known:
                raise self.error(f"cannot view {list(s)} as {size}")
            rest = [total // known if v == -1 else v for v in rest]
        if tuple(rest) == tuple(s):
            return x
        if rest == [total]:
            return self.emit("flatten", [x])
        if i == 0 and len(s) == 1 and len(rest) == 3 and int(np.prod(rest)) == total \
                and self.uses[0] == 0:
            # the model un-flattens its input: the network's input is that image
            self.nodes[0].shape = tuple(rest)
            self.version[0] += 1
            return self.ref(0)
        raise self.unsupported(f"view/reshape of {list(s)} to {rest}",
                               hint="only flattening (C, H, W) into a vector is supported")

    def getitem_tensor(self, x, index):
        s = self.shape(x)
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            k = index.index(Ellipsis)
            fill = (len(s) + 1) - (len(index) - 1)
            index = index[:k] + (slice(None),) * fill + index[k + 1:]
        if len(index) > len(s) + 1 or not all(isinstance(i, slice) for i in index):
            raise self.unsupported("tensor indexing", f"x[{index}]",
                                   "only strided slices x[:, :, ::sh, ::sw] are supported")
        index = index + (slice(None),) * (len(s) + 1 - len(index))
        steps = []
        for d, sl in enumerate(index):
            size = s[d - 1] if d else None
            start = sl.start or 0
            step = 1 if sl.step is None else sl.step
            full_stop = sl.stop is None or (size is not None and sl.stop >= size)
            if start != 0 or not full_stop or step < 1:
                raise self.unsupported("slicing with a start offset or an end",
                                       f"x[{index}]",
                                       "only x[:, :, ::sh, ::sw] is supported")
            if d in (0, 1) and step != 1:
                raise self.unsupported("strided slicing of the batch or channels")
            steps.append(step)
        if len(s) != 3 or steps[2:] == [1, 1]:
            if any(v != 1 for v in steps):
                raise self.unsupported("strided slicing of a vector")
            return x
        return self.emit("subsample", [x], attrs={"stride": (steps[2], steps[3])})

    def slice_dim(self, x, dim, start, end, step):
        s = self.shape(x)
        nd = len(s) + 1
        dim = dim % nd
        start = start or 0
        size = s[dim - 1] if dim else None
        full_stop = end is None or end >= _INT64_MAX or (size is not None and end >= size)
        if start != 0 or not full_stop or step < 1:
            raise self.unsupported("slicing with a start offset or an end",
                                   f"dim {dim}, {start}:{end}:{step}",
                                   "only x[:, :, ::sh, ::sw] is supported")
        if step == 1:
            return x
        if dim < 2 or nd != 4:
            raise self.unsupported("strided slicing of the batch, channels or a vector")
        stride = (step, 1) if dim == 2 else (1, step)
        return self.emit("subsample", [x], attrs={"stride": stride})

    def pad(self, x, pad, mode="constant", value=None):
        s = self.shape(x)
        pad = [int(p) for p in pad]
        if mode != "constant" or (value not in (None, 0, 0.0)):
            raise self.unsupported(f"padding (mode={mode!r}, value={value})",
                                   hint="only zero padding of channels is supported")
        if not any(pad):
            return x
        if len(s) == 3 and len(pad) == 6 and not any(pad[:4]) and min(pad) >= 0:
            return self.emit("pad_channels", [x], attrs={"before": pad[4], "after": pad[5]})
        raise self.unsupported(f"padding {pad}",
                               hint="only F.pad(x, (0, 0, 0, 0, before, after)) (zero channels) "
                                    "is supported; put spatial padding into the conv")

    def batch_norm(self, x, mean, var, gamma, beta, eps, training, name):
        if training:
            raise self.unsupported("batch norm in training mode",
                                   hint="call model.eval() before loading the target")
        if mean is None or var is None:
            raise self.unsupported("batch norm without running statistics "
                                   "(track_running_stats=False)")
        i = self.idx(x)
        nd = self.nodes[i]
        if nd.op not in AFFINE_OPS:
            raise self.unsupported(f"batch norm after {nd.op if i else 'the input'}",
                                   hint="a batch norm must come right after a conv or linear "
                                        "layer, where it is folded into it")
        if self.uses[i]:
            raise self.unsupported("batch norm of a conv/linear output that is also used "
                                   "elsewhere", hint="slth folds a batch norm into the layer "
                                                     "before it")
        if nd.folded:
            raise self.unsupported("two batch norms in a row")
        mu = self.arr(mean, "running mean")
        v = self.arr(var, "running var")
        n_out = nd.weight.shape[0]
        g = np.ones(n_out) if gamma is None else self.arr(gamma, "weight")
        bt = np.zeros(n_out) if beta is None else self.arr(beta, "bias")
        if not (mu.shape == v.shape == g.shape == bt.shape == (n_out,)):
            raise self.error(f"batch norm over {mu.size} features after a layer with {n_out} "
                             "outputs")
        scale = g / np.sqrt(v + float(eps))
        w = nd.weight * scale.reshape((-1,) + (1,) * (nd.weight.ndim - 1))
        b = ((np.zeros(n_out) if nd.bias is None else nd.bias) - mu) * scale + bt
        nd.weight, nd.bias, nd.folded = w, b, name
        self.version[i] += 1
        return self.ref(i)

    def size(self, x, dim=None):
        full = (BATCH, *self.shape(x))
        if dim is None:
            return full
        return full[dim]

    # ---- dispatch
    def call(self, n, args, kwargs):
        self.mutates = False
        if n.op == "call_function" and n.target is operator.getitem and isinstance(
                args[0], (tuple, list)):
            return args[0][args[1]]
        vals = list(_flat_values((args, kwargs)))
        has_ref = any(isinstance(v, _Ref) for v in vals)
        bad = [v for v in vals if isinstance(v, _Bad)]
        if bad:
            raise self.unsupported(f"use of {bad[0].what}")
        if n.op == "call_module":
            return self.call_module(n, self.modules[n.target], args, kwargs)
        if n.op == "call_method":
            return self.call_method(n, n.target, args, kwargs, has_ref)
        return self.call_function(n, n.target, args, kwargs, has_ref)

    def const_fold(self, fn, args, kwargs):
        with torch.no_grad():
            out = fn(*_unwrap(args), **_unwrap(kwargs))
        return _Const(out) if isinstance(out, torch.Tensor) else out

    def call_module(self, n, m, args, kwargs):
        t = type(m).__name__
        x = args[0] if args else None
        if kwargs or len(args) != 1 or not isinstance(x, _Ref):
            raise self.unsupported(t.lower(), f"{t} called on {len(args)} arguments")
        if isinstance(m, nn.Linear):
            return self.linear(x, _Const(m.weight), None if m.bias is None else _Const(m.bias))
        if isinstance(m, nn.Conv2d):
            return self.conv(x, _Const(m.weight), None if m.bias is None else _Const(m.bias),
                             m.stride, m.padding, m.dilation, m.groups, m.padding_mode)
        if isinstance(m, nn.ReLU):
            self.mutates = bool(m.inplace)
            return self.relu(x)
        if isinstance(m, nn.MaxPool2d):
            return self.maxpool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                                m.return_indices)
        if isinstance(m, nn.AvgPool2d):
            return self.avgpool(x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                m.count_include_pad, m.divisor_override)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive(x, m.output_size)
        if isinstance(m, nn.Flatten):
            return self.flatten(x, m.start_dim, m.end_dim)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training and m.track_running_stats:
                raise self.unsupported("batch norm in training mode", t,
                                       "call model.eval() before loading the target")
            if m.running_mean is None:
                raise self.unsupported("batch norm without running statistics", t)
            return self.batch_norm(x, _Const(m.running_mean), _Const(m.running_var),
                                   None if m.weight is None else _Const(m.weight),
                                   None if m.bias is None else _Const(m.bias), m.eps, False,
                                   str(n.target))
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                          nn.FeatureAlphaDropout)):
            if m.training and m.p > 0:
                raise self.unsupported("dropout in training mode", t,
                                       "call model.eval() before loading the target")
            return x
        raise self.unsupported(t.lower(), t)

    def call_method(self, n, name, args, kwargs, has_ref):
        self_ = args[0] if args else None
        if not isinstance(self_, _Ref):
            if not has_ref and self.trusted and isinstance(self_, _Const):
                return self.const_fold(lambda s, *a, **k: getattr(s, name)(*a, **k), args, kwargs)
            if name == "size" or not has_ref:
                raise self.unsupported(f"method {name}")
        rest = args[1:]
        if name in ("view", "reshape"):
            if kwargs:
                raise self.unsupported(f"{name} with keywords")
            return self.view(self_, rest)
        if name == "flatten":
            b = _bind(args, kwargs, "input, start_dim=0, end_dim=-1", name)
            return self.flatten(self_, b["start_dim"], b["end_dim"])
        if name in ("relu", "relu_"):
            self.mutates = name == "relu_"
            return self.relu(self_)
        if name in ("add", "add_", "__add__", "__iadd__", "__radd__"):
            b = _bind(args, kwargs, _SPEC["add"], name)
            self.mutates = name in ("add_",)
            return self.add(b["input"], b["other"], b["alpha"])
        if name == "size":
            b = _bind(args, kwargs, "input, dim=None", name)
            return self.size(self_, b["dim"])
        if name == "dim":
            return len(self.shape(self_)) + 1
        if name == "mean":
            b = _bind(args, kwargs, _SPEC["mean"], name)
            return self.mean(self_, b["dim"], b["keepdim"])
        if name in ("contiguous", "clone", "detach", "float", "double", "cpu", "to"):
            return self_
        raise self.unsupported(name, f"Tensor.{name}")

    def call_function(self, n, fn, args, kwargs, has_ref):
        aten = _aten_name(fn)
        if aten is not None:
            return self.call_aten(n, fn, aten, args, kwargs, has_ref)
        x = args[0] if args else None
        fname = getattr(fn, "__name__", str(fn))
        if fn is builtins.getattr:
            if isinstance(x, _Ref) and args[1] == "shape":
                return self.size(x)
            if not isinstance(x, _Ref) and self.trusted:
                return self.const_fold(fn, args, kwargs)
            raise self.unsupported(f"attribute {args[1]!r}")
        if fn is operator.getitem:
            if isinstance(x, _Ref):
                return self.getitem_tensor(x, args[1])
            if isinstance(x, (tuple, list)):
                return x[args[1]]
            if isinstance(x, _Const) and not has_ref:
                return self.const_fold(fn, args, kwargs)
            raise self.unsupported("indexing")
        if fn in (operator.add, operator.iadd, torch.add):
            b = _bind(args, kwargs, _SPEC["add"], fname)
            if isinstance(b["input"], _Const) and isinstance(b["other"], _Const):
                return self.const_fold(fn, args, kwargs)
            return self.add(b["input"], b["other"], b["alpha"])
        if not has_ref:
            if all(not isinstance(v, _BatchSize) for v in _flat_values((args, kwargs))) \
                    and (self.trusted or fn in (operator.mul, operator.floordiv, operator.sub)):
                return self.const_fold(fn, args, kwargs)
            raise self.unsupported(fname, "computation on the batch size")
        try:
            if fn in (F.relu, torch.relu, torch.relu_, F.relu_):
                b = _bind(args, kwargs, _SPEC["relu"], fname) if fn is F.relu else {"inplace": False}
                self.mutates = bool(b["inplace"]) or fn in (torch.relu_, F.relu_)
                return self.relu(x)
            if fn in (operator.matmul, torch.matmul, torch.mm):
                return self.matmul(args[0], args[1])
            if fn is torch.flatten:
                b = _bind(args, kwargs, _SPEC["flatten"], fname)
                return self.flatten(x, b["start_dim"], b["end_dim"])
            if fn is torch.reshape:
                return self.view(x, args[1:])
            if fn in (F.max_pool2d, torch.max_pool2d):
                b = _bind(args, kwargs, _SPEC["maxpool"], fname)
                return self.maxpool(x, b["kernel_size"], b["stride"], b["padding"], b["dilation"],
                                    b["ceil_mode"], b["return_indices"])
            if fn in (F.avg_pool2d,):
                b = _bind(args, kwargs, _SPEC["avgpool"], fname)
                return self.avgpool(x, b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"],
                                    b["count_include_pad"], b["divisor_override"])
            if fn in (F.adaptive_avg_pool2d,):
                b = _bind(args, kwargs, _SPEC["adaptive"], fname)
                return self.adaptive(x, b["output_size"])
            if fn is F.pad:
                b = _bind(args, kwargs, _SPEC["pad"], fname)
                return self.pad(x, b["pad"], b["mode"], b["value"])
            if fn is F.linear:
                b = _bind(args, kwargs, _SPEC["linear"], fname)
                return self.linear(x, b["weight"], b["bias"])
            if fn in (F.conv2d,):
                b = _bind(args, kwargs, _SPEC["conv"], fname)
                return self.conv(x, b["weight"], b["bias"], b["stride"], b["padding"],
                                 b["dilation"], b["groups"])
            if fn is F.batch_norm:
                b = _bind(args, kwargs, _SPEC["batch_norm"], fname)
                return self.batch_norm(x, b["running_mean"], b["running_var"], b["weight"],
                                       b["bias"], b["eps"], b["training"], self.node_name())
            if fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                      F.feature_alpha_dropout):
                b = _bind(args, kwargs, _SPEC["dropout"], fname)
                if b["training"] and b["p"] > 0:
                    raise self.unsupported("dropout in training mode", f"F.{fname}",
                                           "call model.eval() (and pass training=self.training)")
                return x
            if fn is torch.mean:
                b = _bind(args, kwargs, _SPEC["mean"], fname)
                return self.mean(x, b["dim"], b["keepdim"])
        except _Skip as e:
            raise self.unsupported(f"{fname} with argument {e.args[0]!r}") from None
        mod = getattr(fn, "__module__", "") or ""
        qual = f"{'torch' if mod.startswith('torch') else mod}.{fname}" if mod else fname
        raise self.unsupported(fname, qual)

    def call_aten(self, n, fn, name, args, kwargs, has_ref):
        over = fn._overloadname
        if name.startswith(_ATEN_IGNORE_PREFIX):
            return None
        if not has_ref:
            if name in _ATEN_CONST_OK or self.trusted:
                return self.const_fold(fn, args, kwargs)
            else:
                raise self.unsupported(f"aten.{name}", "on constants")

        def bind(key):
            return _bind(args, kwargs, _SPEC[key], f"aten.{name}")

        x = args[0] if args else None
        try:
            if name in ("conv2d", "convolution", "linear", "addmm", "mm", "matmul"):
                return self.aten_affine(name, x, bind)
            if name in ("relu", "relu_"):
                self.mutates = name == "relu_"
                return self.relu(x)
            if name in ("add", "add_") and over == "Tensor":
                b = bind("a.add")
                self.mutates = name == "add_"
                return self.add(b["input"], b["other"], b["alpha"])
            if name in ("max_pool2d", "max_pool2d_with_indices"):
                b = bind("a.max_pool2d")
                r = self.maxpool(x, b["kernel_size"], b["stride"], b["padding"], b["dilation"],
                                 b["ceil_mode"])
                return r if name == "max_pool2d" else (r, _Bad("max-pool indices"))
            if name == "avg_pool2d":
                b = bind("a.avg_pool2d")
                return self.avgpool(x, b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"],
                                    b["count_include_pad"], b["divisor_override"])
            if name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
                b = bind("a.adaptive_avg_pool2d")
                return self.adaptive(x, b["output_size"])
            if name == "mean" and over == "dim":
                b = bind("a.mean")
                return self.mean(x, b["dim"], b["keepdim"])
            if name in ("view", "reshape", "_unsafe_view"):
                b = bind("a.view")
                return self.view(x, b["size"])
            if name == "flatten":
                b = bind("a.flatten")
                return self.flatten(x, b["start_dim"], b["end_dim"])
            if name == "slice" and over == "Tensor":
                b = bind("a.slice")
                return self.slice_dim(x, b["dim"], b["start"], b["end"], b["step"])
            if name == "pad":
                b = bind("a.pad")
                return self.pad(x, b["pad"], b["mode"], b["value"])
            if name == "constant_pad_nd":
                b = bind("a.constant_pad_nd")
                return self.pad(x, b["pad"], "constant", b["value"])
            if name in _ATEN_BATCH_NORM:
                return self.aten_batch_norm(name, x, bind)
            if name in ("dropout", "native_dropout", "feature_dropout", "alpha_dropout",
                        "feature_alpha_dropout"):
                b = bind("a.dropout")
                if b["train"] and b["p"] > 0:
                    raise self.unsupported("dropout in training mode", f"aten.{name}",
                                           "export the model after model.eval()")
                return (x, _Bad("dropout mask")) if name == "native_dropout" else x
            if name == "sym_size":
                b = bind("a.sym_size")
                return self.size(b["input"], b["dim"])
            if name in _ATEN_ALIAS:
                return x
        except _Skip as e:
            raise self.unsupported(f"aten.{name} with argument {e.args[0]!r}") from None
        raise self.unsupported(name, f"aten.{name}.{over}")

    def aten_affine(self, name, x, bind):
        """aten's convolutions, linear layers and matrix products."""
        if name == "conv2d":
            b = bind("a.conv2d")
            return self.conv(x, b["weight"], b["bias"], b["stride"], b["padding"],
                             b["dilation"], b["groups"])
        if name == "convolution":
            b = bind("a.convolution")
            if len(b["stride"]) != 2:
                raise self.unsupported(f"{len(b['stride'])}-D convolution")
            return self.conv(x, b["weight"], b["bias"], b["stride"], b["padding"],
                             b["dilation"], b["groups"], transposed=b["transposed"])
        if name == "linear":
            b = bind("a.linear")
            return self.linear(x, b["weight"], b["bias"])
        if name == "addmm":
            b = bind("a.addmm")
            if b["beta"] != 1 or b["alpha"] != 1 or not isinstance(b["mat2"], _Const):
                raise self.unsupported("aten.addmm", "with scaling or a non-constant matrix")
            return self.linear(b["input"], _Const(b["mat2"].t.t()), b["bias"])
        b = bind("a.mm")
        return self.matmul(b["input"], b["mat2"])

    def aten_batch_norm(self, name, x, bind):
        """aten's batch-norm variants: folded in eval mode (the statistics outputs unusable),
        refused in training mode."""
        if name == "batch_norm":
            b = bind("a.batch_norm")
            return self.batch_norm(x, b["running_mean"], b["running_var"], b["weight"],
                                   b["bias"], b["eps"], b["training"], self.node_name())
        if name == "_native_batch_norm_legit_no_training":
            b = {**bind("a.bn_no_training"), "training": False}
        elif name == "native_batch_norm":
            b = bind("a.native_batch_norm")
        else:
            b = {"training": True}      # the _legit variants are training-mode ops
        if b["training"]:
            raise self.unsupported("batch norm in training mode", f"aten.{name}",
                                   "export the model after model.eval()")
        r = self.batch_norm(x, b["running_mean"], b["running_var"], b["weight"], b["bias"],
                            b["eps"], False, self.node_name())
        return (r, _Bad("batch-norm statistics"), _Bad("batch-norm statistics"))

    # ---- the whole graph
    def read(self, graph, placeholder) -> Net:
        out = None
        for n in graph.nodes:
            self.cur = n
            if n.op == "placeholder":
                self.env[n] = placeholder(n)
                continue
            if n.op == "get_attr":
                self.env[n] = self.get_attr(n.target)
                continue
            args = torch.fx.node.map_arg(n.args, self.env.__getitem__)
            kwargs = torch.fx.node.map_arg(n.kwargs, self.env.__getitem__)
            if n.op == "output":
                out = args[0]
                break
            res = self.call(n, args, kwargs)
            if self.mutates and n.args and isinstance(n.args[0], torch.fx.Node):
                # an in-place op: later reads of the mutated variable see the new value, and
                # other names for the old tensor (aliases) become unusable
                old = self.env[n.args[0]]
                if isinstance(old, _Ref) and isinstance(res, _Ref):
                    if old.idx != res.idx:
                        self.version[old.idx] += 1
                    self.env[n.args[0]] = res
            self.env[n] = res
        self.cur = None
        return self.finish(out)

    def get_attr(self, target: str):
        raise SlthError(f"{self.origin}: unexpected attribute {target}")

    def finish(self, out) -> Net:
        if isinstance(out, (tuple, list)):
            if len(out) != 1:
                raise SlthError(f"{self.origin}: the model returns {len(out)} values; a target "
                                "returns one tensor [N, d]")
            out = out[0]
        if not isinstance(out, _Ref):
            raise SlthError(f"{self.origin}: the model's output does not depend on its input")
        o = self.idx(out)
        if o == 0:
            raise SlthError(f"{self.origin}: the model has no layers (it returns its input)")
        if self.nodes[0].shape is None:
            raise SlthError(f"{self.origin}: cannot tell the input shape; pass input_shape")
        if len(self.nodes[o].shape) != 1:
            raise SlthError(f"{self.origin}: the model's output has shape [N, "
                            f"{', '.join(map(str, self.nodes[o].shape))}]; a target outputs "
                            "[N, d] (flatten it)")
        return _compact(self.nodes[:o + 1], o, self.origin)


def _compact(nodes: list[Node], out: int, origin: str, name: str = "") -> Net:
    """Drop nodes the output does not need, merge chained subsamples, renumber."""
    nodes = list(nodes)
    while True:
        need = {out}
        for i in range(out, -1, -1):
            if i in need:
                need.update(nodes[i].inputs)
        if 0 not in need:
            raise SlthError(f"{origin}: the model's output does not depend on its input")
        users: dict[int, int] = {}
        for i in need:
            for j in nodes[i].inputs:
                users[j] = users.get(j, 0) + 1
        merged = False
        for i in sorted(need):
            nd = nodes[i]
            if nd.op == "subsample":
                j = nd.inputs[0]
                inner = nodes[j]
                if inner.op == "subsample" and users.get(j) == 1:
                    st = tuple(a * b for a, b in zip(inner.attrs["stride"], nd.attrs["stride"]))
                    nodes[i] = Node("subsample", inner.inputs, nd.shape, attrs={"stride": st},
                                    name=nd.name)
                    merged = True
                    break
        if not merged:
            break
    keep = sorted(need)
    new = {old: k for k, old in enumerate(keep)}
    out_nodes = []
    for old in keep:
        nd = nodes[old]
        out_nodes.append(Node(nd.op, tuple(new[j] for j in nd.inputs), nd.shape, nd.weight,
                              nd.bias, dict(nd.attrs), nd.name, nd.folded))
    try:
        return Net(out_nodes, name)
    except SlthError as e:
        raise SlthError(f"{origin}: {e}") from None


# --------------------------------------------------------------------------------------------
# from an nn.Module (torch.fx)


class _Tracer(torch.fx.Tracer):
    def __init__(self):
        super().__init__()
        self.record_stack_traces = True


def _trace_error(e: BaseException, root: nn.Module) -> SlthError:
    names = {id(m): (name or "the model") for name, m in root.named_modules()}
    tb = e.__traceback__
    user = None
    while tb is not None:
        fn = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not fn.startswith(_TORCH_DIR) and fn != _THIS_FILE:
            user = tb
        tb = tb.tb_next
    where, src = type(root).__name__, ""
    if user is not None:
        fr = user.tb_frame
        code = fr.f_code
        self_ = fr.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(self_, nn.Module) and id(self_) in names:
            where = f"{names[id(self_)]} ({type(self_).__name__}.{fr.f_code.co_name})"
        line = linecache.getline(fr.f_code.co_filename, user.tb_lineno).strip()
        src = f"{os.path.basename(fr.f_code.co_filename)}:{user.tb_lineno}"
        if line:
            src += f": {line}"
    msg = " ".join(str(e).split())
    if "control flow" in msg or "iteration" in msg.lower():
        what = "data-dependent control flow"
    else:
        what = f"{type(e).__name__}: {msg[:120]}"
    return SlthError(f"unsupported operation '{what}' at {where}{' (' + src + ')' if src else ''}; "
                     f"slth reads models with torch.fx, which cannot follow Python decisions on "
                     f"tensor values; {SUPPORTED}")


def _verify(net: Net, module: nn.Module, origin: str) -> None:
    """Check the graph against the module itself on random inputs (float64 copy when possible)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *net.in_shape, generator=g, dtype=torch.float64)
    try:
        ref_mod = copy.deepcopy(module).to("cpu", torch.float64)
        with torch.no_grad():
            ref = ref_mod(x.clone())
        tol = 1e-7
    except Exception:
        try:
            with torch.no_grad():
                ref = module(x.clone().float()).double()
        except Exception as e:
            raise SlthError(f"{origin}: the model fails on inputs of shape "
                            f"[N, {', '.join(map(str, net.in_shape))}] ({type(e).__name__}); "
                            "check input_shape") from None
        tol = 1e-3
    if not isinstance(ref, torch.Tensor) or ref.reshape(ref.shape[0], -1).shape[1] != net.out_dim:
        raise SlthError(f"{origin}: the model's output does not match the traced graph; "
                        f"{SUPPORTED}")
    ref = ref.reshape(ref.shape[0], -1)
    with torch.no_grad():
        out = net.torch_forward(x)
    scale = max(1.0, float(ref.abs().max()))
    err = float((out - ref).abs().max())
    if not err <= tol * scale:
        raise SlthError(f"{origin}: the graph slth read does not reproduce the model (max "
                        f"difference {err:.3g}); this happens with in-place operations on tensors "
                        "that are used again or through views; write them out of place")


def net_from_module(module: nn.Module, input_shape=None, *, verify: bool = True) -> Net:
    """Trace ``module`` with torch.fx into a :class:`Net` (see the module docstring)."""
    origin = type(module).__name__
    if input_shape is None:
        input_shape = getattr(module, "input_shape", None)
    if input_shape is not None:
        input_shape = tuple(int(v) for v in input_shape)
        if len(input_shape) not in (1, 3) or min(input_shape) < 1:
            raise SlthError(f"input_shape {list(input_shape)} must be (C, H, W) or (d,) "
                            "(without the batch)")
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except SlthError:
        raise
    except Exception as e:
        raise _trace_error(e, module) from None
    modules = dict(module.named_modules())
    reader = _Reader(origin, input_shape, origin, modules, trusted=True)

    def get_attr(target):
        obj = module
        for part in target.split("."):
            obj = getattr(obj, part)
        return _Const(obj) if isinstance(obj, torch.Tensor) else obj

    reader.get_attr = get_attr
    n_inputs = [0]

    def placeholder(n):
        n_inputs[0] += 1
        if n_inputs[0] == 1:
            return reader.ref(0)
        if n.args:  # an argument with a default value
            return n.args[0]
        raise SlthError(f"{origin}.forward takes more than one input ({n.target!r}); a target "
                        "takes one tensor")

    net = reader.read(graph, placeholder)
    net.name = origin
    if verify:
        _verify(net, module, origin)
    return net


# --------------------------------------------------------------------------------------------
# from torch.export (.pt2)

_PT2_ALLOWED = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/",
                ".data/", "archive_format", "archive_version", "byteorder")
_SYMPY_NAMES = {"Symbol", "Integer", "positive", "integer", "nonnegative", "True", "False",
                "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv",
                "CeilToInt", "FloorToInt", "CeilDiv", "Max", "Min", "Add", "Mul", "Pow"}
_EXPR_TOKEN = re.compile(r"\s+|\d+|[A-Za-z_][A-Za-z0-9_]*|'[a-z]\d*'|[-+*/%(),=<>]")


def _safe_expr(s: str) -> bool:
    pos = 0
    while pos < len(s):
        m = _EXPR_TOKEN.match(s, pos)
        if not m:
            return False
        tok = m.group(0)
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _SYMPY_NAMES \
                and not re.fullmatch(r"[a-z]\d+", tok):
            return False
        pos = m.end()
    return True


def _check_pt2_archive(path: Path) -> None:
    """Refuse a .pt2 whose loading could run code (see the module docstring)."""
    bad = f"{path}: refused"
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SlthError(f"{path} is not a torch.export archive ({e}); save it with "
                        "torch.export.save(torch.export.export(model.eval(), (x,)), 'f.pt2')") from None
    with z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise SlthError(f"{path} is not a torch.export archive (unexpected layout); save it "
                            "with torch.export.save")
        root = roots.pop() + "/"
        rel = {n[len(root):]: n for n in names}
        if rel.get("archive_format") is None or z.read(rel["archive_format"]).decode().strip() != "pt2":
            raise SlthError(f"{path} is not a current torch.export archive (legacy files are read "
                            "with pickle); re-export it with torch.export.save")
        for r in rel:
            if not r.startswith(_PT2_ALLOWED):
                raise SlthError(f"{bad}: it contains {r!r} (compiled code or unknown content); "
                                "slth reads only plain torch.export.save archives")
            if (r.startswith(("data/weights/", "data/constants/"))
                    and r.endswith(".pt")):
                raise SlthError(f"{bad}: {r} is a pickled (legacy) payload; re-export it with "
                                "torch.export.save")
        for r, full in rel.items():
            if r.endswith("_config.json") and r.startswith(("data/weights/", "data/constants/")):
                try:
                    cfg = json.loads(z.read(full))["config"]
                except (ValueError, KeyError) as e:
                    raise SlthError(f"{bad}: unreadable {r} ({e})") from None
                for key, meta in cfg.items():
                    if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                            ("weight_", "tensor_")):
                        raise SlthError(f"{bad}: {key!r} is stored as a pickled object, which "
                                        "would run code on loading; export plain tensors")
            elif r.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(z.read(full)), weights_only=True)
                except Exception:
                    raise SlthError(f"{bad}: its sample inputs are not plain tensors (loading "
                                    "them would unpickle objects)") from None
            elif r.startswith("models/") and r.endswith(".json"):
                try:
                    model = json.loads(z.read(full))
                except ValueError as e:
                    raise SlthError(f"{bad}: unreadable {r} ({e})") from None
                _check_pt2_model(model, path)


def _check_pt2_model(model: dict, path) -> None:
    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "expr_str" and not (isinstance(v, str) and _safe_expr(v)):
                    raise SlthError(f"{path}: refused: shape expression {str(v)[:60]!r} is not a "
                                    "plain symbol expression (parsing it would run code)")
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(model)
    try:
        graph = model["graph_module"]["graph"]
        nodes = graph["nodes"]
    except (KeyError, TypeError):
        raise SlthError(f"{path}: not a torch.export program (no graph)") from None
    if graph.get("custom_obj_values"):
        raise SlthError(f"{path}: refused: the program holds custom objects (torchbind), which "
                        "would run code on loading")
    for nd in nodes:
        t = str(nd.get("target", ""))
        if not t.startswith(("torch.ops.aten.", "_operator.", "torch.sym_", "math.")):
            md = nd.get("metadata") or {}
            stack = str(md.get("nn_module_stack", "")).split(";")[-1].split(",")
            where = stack[1] if len(stack) > 1 and stack[1] else "the model"
            raise SlthError(f"unsupported operation '{t}' at {where} in {path}; {SUPPORTED}")


def net_from_exported(ep, origin: str = "exported program") -> Net:
    """A Net from a ``torch.export.ExportedProgram`` (its ATen graph; the program is not run)."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    outs = [k for k, s in enumerate(sig.output_specs)]
    kinds = [s.kind for s in sig.output_specs]
    if any(k != OutputKind.USER_OUTPUT for k in kinds):
        raise SlthError(f"{origin}: the program updates buffers (batch norm in training mode?); "
                        "export the model after model.eval()")
    if len(outs) != 1:
        raise SlthError(f"{origin}: the program returns {len(outs)} values; a target returns one "
                        "tensor [N, d]")
    user = [s for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    if len(user) != 1:
        raise SlthError(f"{origin}: the program takes {len(user)} inputs; a target takes one tensor")
    in_node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user[0].arg.name)
    val = in_node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise SlthError(f"{origin}: the program's input has no shape")
    dims = list(val.shape)
    rest = []
    for d in dims[1:]:
        try:
            rest.append(int(d))
        except Exception:
            raise SlthError(f"{origin}: the input has a dynamic non-batch dimension; export with a "
                            "fixed (C, H, W)") from None
    try:
        example_batch = int(dims[0])
    except Exception:
        example_batch = None
    state = dict(ep.state_dict)
    consts = dict(getattr(ep, "constants", {}) or {})
    reader = _Reader(origin, tuple(rest), "model", None, trusted=False, example_batch=example_batch)

    def placeholder(n):
        s = specs.get(n.name)
        if s is None:
            raise SlthError(f"{origin}: unknown program input {n.name}")
        if s.kind == InputKind.USER_INPUT:
            return reader.ref(0)
        if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = state.get(s.target, consts.get(s.target))
            if t is None:
                raise SlthError(f"{origin}: missing tensor {s.target}")
            return _Const(t)
        raise SlthError(f"{origin}: unsupported program input {n.name} ({s.kind.name})")

    net = reader.read(ep.graph, placeholder)
    net.name = Path(origin).stem if origin.endswith(".pt2") else origin
    return net


def net_from_pt2(path: str | os.PathLike) -> Net:
    """A Net from a ``torch.export.save`` archive, after the safety checks of the module docstring."""
    path = Path(path)
    _check_pt2_archive(path)
    import logging
    import warnings

    lg = logging.getLogger("torch.export")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(str(path))
    except SlthError:
        raise
    except Exception as e:
        raise SlthError(f"{path}: torch.export.load failed ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}); re-export it with this torch "
                        f"({torch.__version__})") from None
    finally:
        lg.setLevel(level)
    return net_from_exported(ep, str(path))


def round_to_float32(net: Net) -> Net:
    """The same network with every weight rounded to float32 (exactly representable in a float32
    model, so .pt2 and float32 round trips keep the fingerprint)."""
    return net.with_weights(
        [np.asarray(w, np.float32).astype(np.float64) for w in net.weights],
        [None if b is None else np.asarray(b, np.float32).astype(np.float64) for b in net.biases])
