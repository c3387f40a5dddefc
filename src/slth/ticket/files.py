"""Ticket files: the full ticket (G and masks) and the compact export, as safetensors.

Full file (``Ticket.save``): tensor names are the state_dict names of ``Ticket.module()``: for
the layer at position k of G (k = 0, 2, 4, ... in an MLP's ``nn.Sequential``; the node's position
in a graph ticket) ``{k}.weight_orig`` (float32, G's random weights), ``{k}.weight_mask`` (bool),
``{k}.bias_orig`` (float32 [out]) and ``{k}.bias_mask`` (bool) when G has biases. JSON metadata
sits in the safetensors header under ``slth``: ``format`` ("slth-ticket"), ``version``,
``compact``, ``meta`` (method, seed, sizes, target fingerprint) and, for tickets that are not a
Linear/ReLU chain, ``graph`` (G's nodes). The compact export (``save_compact``) keeps only the
active weights, per layer in CSR form over the weight's rows: ``{k}.crow_indices`` (int64
[out + 1]), ``{k}.col_indices`` (int32 [nnz], into the flattened row), ``{k}.values`` (float32
[nnz]), ``{k}.bias`` (float32, pruned entries zero) and ``{k}.shape`` (int64).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import SlthError
from ..jsonio import jsonable
from .model import Layer, Ticket

FORMAT = "slth-ticket"
FORMAT_VERSION = "1"


def _metadata(meta: dict, compact: bool = False, graph: dict | None = None) -> dict:
    # one key only: safetensors writes its metadata map in no fixed order, and tickets
    # must be byte-identical for the same seed and settings
    head = {"format": FORMAT, "version": FORMAT_VERSION, "compact": compact, "meta": meta}
    if graph is not None:
        head["graph"] = graph
    return {"slth": json.dumps(jsonable(head), sort_keys=True)}


def _atomic_save(save_file, tensors, path, metadata):
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def ticket_specs(layers: list[tuple[tuple, bool]], names: list[str] | None = None) -> dict:
    """Tensor names, dtypes and shapes of a full ticket file, from each layer's (weight shape,
    has_bias) and state-dict prefix (default: 0, 2, 4, ... as in an MLP's nn.Sequential)."""
    specs = {}
    for i, (shape, has_bias) in enumerate(layers):
        k = names[i] if names is not None else str(2 * i)
        specs[f"{k}.weight_orig"] = (np.float32, tuple(shape))
        specs[f"{k}.weight_mask"] = (np.bool_, tuple(shape))
        if has_bias:
            specs[f"{k}.bias_orig"] = (np.float32, (shape[0],))
            specs[f"{k}.bias_mask"] = (np.bool_, (shape[0],))
    return specs


class MemoryTicket:
    """A ticket assembled in memory, with ``TicketFile``'s writing interface (``put``,
    ``set_true``, ``read_rows``; no slots: tasks hand their rows back). ``arrays[name]``."""

    def __init__(self, specs: dict, meta: dict, graph: dict | None = None):
        self.arrays = {k: np.zeros(shape, dt) for k, (dt, shape) in specs.items()}
        self.where = self.arrays
        self.meta, self.graph = meta, graph

    def put(self, name: str, array: np.ndarray, row0: int = 0) -> None:
        self.arrays[name][row0:row0 + len(array)] = array

    def set_true(self, name: str, index: tuple) -> None:
        self.arrays[name][index] = True

    def read_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        return self.arrays[name][r0:r1]

    def ticket(self, names: list[str]) -> Ticket:
        """The ticket held here (tensors with state-dict prefixes ``names``, in G's order)."""
        a = self.arrays
        return Ticket([Layer(a[f"{k}.weight_orig"], a[f"{k}.weight_mask"], a.get(f"{k}.bias_orig"),
                             a.get(f"{k}.bias_mask")) for k in names], self.meta, self.graph)

    def slot(self, name: str):
        return None

    def sync(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


_ST_DTYPES = {np.dtype(np.float32): ("F32", 1), np.dtype(np.bool_): ("BOOL", 0)}


class TicketFile:
    """A ticket file written piece by piece: the safetensors layout (header, then each tensor's
    bytes) is fixed from ``specs`` {name: (dtype, shape)} up front, so rows can be written in any
    order as they are computed (``put``), without the whole ticket in memory. Written to
    ``PATH.<attempt>.part`` and renamed to ``PATH`` on a clean exit; removed on an error.

    The bytes are those ``safetensors.save_file`` writes (tensors ordered by dtype, F32 before
    BOOL, then by name; compact JSON header padded with spaces to 8 bytes), checked by the tests.
    """

    def __init__(self, path: str | os.PathLike, specs: dict, meta: dict,
                 graph: dict | None = None):
        import struct

        self.path = Path(path)
        # a name of its own per attempt: a worker left over from a killed attempt cannot write
        # into this one
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{os.urandom(4).hex()}.part")
        order = sorted(specs, key=lambda k: (-_ST_DTYPES[np.dtype(specs[k][0])][1], k))
        header: dict = {"__metadata__": _metadata(meta, graph=graph)}
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
        self.meta, self.graph = meta, graph
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

    def read_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of tensor ``name`` as written so far (by any process)."""
        self.f.flush()
        return read_rows(self.slot(name), r0, r1)

    def ticket(self, names: list[str]) -> Ticket:
        """The ticket written so far, read back whole (tensors prefixed ``names``)."""
        def get(k):
            return self.read_rows(k, 0, self.where[k][2][0]) if k in self.where else None
        return Ticket([Layer(get(f"{k}.weight_orig"), get(f"{k}.weight_mask"),
                             get(f"{k}.bias_orig"), get(f"{k}.bias_mask")) for k in names],
                      self.meta, self.graph)

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


def read_rows(slot: tuple, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of the tensor at ``slot`` (``TicketFile.slot``), read from the file."""
    path, off, dt, shape = slot
    dt = np.dtype(dt)
    row = int(np.prod(shape[1:], dtype=np.int64))
    return np.fromfile(path, dt, (r1 - r0) * row, offset=off + r0 * row * dt.itemsize
                       ).reshape((r1 - r0, *shape[1:]))


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
    meta, graph = head.get("meta", {}), head.get("graph")
    names = (Ticket([], graph=graph).names_of(graph) if graph is not None
             else [str(k) for k in range(0, 2 * len(t), 2)])
    layers = []
    for k in names:
        if head.get("compact"):
            if f"{k}.shape" not in t:
                break
            shape = tuple(int(v) for v in t[f"{k}.shape"])
            crow, col, val = t[f"{k}.crow_indices"], t[f"{k}.col_indices"], t[f"{k}.values"]
            rows = np.repeat(np.arange(shape[0]), np.diff(crow))
            w = np.zeros((shape[0], int(np.prod(shape[1:]))), np.float32)
            m = np.zeros(w.shape, bool)
            w[rows, col] = val
            m[rows, col] = True
            b = t.get(f"{k}.bias")
            layers.append(Layer(w.reshape(shape), m.reshape(shape), b,
                                None if b is None else b != 0))
        else:
            if f"{k}.weight_orig" not in t:
                break
            b = t.get(f"{k}.bias_orig")
            layers.append(Layer(t[f"{k}.weight_orig"], t[f"{k}.weight_mask"].astype(bool), b,
                                None if b is None else t[f"{k}.bias_mask"].astype(bool)))
    if head.get("compact"):
        meta = dict(meta, compact=True)
    if not layers:
        raise SlthError(f"{path} holds no ticket layers")
    return Ticket(layers, meta, graph)


