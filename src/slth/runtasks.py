"""What a run's workers compute for Pensia's construction: independent tasks, each on a few rows.

* ``build_chunk``: output rows r0:r1 of one target layer - their SubsetSums (``pensia.solve_rows``),
  G's combine-layer rows for them (``pensia.combine_rows``), and those rows read in the target's
  terms (``ticket.combine_effective``, the arithmetic of ``Ticket.effective``), so the client
  never holds G;
* ``widen``: one target layer's widen layer of G (its filler draws and in-weights);
* ``literal_rows``: rows r0:r1 of one layer pair of the masked network run literally on inputs x
  (G's rows redrawn from their streams), for the report's checks.

Tasks name slth functions and carry numpy arrays only; every draw comes from its own seeded
stream, so the results do not depend on which worker runs what, or in which order.
"""

from __future__ import annotations

import time

import numpy as np

from .constructions.pensia import (combine_rows, draw_in, draw_out, signed_in_weights, solve_rows,
                                   widen_biases, widen_weight_rows, widen_weights)
from .ticket import combine_effective, put_rows


def state_shapes(rows: int, d_in: int, n: int, has_bias: bool) -> dict:
    """Arrays a chunk file holds: ``mask`` uint8 [2, rows, d_in, ceil(n/8)] (chosen links, bits
    along n), ``pos`` / ``neg`` / ``bias`` float64 [rows, d_in] / [rows] (the rows' effective
    form), ``errors`` float64 [2] (largest weight and bias error of the SubsetSums), and with a
    target bias ``bias_mask`` uint8 [rows, ceil(n/8)]."""
    nb = (n + 7) // 8
    out = {"mask": (2, rows, d_in, nb), "pos": (rows, d_in), "neg": (rows, d_in),
           "bias": (rows,), "errors": (2,)}
    if has_bias:
        out["bias_mask"] = (rows, nb)
    return out


def unpack_masks(state: dict, n: int):
    """(mask bool [2, rows, d_in, n], bias_mask bool [rows, n] or None) of a chunk state."""
    mask = np.unpackbits(state["mask"], axis=-1, count=n).astype(bool)
    bm = state.get("bias_mask")
    return mask, None if bm is None else np.unpackbits(bm, axis=-1, count=n).astype(bool)


def build_chunk(Wr: np.ndarray, cr: np.ndarray | None, n: int, seed: int, layer: int, r0: int,
                r1: int, halves: tuple, threads: int | None = 1, known: dict | None = None,
                slots: tuple | None = None):
    """Rows r0:r1 of one target layer, given as Wr [rows, d_in] (and biases cr [rows]).

    Solves the rows' SubsetSums, or, given ``known`` (the state of an earlier attempt), takes the
    masks from it. Returns (state, rows, seconds, where): state as in ``state_shapes`` (None with
    ``known``), rows = (Vw float32 [rows, m], Vm bool [rows, m]) of G's combine layer, or None
    when ``slots`` (the ticket file's slots of that layer's weights and mask, on a file system
    this process shares with the client) says where to write them instead.
    """
    t0 = time.perf_counter()
    d_in = Wr.shape[1]
    has_bias = cr is not None
    if known is None:
        # solve_rows takes absolute row numbers and reads only rows r0:r1; np.zeros leaves the
        # rows above r0 as untouched (uncommitted) memory
        W = np.zeros((r1, d_in))
        W[r0:] = Wr
        c = None
        if has_bias:
            c = np.zeros(r1)
            c[r0:] = cr
        sol = solve_rows(W, c, n, seed, layer, range(r0, r1), halves, threads)
        b, bb, mask, bias_mask = sol.b, sol.bb, sol.mask, sol.bias_mask
    else:
        b, bb = draw_out(range(r0, r1), d_in, n, has_bias, seed, layer)
        mask, bias_mask = unpack_masks(known, n)
    Vw, Vm = combine_rows(b, mask, bb, bias_mask)
    state = None
    if known is None:
        col, a, beta = gadget_inputs(sol.a, sol.beta)
        eff = combine_effective(Vw, Vm, col, a, beta, d_in)
        w_err = max(float(np.abs(sol.sums[0] - Wr).max(initial=0.0)),
                    float(np.abs(sol.sums[1] + Wr).max(initial=0.0)) if 1 in halves else 0.0)
        b_err = float(np.abs(sol.bias_sums - cr).max(initial=0.0)) if has_bias else 0.0
        state = {"mask": np.packbits(mask, axis=-1), "pos": eff.pos, "neg": eff.neg,
                 "bias": eff.bias, "errors": np.array([w_err, b_err])}
        if has_bias:
            state["bias_mask"] = np.packbits(bias_mask, axis=-1)
    rows = (Vw, Vm)
    if slots is not None:
        put_rows(slots[0], Vw, r0)
        put_rows(slots[1], Vm, r0)
        rows = None
    return state, rows, time.perf_counter() - t0, _where()


def gadget_inputs(a: np.ndarray, beta: np.ndarray | None):
    """``ticket.widen_inputs`` of a Pensia widen layer, for every neuron an out-link may use:
    neuron (j, h, t) keeps input j with weight +-a[h, t, j] (float32), the bias block its bias.
    (Neurons no output uses are pruned in G; no combine row selects them, so their entries here
    never count.)"""
    _, n, d_in = a.shape
    sa = signed_in_weights(a).astype(np.float64)
    col = np.repeat(np.arange(d_in), 2 * n)
    av = np.transpose(sa, (2, 0, 1)).reshape(-1)
    bv = np.zeros(2 * n * d_in)
    if beta is not None:
        col = np.concatenate([col, np.full(n, -1)])
        av = np.concatenate([av, np.zeros(n)])
        bv = np.concatenate([bv, np.maximum(beta.astype(np.float32).astype(np.float64), 0.0)])
    return col, av, bv


def widen(d_in: int, n: int, has_bias: bool, seed: int, layer: int, slots: tuple | None = None,
          block: int = 4096):
    """G's widen layer for one target layer: (weights float32 [m, d_in], biases float32 [m] or
    None, seconds, where). With ``slots`` (the weights' and biases' slots in the ticket file)
    they are written there instead, ``block`` rows at a time (memory: one block), and returned
    as None."""
    t0 = time.perf_counter()
    a, beta = draw_in(d_in, n, has_bias, seed, layer)
    if slots is None:
        Uw, Ub = widen_weights(a, beta, seed, layer)
    else:
        for r0, U in widen_weight_rows(a, has_bias, seed, layer, block):
            put_rows(slots[0], U, r0)
        Ub = widen_biases(beta, 2 * n * d_in, seed, layer)
        if Ub is not None:
            put_rows(slots[1], Ub)
        Uw = Ub = None
    return Uw, Ub, time.perf_counter() - t0, _where()


def literal_rows(x: np.ndarray, n: int, seed: int, layer: int, parts: list,
                 used: np.ndarray, bias_used: np.ndarray | None,
                 slots: tuple | None = None) -> list[np.ndarray]:
    """For each (r0, r1, masks) of ``parts``: outputs r0:r1 [N, rows] (float64, before the ReLU)
    of target layer ``layer``'s widen/combine pair of the masked network on inputs x [N, d_in].
    The widen layer (``used`` [2, d_in, n], ``bias_used`` [n] say which neurons the masks keep),
    ReLU, then the chunk's combine rows, read from the ticket file (``slots`` of the weights and
    mask) or, without it, every weight redrawn from its stream and masked by ``masks``."""
    N, d_in = x.shape
    has_bias = bias_used is not None
    a, beta = draw_in(d_in, n, has_bias, seed, layer)
    w, Ub = _widen_kept(a, beta, used, bias_used)
    h = np.maximum(x[:, :, None] * w.reshape(d_in, 2 * n)[None], 0.0).reshape(N, -1)
    if has_bias:
        h = np.concatenate([h, np.broadcast_to(np.maximum(Ub, 0.0), (N, n))], axis=1)
    out = []
    for r0, r1, masks in parts:
        if slots is not None:
            Vw, Vm = (_read_rows(s, r0, r1) for s in slots)
        else:
            b, bb = draw_out(range(r0, r1), d_in, n, has_bias, seed, layer)
            mask, bias_mask = unpack_masks(masks, n)
            Vw, Vm = combine_rows(b, mask, bb, bias_mask)
        out.append(h @ np.where(Vm, Vw.astype(np.float64), 0.0).T)
    return out


def _read_rows(slot: tuple, r0: int, r1: int) -> np.ndarray:
    path, off, dt, shape = slot
    dt = np.dtype(dt)
    row = int(np.prod(shape[1:], dtype=np.int64))
    return np.fromfile(path, dt, (r1 - r0) * row, offset=off + r0 * row * dt.itemsize
                       ).reshape((r1 - r0, *shape[1:]))


def _widen_kept(a, beta, used, bias_used):
    """Kept in-weight of each block neuron [2 n d_in] (row order of G; 0 where pruned) and kept
    bias-block biases [n] (or None), as float64 from G's float32."""
    _, av, bv = gadget_inputs(a, beta)
    m = used.size
    w = np.where(np.transpose(used, (1, 0, 2)).reshape(-1), av[:m], 0.0)
    return w, None if bias_used is None else np.where(bias_used, bv[m:], 0.0)


def _where() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "this process"
