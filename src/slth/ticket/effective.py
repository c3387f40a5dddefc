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
