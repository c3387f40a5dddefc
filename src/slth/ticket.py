"""Tickets: a random network G plus binary masks, as standard PyTorch modules and files.

G is an MLP ``Linear -> ReLU -> Linear -> ... -> Linear`` (ReLU after every layer but the last).
``Ticket.module()`` returns exactly that as an ``nn.Sequential`` whose Linear layers carry
``weight_orig`` / ``weight_mask`` (and ``bias_orig`` / ``bias_mask``) as
``torch.nn.utils.prune`` makes them, so it runs with nothing of ours.

File format (``Ticket.save``): one ``.safetensors`` file whose tensor names are the state_dict
names of ``Ticket.module()``: for the Linear at position k of the Sequential (k = 0, 2, 4, ...)
``{k}.weight_orig`` (float32 [out, in], G's random weights), ``{k}.weight_mask`` (bool),
``{k}.bias_orig`` (float32 [out]) and ``{k}.bias_mask`` (bool) when G has biases. JSON metadata
sits in the safetensors header under ``slth``. The compact export (``save_compact``) keeps only
the active weights, per layer in CSR form: ``{k}.crow_indices`` (int64 [out + 1]),
``{k}.col_indices`` (int32 [nnz]), ``{k}.values`` (float32 [nnz]), ``{k}.bias`` (float32, pruned
entries zero) and ``{k}.shape`` (int64 [2]). The header's metadata has one key, ``slth``: a JSON
object with ``format`` ("slth-ticket"), ``version``, ``compact`` and ``meta`` (method, seed,
sizes, target fingerprint).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SlthError
from .jsonio import jsonable

FORMAT = "slth-ticket"
FORMAT_VERSION = "1"


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
class EffectiveLayer:
    """What a widen/combine layer pair of a ticket computes, written in the target's terms.

    z = pos @ relu(h) + neg @ relu(-h) + bias, with pos, neg float64 [d_out, d_in]. A perfect
    ticket has pos = W and neg = -W (because w x = w relu(x) - w relu(-x)) and bias = c.
    """

    pos: np.ndarray
    neg: np.ndarray
    bias: np.ndarray


@dataclass
class Ticket:
    """G (its random weights, dense) and the masks that select the ticket. meta: JSON-able."""

    layers: list[Layer]
    meta: dict = field(default_factory=dict)

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
        """``nn.Sequential`` of Linear/ReLU with prune-style ``weight_orig``/``weight_mask``."""
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

        net = self.fast_module(dtype or torch.float64)
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch]), dtype=net.dtype)
                outs.append(net(xb).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.widths[-1]))

    def fast_module(self, dtype=None):
        """A torch module computing the pruned network efficiently (see ``forward``)."""
        import torch

        return _FastTicketNet(self, dtype or torch.float64)

    # ---------------------------------------------------------------- effective form
    def effective(self) -> list[EffectiveLayer]:
        """Read each (widen, combine) layer pair of the ticket in the target's terms.

        Needs G of even depth whose odd layers keep, per neuron, either one input weight or only
        its bias (the gadget form all three constructions produce). Computed from G's weights and
        masks alone - not from any construction's bookkeeping.
        """
        if len(self.layers) % 2:
            raise SlthError(f"ticket has {len(self.layers)} layers; the effective form needs "
                            "an even depth (pairs of widen/combine layers)")
        out = []
        for p in range(0, len(self.layers), 2):
            V = self.layers[p + 1]
            col, a, beta = widen_inputs(self.layers[p], 2 * p)
            bias = None if V.bias is None else V.masked_bias()
            out.append(combine_effective(V.weight, V.mask, col, a, beta,
                                         self.layers[p].shape[1], bias))
        return out

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the full ticket (G and masks) as safetensors; see the module docstring."""
        with TicketFile(path, self.tensor_specs(), self.meta) as f:
            for i, L in enumerate(self.layers):
                f.put(f"{2 * i}.weight_orig", L.weight)
                f.put(f"{2 * i}.weight_mask", L.mask)
                if L.bias is not None:
                    f.put(f"{2 * i}.bias_orig", L.bias)
                    f.put(f"{2 * i}.bias_mask", L.bias_mask)

    def tensor_specs(self) -> dict:
        return ticket_specs([(L.shape, L.bias is not None) for L in self.layers])

    def save_compact(self, path: str | os.PathLike) -> None:
        """Write only the active weights (CSR per layer); see the module docstring."""
        import torch
        from safetensors.torch import save_file

        tensors = {}
        for i, L in enumerate(self.layers):
            k = 2 * i
            rows, cols = np.nonzero(L.mask)
            crow = np.zeros(L.shape[0] + 1, np.int64)
            np.add.at(crow, rows + 1, 1)
            tensors[f"{k}.crow_indices"] = torch.from_numpy(np.cumsum(crow))
            tensors[f"{k}.col_indices"] = torch.from_numpy(cols.astype(np.int32))
            tensors[f"{k}.values"] = torch.from_numpy(L.weight[rows, cols].astype(np.float32))
            tensors[f"{k}.shape"] = torch.tensor(list(L.shape), dtype=torch.int64)
            if L.bias is not None:
                tensors[f"{k}.bias"] = torch.from_numpy(L.masked_bias(np.float32).astype(np.float32))
        _atomic_save(save_file, tensors, path, _metadata(self.meta, compact=True))


def _metadata(meta: dict, compact: bool = False) -> dict:
    # one key only: safetensors writes its metadata map in no fixed order, and tickets
    # must be byte-identical for the same seed and settings
    head = {"format": FORMAT, "version": FORMAT_VERSION, "compact": compact, "meta": meta}
    return {"slth": json.dumps(jsonable(head), sort_keys=True)}


def _atomic_save(save_file, tensors, path, metadata):
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def ticket_specs(layers: list[tuple[tuple[int, int], bool]]) -> dict:
    """Tensor names, dtypes and shapes of a full ticket file, from each layer's (shape, has_bias)."""
    specs = {}
    for i, ((d_out, d_in), has_bias) in enumerate(layers):
        specs[f"{2 * i}.weight_orig"] = (np.float32, (d_out, d_in))
        specs[f"{2 * i}.weight_mask"] = (np.bool_, (d_out, d_in))
        if has_bias:
            specs[f"{2 * i}.bias_orig"] = (np.float32, (d_out,))
            specs[f"{2 * i}.bias_mask"] = (np.bool_, (d_out,))
    return specs


_ST_DTYPES = {np.dtype(np.float32): ("F32", 1), np.dtype(np.bool_): ("BOOL", 0)}


class TicketFile:
    """A ticket file written piece by piece: the safetensors layout (header, then each tensor's
    bytes) is fixed from ``specs`` {name: (dtype, shape)} up front, so rows can be written in any
    order as they are computed (``put``), without the whole ticket in memory. Written to
    ``PATH.<attempt>.part`` and renamed to ``PATH`` on a clean exit; removed on an error.

    The bytes are those ``safetensors.save_file`` writes (tensors ordered by dtype, F32 before
    BOOL, then by name; compact JSON header padded with spaces to 8 bytes), checked by the tests.
    """

    def __init__(self, path: str | os.PathLike, specs: dict, meta: dict):
        import struct

        self.path = Path(path)
        # a name of its own per attempt: a worker left over from a killed attempt cannot write
        # into this one
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{os.urandom(4).hex()}.part")
        order = sorted(specs, key=lambda k: (-_ST_DTYPES[np.dtype(specs[k][0])][1], k))
        header: dict = {"__metadata__": _metadata(meta)}
        self.where: dict[str, tuple[int, np.dtype, tuple]] = {}
        end = 0
        for k in order:
            dt, shape = np.dtype(specs[k][0]), tuple(int(v) for v in specs[k][1])
            size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[k] = {"dtype": _ST_DTYPES[dt][0], "shape": list(shape),
                         "data_offsets": [end, end + size]}
            self.where[k] = (end, dt, shape)
            end += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.base = 8 + len(text)
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(text)) + text)
        self.f.truncate(self.base + end)     # unwritten bytes read as zeros

    def put(self, name: str, array: np.ndarray, row0: int = 0) -> None:
        """Write ``array`` as rows ``row0:row0 + len(array)`` of tensor ``name``."""
        put_rows(self.slot(name), array, row0, self.f.fileno())

    def set_true(self, name: str, index: tuple) -> None:
        """Set entries ``index`` (numpy fancy index) of bool tensor ``name`` to True; the rest
        stay as written (zeros if never written). Touches only the pages holding them."""
        off, dt, shape = self.where[name]
        self.f.flush()
        mm = np.memmap(self.tmp, dtype=dt, mode="r+", offset=self.base + off, shape=shape)
        mm[index] = True
        mm.flush()
        del mm

    def sync(self) -> None:
        """Flush everything written so far (by any process) to disk."""
        self.f.flush()
        os.fsync(self.f.fileno())

    def slot(self, name: str) -> tuple:
        """Where tensor ``name`` lives: (file, byte offset, dtype, shape); other processes on
        this machine (local Dask workers) can fill rows with ``put_rows(slot, ...)``."""
        off, dt, shape = self.where[name]
        return str(self.tmp), self.base + off, dt.str, shape

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.sync()
        self.f.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def put_rows(slot: tuple, array: np.ndarray, row0: int = 0, fd: int | None = None) -> None:
    """Write ``array`` as rows ``row0:`` of the tensor at ``slot`` (``TicketFile.slot``)."""
    path, off, dt, shape = slot
    a = np.ascontiguousarray(array, dtype=np.dtype(dt))
    if a.ndim != len(shape) or a.shape[1:] != tuple(shape[1:]) or not 0 <= row0 <= shape[0] - len(a):
        raise ValueError(f"rows {row0}:{row0 + len(a)} of shape {a.shape} do not fit {shape}")
    row = int(np.prod(shape[1:], dtype=np.int64)) * a.itemsize
    view, pos = memoryview(a.reshape(-1).view(np.uint8)), off + row0 * row
    own = fd is None
    fd = os.open(path, os.O_WRONLY) if own else fd
    try:
        while len(view):        # one write moves at most ~2 GB on Linux
            k = os.pwrite(fd, view, pos)
            view, pos = view[k:], pos + k
    finally:
        if own:
            os.close(fd)


def widen_inputs(U: Layer, position: int = 0):
    """Per neuron of a widen layer: the input it keeps (col [m], -1 for none), that weight
    (a [m], float64) and its kept bias clipped at 0 (beta [m]). Raises unless every neuron
    keeps at most one input, or only its bias (the gadget form all three constructions use)."""
    m = U.shape[0]
    kept = U.mask.sum(1)
    if (kept > 1).any():
        raise SlthError(f"layer {position} keeps several inputs for one neuron; not in the "
                        "widen/combine form")
    has_b = np.zeros(m, bool) if U.bias_mask is None else U.bias_mask
    if (has_b & (kept == 1)).any():
        raise SlthError(f"layer {position} keeps an input and a bias on one neuron; not in "
                        "the widen/combine form")
    col = np.where(kept == 1, U.mask.argmax(1), -1)
    a = np.where(kept == 1, U.weight[np.arange(m), np.maximum(col, 0)].astype(np.float64), 0.0)
    beta = np.maximum(U.masked_bias(), 0.0) if U.bias is not None else np.zeros(m)
    return col, a, beta


def combine_effective(Vw: np.ndarray, Vm: np.ndarray, col: np.ndarray, a: np.ndarray,
                      beta: np.ndarray, d_in: int, bias: np.ndarray | None = None
                      ) -> EffectiveLayer:
    """Rows of a combine layer (weights Vw [rows, m], mask Vm [rows, m], kept biases or None)
    read in the target's terms, given the widen layer's ``widen_inputs``. Sums run over the kept
    links of each row in column order, so any split into rows gives the same numbers."""
    rows, rs = np.nonzero(Vm)
    vals = Vw[rows, rs].astype(np.float64)
    d_out = Vm.shape[0]
    pos = np.zeros((d_out, d_in))
    neg = np.zeros((d_out, d_in))
    bias = np.zeros(d_out) if bias is None else np.array(bias, np.float64)
    j = col[rs]
    coef = vals * np.abs(a[rs])
    sel = (j >= 0) & (a[rs] > 0)
    np.add.at(pos, (rows[sel], j[sel]), coef[sel])
    sel = (j >= 0) & (a[rs] < 0)
    np.add.at(neg, (rows[sel], j[sel]), coef[sel])
    sel = j < 0
    np.add.at(bias, rows[sel], vals[sel] * beta[rs[sel]])
    return EffectiveLayer(pos, neg, bias)


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


def load_ticket(path: str | os.PathLike) -> Ticket:
    """Read a ticket written by ``Ticket.save`` or ``Ticket.save_compact``.

    A compact ticket comes back with zeros in place of G's pruned weights (they were not kept).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "ticket.safetensors"
    if not path.exists():
        raise SlthError(f"ticket file {path} not found; build one with 'slth construct'")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_raw = f.metadata() or {}
            names = list(f.keys())
            t = {n: f.get_tensor(n) for n in names}
    except (SafetensorError, OSError) as e:
        raise SlthError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        head = json.loads(meta_raw.get("slth", "{}"))
    except json.JSONDecodeError:
        head = {}
    if head.get("format") != FORMAT:
        raise SlthError(f"{path} is not an slth ticket (no '{FORMAT}' metadata)")
    meta = head.get("meta", {})
    layers = []
    k = 0
    if head.get("compact"):
        while f"{k}.shape" in t:
            out_d, in_d = (int(v) for v in t[f"{k}.shape"])
            crow, col, val = t[f"{k}.crow_indices"], t[f"{k}.col_indices"], t[f"{k}.values"]
            rows = np.repeat(np.arange(out_d), np.diff(crow))
            w = np.zeros((out_d, in_d), np.float32)
            m = np.zeros((out_d, in_d), bool)
            w[rows, col] = val
            m[rows, col] = True
            b = t.get(f"{k}.bias")
            layers.append(Layer(w, m, b, None if b is None else b != 0))
            k += 2
        meta = dict(meta, compact=True)
    else:
        while f"{k}.weight_orig" in t:
            b = t.get(f"{k}.bias_orig")
            layers.append(Layer(t[f"{k}.weight_orig"], t[f"{k}.weight_mask"].astype(bool), b,
                                None if b is None else t[f"{k}.bias_mask"].astype(bool)))
            k += 2
    if not layers:
        raise SlthError(f"{path} holds no ticket layers")
    return Ticket(layers, meta)


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
