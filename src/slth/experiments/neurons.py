"""Malach et al.'s note on neuron-subnetworks, measured: weight pruning vs neuron pruning.

Target: one ReLU neuron f(x) = relu(<w*, x>), ||w*||_2 = 1, x uniform on the unit sphere of R^d.
G: a random 2-layer ReLU net of hidden width N, weights Uniform[-1, 1].

* Weight pruning keeps single weights: Pensia's construction on the 1-layer target w* with block
  size n = N // (2d) per half (hidden width 2 n d <= N), and Malach's with one gadget of K = N
  neurons. Their hidden layers compute <w*, x> approximately; the outer ReLU is applied to both.
* Neuron pruning keeps whole hidden neurons S, with a global scale c > 0 as Malach et al. allow:
  c sum_{j in S} u_j relu(<w_j, x>). That is a random-features model sum_j a_j relu(<w_j, x>)
  with a_j = c u_j [j in S], so the least-squares random-features fit over all a ("random
  features") errs no more than the best neuron subnetwork - a lower bound on neuron pruning.
  "neuron pruning" is a real subnetwork: rank the neurons by the cosine between u_j relu(<w_j, x>)
  and f on the training points, keep the top k with the best scale c (k and c fitted on them).

Error: relative RMSE ||g - f|| / ||f|| on 2048 held-out points; fits use 2N + 256 points.
Every draw comes from numpy generators seeded with (seed, d, N, purpose).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..constructions import malach, pensia
from ..errors import SlthError

METHODS = ("pensia", "malach", "random_features", "neuron_pruning")
LABELS = {"pensia": "weight pruning (Pensia)", "malach": "weight pruning (Malach)",
          "random_features": "random features (bound on neuron pruning)",
          "neuron_pruning": "neuron pruning (best top-k + scale)"}


@dataclass
class Settings:
    dims: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048])
    seeds: int = 3
    threshold: float = 0.1
    test_points: int = 2048

    def check(self):
        if any(d < 1 for d in self.dims) or any(w < 1 for w in self.widths):
            raise SlthError("--dims and --widths must be >= 1")
        if max(self.widths) > 8192:
            raise SlthError("--widths above 8192 make the random-features fit too large")
        if self.seeds < 1 or not self.threshold > 0:
            raise SlthError("--seeds must be >= 1 and --threshold > 0")


def sphere(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    x = rng.normal(size=(m, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _relerr(pred, y) -> float:
    return float(np.linalg.norm(pred - y) / np.linalg.norm(y))


def errors(d: int, N: int, seed: int, test_points: int = 2048) -> dict:
    """Relative test error of each method for input dimension d and hidden width N."""
    w_star = sphere(np.random.default_rng([seed, d, 0]), 1, d)[0]
    x_test = sphere(np.random.default_rng([seed, d, 1]), test_points, d)
    y_test = np.maximum(x_test @ w_star, 0)
    out = {}
    n = min(N // (2 * d), pensia.N_MAX)
    if n >= 1:
        e = pensia.solve_layer(w_star[None, :], None, n, seed, 0, coverage=False).effective()
        out["pensia"] = _relerr(_pair(e, x_test), y_test)
    else:
        out["pensia"] = None  # fewer than 2 neurons per input
    e = malach.solve_layer(w_star[None, :], None, N, seed, 0).effective()
    out["malach"] = _relerr(_pair(e, x_test), y_test)
    rng = np.random.default_rng([seed, d, N, 2])
    W, u = rng.uniform(-1, 1, (N, d)), rng.uniform(-1, 1, N)
    x = sphere(np.random.default_rng([seed, d, N, 3]), 2 * N + 256, d)
    y = np.maximum(x @ w_star, 0)
    phi, phi_t = np.maximum(x @ W.T, 0), np.maximum(x_test @ W.T, 0)
    gram = phi.T @ phi
    a = np.linalg.solve(gram + 1e-9 * np.trace(gram) / N * np.eye(N), phi.T @ y)
    out["random_features"] = _relerr(phi_t @ a, y_test)
    feat = phi * u
    cos = (feat.T @ y) / np.maximum(np.linalg.norm(feat, axis=0), 1e-300)
    order = np.argsort(-cos, kind="stable")
    h = np.cumsum(feat[:, order], axis=1)            # [M, k]: the top-k subnetworks, unscaled
    c = np.maximum(0.0, (h.T @ y) / np.maximum((h * h).sum(0), 1e-300))
    k = int(np.argmin(((h * c - y[:, None]) ** 2).sum(0)))
    out["neuron_pruning"] = _relerr(c[k] * (phi_t[:, order[:k + 1]] @ u[order[:k + 1]]), y_test)
    return out


def _pair(e, x) -> np.ndarray:
    """relu of what a widen/combine pair computes for a 1-output layer."""
    return np.maximum(np.maximum(x, 0) @ e.pos[0] + np.maximum(-x, 0) @ e.neg[0] + e.bias[0], 0)


def run(s: Settings, progress=None) -> dict:
    """All (d, N, seed) points; mean error over seeds and the width each method needs."""
    s.check()
    say = progress or (lambda done, total, msg: None)
    t0 = time.perf_counter()
    pts = [(d, N, seed) for d in s.dims for N in s.widths for seed in range(s.seeds)]
    raw = {}
    for i, (d, N, seed) in enumerate(pts):
        say(i, len(pts), f"d = {d}, N = {N}")
        raw[(d, N, seed)] = errors(d, N, seed, s.test_points)
    say(len(pts), len(pts), "done")
    mean = {m: {str(d): [_mean([raw[(d, N, k)][m] for k in range(s.seeds)]) for N in s.widths]
                for d in s.dims} for m in METHODS}
    need = {m: {str(d): next((N for N, e in zip(s.widths, mean[m][str(d)])
                              if e is not None and e <= s.threshold), None) for d in s.dims}
            for m in METHODS}
    return {"settings": asdict(s), "labels": LABELS, "mean_relative_error": mean,
            "width_needed": need, "seconds": time.perf_counter() - t0}


def _mean(v):
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def plot(res: dict, out_dir) -> list[str]:
    """neurons.png: error vs N per d (weight pruning | neuron pruning), width needed vs d."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["settings"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    cmap = plt.get_cmap("viridis")
    styles = {"pensia": "o-", "malach": "s--", "random_features": "o-", "neuron_pruning": "x:"}
    for ax, ms in ((axes[0], ("pensia", "malach")), (axes[1], ("random_features", "neuron_pruning"))):
        for i, d in enumerate(s["dims"]):
            for m in ms:
                pts = [(N, e) for N, e in zip(s["widths"], res["mean_relative_error"][m][str(d)])
                       if e is not None]
                if pts:
                    ax.plot(*zip(*pts), styles[m], color=cmap(i / max(1, len(s["dims"]) - 1)),
                            ms=3, label=f"d={d}" if m == ms[0] else None)
        ax.axhline(s["threshold"], color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden width N of the random net")
        ax.set_ylabel("relative error ||g - f|| / ||f||")
        ax.set_title(" / ".join(LABELS[m] for m in ms), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    top = max(s["widths"]) * 2
    for m in METHODS:
        xs, ys, hollow = [], [], []
        for d in s["dims"]:
            w = res["width_needed"][m][str(d)]
            xs.append(d)
            ys.append(w if w else top)
            hollow.append(w is None)
        line, = ax.plot(xs, ys, "-", label=LABELS[m])
        for x, y, h in zip(xs, ys, hollow):
            ax.plot(x, y, "o", color=line.get_color(), mfc="none" if h else line.get_color())
    ax.axhline(top, color="gray", lw=0.6, ls=":")
    ax.text(s["dims"][0], top * 1.08, f"hollow: not reached with N <= {max(s['widths'])}", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("input dimension d")
    ax.set_ylabel(f"hidden width needed for relative error <= {s['threshold']:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/neurons.png", dpi=110)
    plt.close(fig)
    return ["neurons.png"]
