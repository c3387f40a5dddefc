"""Brute force over all 2^n subsets (n <= 20): the ground truth the tests compare against.

Written independently of the kernel, in plain numpy, but with the same summation convention
(first-half sum + second-half sum, each accumulated in index order) and the same tie-break keys.
"""

from __future__ import annotations

import numpy as np


def _all_sums(c: np.ndarray):
    n = c.shape[0]
    masks = np.arange(1 << n, dtype=np.uint64)
    bits = ((masks[:, None] >> np.arange(n, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    n1 = n // 2
    sa = np.zeros(1 << n)
    for i in range(n1):
        sa = sa + np.where(bits[:, i], c[i], 0.0)
    sb = np.zeros(1 << n)
    for i in range(n1, n):
        sb = sb + np.where(bits[:, i], c[i], 0.0)
    return masks, bits.sum(1), sa + sb


def bruteforce(coeffs2, group, targets, objective, eps):
    N = targets.shape[0]
    out_mask = np.zeros(N, np.uint64)
    out_sum = np.zeros(N)
    out_err = np.zeros(N)
    out_feas = np.zeros(N, bool)
    cache: dict[int, tuple] = {}
    for i in range(N):
        g = int(group[i])
        if g not in cache:
            cache = {g: _all_sums(coeffs2[g])}
        masks, pops, sums = cache[g]
        err = np.abs(targets[i] - sums)
        ok = err <= (np.inf if eps is None else eps)
        if objective == "size" and ok.any():
            cand = np.flatnonzero(ok)
            # lexsort: last key is primary -> (size, error, mask)
            k = cand[np.lexsort((masks[cand], err[cand], pops[cand]))[0]]
        else:
            k = np.lexsort((masks, pops, err))[0]
        out_mask[i], out_sum[i], out_err[i], out_feas[i] = masks[k], sums[k], err[k], ok[k]
    return out_mask, out_sum, out_err, out_feas
