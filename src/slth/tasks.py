"""What the driver's tasks compute: independent pieces of one construction, each on a few rows.

* ``chunk_task``: output rows r0:r1 of one target layer - solved (``method.solve``) unless their
  state is known (a resumed run, or a size the ``--eps`` search already solved) - and G's rows for
  them (``method.chunk_rows``), written into the ticket file or handed back;
* ``layer_task``: the tensors a method draws for a whole layer (``method.layer_rows``), in blocks
  of rows (bounded memory);
* ``literal_task``: rows r0:r1 of one tensor of G applied to inputs, read from the ticket file
  (the report's literal check of the masked network).

Tasks carry the method (settings included) and numpy arrays only; every draw comes from its own
seeded stream, so results do not depend on which worker runs what, or in which order.
"""

from __future__ import annotations

import time

import numpy as np

from .ticket.files import put_rows, read_rows

PARTS = ("weight_orig", "weight_mask", "bias_orig", "bias_mask")


def chunk_task(method, layer, size: int, seed: int, plan, threads, state: dict | None = None,
               write: bool = True, slots: dict | None = None):
    """One chunk. Returns (state if solved now else None, rows {role: Rows} or None when
    written to ``slots`` or not asked for, active {role: kept entries}, seconds, where).
    slots: {role: (first tensor row, {part: slot})} of the ticket file, or None."""
    t0 = time.perf_counter()
    new = state is None
    if new:
        state = method.solve(layer, size, seed, plan=plan, threads=threads)
    rows = active = None
    if write:
        rows = method.chunk_rows(layer, size, seed, state, plan=plan)
        active = {role: int(r.mask.sum()) + (0 if r.bias_mask is None else int(r.bias_mask.sum()))
                  for role, r in rows.items()}
        if slots is not None:
            for role, r in rows.items():
                row0, where = slots[role]
                for part, arr in zip(PARTS, (r.weight, r.mask, r.bias, r.bias_mask)):
                    if arr is not None:
                        put_rows(where[part], arr, row0)
            rows = None
    return (state if new else None), rows, active, time.perf_counter() - t0, here()


def layer_task(method, layer, size: int, seed: int, plan, slots: dict | None = None,
               block: int = 4096):
    """A layer's whole-layer tensors (and the whole-layer rows of chunked tensors): (blocks
    [(role, first row, weights, biases of those rows or None)] or None when written to ``slots``
    {role: {part: slot}}, seconds, where)."""
    t0 = time.perf_counter()
    out = []
    for role, r0, W, b in method.layer_rows(layer, size, seed, block=block if slots else None,
                                            plan=plan):
        if slots is None:
            out.append((role, r0, W, b))
            continue
        put_rows(slots[role]["weight_orig"], W, r0)
        if b is not None:
            put_rows(slots[role]["bias_orig"], b, r0)
    return (None if slots is not None else out), time.perf_counter() - t0, here()


def literal_task(h: np.ndarray, slots: dict, r0: int, r1: int, op: str, attrs: dict) -> np.ndarray:
    """Outputs r0:r1 (before any ReLU) of one Linear tensor of G on inputs h [N, in], float64,
    with the masked weights read from the ticket file."""
    W = read_rows(slots["weight_orig"], r0, r1).astype(np.float64)
    W = np.where(read_rows(slots["weight_mask"], r0, r1), W, 0.0).reshape(r1 - r0, -1)
    out = h @ W.T
    if slots.get("bias_orig") is not None:
        b = read_rows(slots["bias_orig"], r0, r1).astype(np.float64)
        out += np.where(read_rows(slots["bias_mask"], r0, r1), b, 0.0)
    return out


def here() -> str:
    """Which worker runs this (its address), or "this process"."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "this process"
