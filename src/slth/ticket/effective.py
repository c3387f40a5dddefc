"""The effective form: what a ticket's gadget computes, written in the target's terms.

A widen/combine pair of G (Pensia, Orseau, Malach) computes, for a target layer z = W h + c,

    z_hat = pos @ relu(h) + neg @ relu(-h) + bias       (a perfect ticket: pos = W, neg = -W)

because w x = w relu(x) - w relu(-x). It is read from G's weights and masks alone: every kept
widen neuron keeps one input channel (or only its bias), so a kept combine link adds
``out-weight * |in-weight|`` to pos (positive in-weight) or neg (negative), or
``out-weight * relu(bias)`` to the bias. Certification (``slth.certify``) works on this form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SlthError


@dataclass
class EffectiveLayer:
    """pos, neg float64 [d_out, D] (the target layer's matrix form), bias float64 [d_out]."""

    pos: np.ndarray
    neg: np.ndarray
    bias: np.ndarray


def widen_inputs(weight: np.ndarray, mask: np.ndarray, bias: np.ndarray | None,
                 bias_mask: np.ndarray | None, position: int = 0):
    """Per neuron of a widen layer (weight [m, C] or [m, C, 1, 1]): the input channel it keeps
    (col [m], -1 for none), that weight (a [m], float64) and its kept bias clipped at 0
    (beta [m]). Raises unless every neuron keeps at most one input, or only its bias."""
    m = weight.shape[0]
    W, M = weight.reshape(m, -1), mask.reshape(m, -1)
    kept = M.sum(1)
    if (kept > 1).any():
        raise SlthError(f"layer {position} keeps several inputs for one neuron; not in the "
                        "widen/combine form")
    has_b = np.zeros(m, bool) if bias_mask is None else bias_mask
    if (has_b & (kept == 1)).any():
        raise SlthError(f"layer {position} keeps an input and a bias on one neuron; not in "
                        "the widen/combine form")
    col = np.where(kept == 1, M.argmax(1), -1)
    a = np.where(kept == 1, W[np.arange(m), np.maximum(col, 0)].astype(np.float64), 0.0)
    beta = (np.maximum(np.where(bias_mask, bias.astype(np.float64), 0.0), 0.0)
            if bias is not None else np.zeros(m))
    return col, a, beta


def combine_effective(Vw: np.ndarray, Vm: np.ndarray, col: np.ndarray, a: np.ndarray,
                      beta: np.ndarray, channels: int, bias: np.ndarray | None = None
                      ) -> EffectiveLayer:
    """Rows of a combine layer read in the target's terms. Vw, Vm [rows, m, group] (weights and
    mask; group = taps of a kernel or pixels of a flattened map, 1 for an MLP), the widen layer's
    ``widen_inputs`` (col, a, beta [m]), kept combine biases or None. pos/neg column
    c * group + s collects tap s of the neurons keeping channel c. Sums run over the kept links
    of each row in (neuron, tap) order, so any split into rows gives the same numbers."""
    if Vw.ndim == 2:
        Vw, Vm = Vw[:, :, None], Vm[:, :, None]
    d_out, _, g = Vm.shape
    rows, rs, ss = np.nonzero(Vm)
    vals = Vw[rows, rs, ss].astype(np.float64)
    pos = np.zeros((d_out, channels * g))
    neg = np.zeros((d_out, channels * g))
    bias = np.zeros(d_out) if bias is None else np.array(bias, np.float64)
    j = col[rs] * g + ss
    coef = vals * np.abs(a[rs])
    sel = (col[rs] >= 0) & (a[rs] > 0)
    np.add.at(pos, (rows[sel], j[sel]), coef[sel])
    sel = (col[rs] >= 0) & (a[rs] < 0)
    np.add.at(neg, (rows[sel], j[sel]), coef[sel])
    sel = col[rs] < 0
    np.add.at(bias, rows[sel], vals[sel] * beta[rs[sel]])
    return EffectiveLayer(pos, neg, bias)


@dataclass
class EffectiveCopies:
    """A gadget that keeps copies of every unit (Burkholz's depth l+1 construction): its output
    carriers are ``copies_out`` copies of each output unit, its input carriers ``copies_in`` copies
    of each input unit (carrier of unit u, copy m: index u * copies + m over the channel axis).

    S float64 [units_out * copies_out, D * copies_in] (a conv: the kernel's matrix form over
    carrier channels): the kept weights from input carriers (all >= 0, post-ReLU) to output
    carriers; P float64 [units_out * copies_out, D]: S summed over the copies of each input (what
    each output carrier computes in the target's terms, to compare with W); bias [.. carriers]."""

    S: np.ndarray
    P: np.ndarray
    bias: np.ndarray
    copies_in: int
    copies_out: int


def copies_effective(Vw: np.ndarray, Vm: np.ndarray, const: np.ndarray | None, channels: int,
                     copies_in: int, copies_out: int, bias: np.ndarray | None = None
                     ) -> EffectiveCopies:
    """Rows of a copies layer (Burkholz) read in the target's terms. Vw, Vm [rows, m, group]
    (weights and mask; m = channels * copies_in input carriers, carrier of unit c copy k at
    c * copies_in + k, then the constant neurons), const [m - channels * copies_in]: the constant
    neurons' values (``constant_values``), kept biases or None. S: the kept weights from the
    carriers; P: S summed over the copies of each input unit; bias: own kept biases plus the kept
    links from constant neurons times their values. Sums run per row in a fixed order, so any
    split into rows gives the same numbers."""
    if Vw.ndim == 2:
        Vw, Vm = Vw[:, :, None], Vm[:, :, None]
    rows, m, g = Vm.shape
    k = channels * copies_in
    kept = np.where(Vm, Vw.astype(np.float64), 0.0)
    S = np.ascontiguousarray(kept[:, :k]).reshape(rows, k * g)
    S4 = S.reshape(rows, channels, copies_in, g)
    P = S4[:, :, 0].copy()
    for q in range(1, copies_in):
        P += S4[:, :, q]
    b = np.zeros(rows) if bias is None else np.array(bias, np.float64)
    if m > k:
        if const is None or len(const) != m - k:
            raise SlthError(f"a copies layer reads {m - k} constant neurons but "
                            f"{0 if const is None else len(const)} values were given")
        cw = np.ascontiguousarray(kept[:, k:]).reshape(rows, -1)
        cv = np.repeat(np.asarray(const, np.float64), g)
        for j in np.flatnonzero(Vm[:, k:].reshape(rows, -1).any(0)):
            b += cw[:, j] * cv[j]
    return EffectiveCopies(S, P.reshape(rows, channels * g), b, copies_in, copies_out)


def constant_values(weight: np.ndarray, mask: np.ndarray, bias: np.ndarray | None,
                    bias_mask: np.ndarray | None, r0: int, n: int, position: int = 0
                    ) -> np.ndarray:
    """Values of the constant neurons r0:r0+n of a layer of G (float64 [n]): each keeps no input
    weight, so after the ReLU it outputs relu(kept bias). Raises when one keeps an input."""
    if n == 0:
        return np.zeros(0)
    M = mask[r0:r0 + n].reshape(n, -1)
    if M.any():
        raise SlthError(f"layer {position}: constant neuron {r0 + int(M.any(1).argmax())} keeps "
                        "an input weight; not in the copies form")
    if bias is None:
        return np.zeros(n)
    b = np.where(bias_mask[r0:r0 + n], bias[r0:r0 + n].astype(np.float64), 0.0)
    return np.maximum(b, 0.0)


def copies_gadget_effective(layers: list, gd: dict):
    """A copies gadget of a graph ticket (``slth.ticket.graph``) read from G's weights and masks:
    the first layer of the target (gd has "widen": G's copy layer) as an ``EffectiveLayer`` whose
    rows are the output carriers (the widen/combine reading), later layers as
    ``EffectiveCopies`` (constant neurons read from the previous layer's rows after its
    carriers)."""
    V = layers[gd["layer"]]
    n, g = gd["carriers"], gd["group"]
    Vw, Vm = V.weight[:n].reshape(n, -1, g), V.mask[:n].reshape(n, -1, g)
    bias = None if V.bias is None else V.masked_bias()[:n]
    if "widen" in gd:
        U = layers[gd["widen"]]
        col, a, beta = widen_inputs(U.weight, U.mask, U.bias, U.bias_mask, gd["widen"])
        return combine_effective(Vw, Vm, col, a, beta, gd["channels"], bias)
    prev = layers[gd["prev"]]
    const = constant_values(prev.weight, prev.mask, prev.bias, prev.bias_mask,
                            gd["prev_carriers"], gd["const_in"], gd["prev"])
    return copies_effective(Vw, Vm, const, gd["channels"], gd["copies_in"], gd["copies_out"],
                            bias)
