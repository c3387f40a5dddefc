"""Where a CNN ticket's certified bound is loose: per layer, the certified deviation bound beside
the largest deviation gradient ascent finds at that layer, the target's certified pre-activation
intervals beside the largest values found, and what the final bound is made of.

    python benchmarks/cnn.py --model lenet5 --n 21 --out bench-cnn     # makes the ticket
    python benchmarks/cnn_bound.py --target ~/.cache/slth/bench-cnn/lenet5-fashion-mnist-e5-s0.safetensors \\
        --ticket bench-cnn/runs/lenet5-pensia-n21-s0/*/ticket.safetensors --out bench-cnn

Per affine layer: projected sign-gradient ascent (``--starts`` uniform points of the box, seeded,
``--steps`` steps) on max |G_hat - F| of that layer's output, and separately on max |F|. The
decomposition splits the backward tail bound of the worst output into its terms
(``certify._tail_upper(..., parts=)``): the chain input's deviation (independent intervals past
the last max pooling), each ReLU layer's chord constants, and each layer's own weight errors
times the target's interval. Writes OUT/cnn_bound.json and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from slth import certify
from slth.nets import AFFINE_OPS, apply_node
from slth.targets import load_target
from slth.ticket.files import load_ticket


def layer_values(net, eff, x):
    """Outputs of every affine node of the target and of the ticket's effective form."""
    x = x.reshape(x.shape[0], *net.in_shape)
    def t64(a):
        return None if a is None else torch.as_tensor(a, dtype=torch.float64)

    vt, ve, out, k = {0: x}, {0: x}, {}, 0
    for i, nd in enumerate(net.nodes[1:], start=1):
        if nd.op in AFFINE_OPS:    # inputs are >= 0 (images, post-ReLU): G_hat's layer is P h + b
            e, k = eff[k], k + 1
            vt[i] = apply_node(nd, [vt[nd.inputs[0]]], t64(nd.weight), t64(nd.bias))
            ve[i] = apply_node(nd, [ve[nd.inputs[0]]], t64(e.pos.reshape(nd.weight.shape)),
                               t64(e.bias))
            out[i] = (vt[i].reshape(len(x), -1), ve[i].reshape(len(x), -1))
        else:
            vt[i] = apply_node(nd, [vt[j] for j in nd.inputs])
            ve[i] = apply_node(nd, [ve[j] for j in nd.inputs])
    return out


def ascend_layer(net, eff, i, what, starts, steps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(starts, net.in_dim, generator=g, dtype=torch.float64, requires_grad=True)
    best = 0.0
    for t in range(steps + 1):
        F, G = layer_values(net, eff, x)[i]
        obj = ((G - F) if what == "deviation" else F).abs().max(1).values
        best = max(best, float(obj.detach().max()))
        if t == steps:
            return best
        (grad,) = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            x += (0.1 * (1 - t / steps) + 0.002) * grad.sign()
            x.clamp_(0, 1)


def ascend_outputs(net, eff, starts, steps, seed) -> float:
    """Largest |G_hat - F| found by ascent on each output and sign separately (``starts``
    uniform points each, ``steps`` sign-gradient steps, the best point kept)."""
    g = torch.Generator().manual_seed(seed)
    last = max(i for i, nd in enumerate(net.nodes) if nd.op in AFFINE_OPS)
    best = 0.0
    for k in range(net.nodes[last].shape[0]):
        for sign in (1.0, -1.0):
            x = torch.rand(starts, net.in_dim, generator=g, dtype=torch.float64,
                           requires_grad=True)
            for t in range(steps + 1):
                F, G = layer_values(net, eff, x)[last]
                obj = sign * (G - F)[:, k]
                best = max(best, float(obj.detach().max()))
                if t == steps:
                    break
                (grad,) = torch.autograd.grad(obj.sum(), x)
                with torch.no_grad():
                    x += (0.1 * (1 - t / steps) + 0.002) * grad.sign()
                    x.clamp_(0, 1)
    return best


def tail_lp(tail, e0, k: int, sign: float) -> float:
    """max sign * D_out[k] over the tail's relaxation as a linear program (HiGHS): the same
    chords, intervals and chain input as ``certify._tail_upper``, with every layer's deviation
    a free variable within its bounds."""
    from scipy.optimize import linprog
    from scipy.sparse import bmat, diags, eye

    n_in = len(e0[0])
    # variables: e_0, then per layer j: D_j, and e_j when a ReLU follows
    blocks, lo, hi = [n_in], [e0[0]], [e0[1]]
    for j, t in enumerate(tail):
        blocks.append(len(t.l)); lo.append(t.dl); hi.append(t.dh)
        if j < len(tail) - 1:
            au, bu, al, bl = certify._chords(t)
            blocks.append(len(t.l))
            lo.append(np.minimum(al * t.dl + bl, al * t.dh + bl))
            hi.append(np.maximum(au * t.dl + bu, au * t.dh + bu))
    nb = len(blocks)
    A_ub, b_ub = [], []
    e_col = 0                                   # block of the e feeding the next layer
    for j, t in enumerate(tail):
        d_col = 1 + 2 * j
        row = [None] * nb
        row[d_col] = eye(len(t.l))
        row[e_col] = -t.P              # D_j - P_j e_{j-1} = (P_j - W_j) h + eb, h an interval
        G = t.P - t.W
        A_ub.append(row); b_ub.append(-(t.eb + np.minimum(G * t.hl, G * t.hu).sum(1)))
        A_ub.append([None if r is None else -r for r in row])
        b_ub.append(t.eb + np.maximum(G * t.hl, G * t.hu).sum(1))
        if j < len(tail) - 1:
            au, bu, al, bl = certify._chords(t)
            up = [None] * nb; up[d_col + 1] = eye(len(t.l)); up[d_col] = diags(-au)
            dn = [None] * nb; dn[d_col + 1] = -eye(len(t.l)); dn[d_col] = diags(al)
            A_ub += [up, dn]; b_ub += [bu, -bl]
            e_col = d_col + 1
    A = bmat(A_ub, format="csr")
    cost = np.zeros(sum(blocks))
    cost[sum(blocks[:-1]) + k] = -sign
    res = linprog(cost, A_ub=A, b_ub=np.concatenate(b_ub),
                  bounds=np.stack([np.concatenate(lo), np.concatenate(hi)], 1), method="highs")
    return float(-res.fun)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--ticket", required=True)
    ap.add_argument("--out", default="bench-cnn")
    ap.add_argument("--starts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-starts", type=int, default=32,
                    help="ascent per output and sign: starting points (0: skip)")
    ap.add_argument("--output-steps", type=int, default=300)
    ap.add_argument("--lp-outputs", type=int, default=2,
                    help="solve the tail's linear program for outputs 0..N-1, both signs")
    a = ap.parse_args()
    net, eff = load_target(a.target), load_ticket(a.ticket).effective()
    dom = certify.Domain("box")
    seen = {}
    real_tail_bound = certify._tail_bound

    def keep(tail, e0):
        seen["tail"], seen["e0"] = tail, e0      # tightened in place by _tail_bound
        return real_tail_bound(tail, e0)

    certify._tail_bound = keep
    det = certify.bound_details(net, eff, dom)
    certify._tail_bound = real_tail_bound
    forward = certify.bound_details(net, eff, dom, tail=False)
    affine = [i for i, nd in enumerate(net.nodes) if nd.op in AFFINE_OPS]
    rows = []
    for k, i in enumerate(affine):
        rows.append({
            "layer": f"{k}: {net.nodes[i].op} {list(net.nodes[i].shape)}",
            "deviation bound (forward)": forward["per_layer_deviation"][k],
            "deviation bound (with tail)": det["per_layer_deviation"][k],
            "deviation found": ascend_layer(net, eff, i, "deviation", a.starts, a.steps, a.seed),
            "target |z| found": ascend_layer(net, eff, i, "value", a.starts, a.steps, a.seed),
        })
        print(rows[-1], flush=True)
    parts = {}
    if "tail" in seen:
        tail, e0 = seen["tail"], seen["e0"]
        n = len(tail[-1].l)
        C = np.concatenate([np.eye(n), -np.eye(n)])
        split = {}
        certify._tail_upper(C, tail, len(tail) - 1, e0, parts=split)
        worst = int(np.argmax(sum(split.values())))
        parts = {k: float(v[worst]) for k, v in split.items()}
        res_lp = []
        for k in range(a.lp_outputs):
            for sign in (1.0, -1.0):
                C1 = np.zeros((1, n)); C1[0, k] = sign
                res_lp.append({"output": k, "sign": sign, "lp": tail_lp(tail, e0, k, sign),
                               "backward": float(certify._tail_upper(C1, tail, len(tail) - 1,
                                                                     e0)[0])})
                print(res_lp[-1], flush=True)
        for t, i in zip(tail, affine[-len(tail):]):
            rows[affine.index(i)]["target interval |z| (certified)"] = float(
                np.maximum(np.abs(t.l), np.abs(t.u)).max())
    found_out = (ascend_outputs(net, eff, a.output_starts, a.output_steps, a.seed)
                 if a.output_starts else None)
    res = {"certified_bound": det["certified_bound"], "output_error_found_per_output": found_out,
           "tail_lp": res_lp if "tail" in seen else [],
           "forward_bound": forward["certified_bound"], "layers": rows,
           "tail_decomposition_worst_output": parts, "unstable_units": det["unstable_units"],
           "ascent": {"starts": a.starts, "steps": a.steps, "seed": a.seed}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cnn_bound.json").write_text(json.dumps(res, indent=1))
    cols = list(rows[0]) + ["target interval |z| (certified)"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] if isinstance(r.get(c), str) else
                                 ("-" if r.get(c) is None else f"{r[c]:.3g}") for c in cols) + " |")
    print(f"\ncertified bound {det['certified_bound']:.4g} "
          f"(forward only {forward['certified_bound']:.4g})")
    for k, v in parts.items():
        print(f"  {k}: {v:.4g}")
    for r in res["tail_lp"]:
        print(f"  output {r['output']} sign {r['sign']:+g}: LP {r['lp']:.4g}, "
              f"backward {r['backward']:.4g}")
    if found_out is not None:
        print(f"largest output error found by ascent per output and sign: {found_out:.4g}")


if __name__ == "__main__":
    main()
