"""How large must G be? The smallest size at which each construction meets eps, vs the theorems.

For a method, a target, a domain and a seed, the *size* is pensia's and orseau's block size n
(samples per half-block) or malach's gadget size K (neurons per target neuron), the same in every
layer; the smallest size whose certified bound is <= eps is found by growing and bisection
(``slth.pipeline.smallest``; to within ``rel_tol`` = 5%, exact below 20) on the effective
form alone (no G is materialised). Pensia's blocks are uniform here (no coverage plan), so that
its size is the theorem's n. Over S seeds
the size that meets eps with probability >= 1 - delta is the ceil((1 - delta) S)-th smallest
(S = ``seeds``, but ``pensia_seeds`` = 30 for pensia, whose search is cheap: an upper order
statistic of 10 integers is noisy).

Targets: (a) random nets within the theorems' assumptions (entries in [-1/sqrt(d_in),
1/sqrt(d_in)], spectral norm <= 1, no bias; domain: the unit ball), and (b) a 64-16-10 net
trained on digits (``slth train --data digits --hidden 16 --epochs 30``), each layer rescaled to
max |w| = 1/sqrt(d_in) as Malach et al. assume (products of two Uniform[-1, 1] weights cannot
reach |w| >= 1; F / constant has the same argmax, so the classifier is unchanged); domain
[0, 1]^64.
Then, at one eps, targets (a) of growing width d and depth l.

Fits: pensia and orseau sizes against log2(1/eps) (theory: logarithmic; the slope is the
measured constant C of n = a + C log2(1/eps)), malach's (and uniform orseau's) as a power law
n = C (1/eps)^p. Each fit is made over the whole grid (``fit``), over eps <= ``tail_eps``
(``fit_tail``: past pensia's coverage knee, where the size is set by precision) and, for the
per-seed median size, over the whole grid (``fit_median``); ``fit_ranges`` states each range.
Theory curves use each module's ``theory`` (constants taken as the papers
give them or 1).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..certify import Domain, bound_details
from ..constructions import get, names, pensia, settings_fields
from ..constructions.base import target_layers
from ..errors import SlthError
from ..pipeline import effective_at, smallest
from ..targets import MLP, load_target

METHODS = ("pensia", "orseau", "orseau-uniform", "malach")


@dataclass
class Settings:
    """Everything the study depends on (its JSON header)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    eps_grid: list[float] = field(default_factory=lambda: [10 ** (-k / 2) for k in range(2, 13)])
    seeds: int = 10
    pensia_seeds: int = 30        # pensia is cheap: more seeds steady its (1 - delta)-quantile
    delta: float = 0.1
    dims: list[int] = field(default_factory=lambda: [8, 8, 8])
    trained: bool = True
    target: str | None = None     # a target file (any network slth reads, e.g. a CNN), box domain
    sweep_eps: float = 0.01
    sweep_d: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    sweep_depth: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    max_params: int = 20_000_000  # malach: largest G tried
    orseau_n_max: int = 2048
    max_subsetsum: int = 28       # burkholz: largest rho tried
    rel_tol: float = 0.05         # sizes are found to within 5% (exact below 20)
    tail_eps: float = 0.01        # second fit over eps <= this (the asymptotic regime)
    workers: int = 2
    target_seed: int = 0

    def seeds_for(self, method: str) -> int:
        """Seeds per point for ``method`` (pensia: ``pensia_seeds``, 0 meaning ``seeds``)."""
        return self.pensia_seeds or self.seeds if method == "pensia" else self.seeds

    def check(self):
        bad = [m for m in self.methods if m not in names()]
        if bad:
            raise SlthError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(names())}")
        if not self.methods:
            raise SlthError("--methods is empty; give e.g. pensia,orseau,malach")
        if any(not e > 0 for e in self.eps_grid) or not self.sweep_eps > 0:
            raise SlthError(f"every eps must be > 0, got {self.eps_grid}")
        if self.seeds < 1:
            raise SlthError(f"--seeds must be >= 1, got {self.seeds}")
        if self.pensia_seeds < 0:
            raise SlthError(f"--pensia-seeds must be >= 0 (0: same as --seeds), got {self.pensia_seeds}")
        if not 0 < self.delta < 1:
            raise SlthError(f"--delta must be in (0, 1), got {self.delta}")
        if any(d < 1 for d in self.dims + self.sweep_d) or any(l < 1 for l in self.sweep_depth):
            raise SlthError("widths and depths must be >= 1")
        if self.workers < 1:
            raise SlthError(f"--workers must be >= 1, got {self.workers}")


# ------------------------------------------------------------------------------ targets
def assumption_target(dims: list[int], seed: int = 0) -> MLP:
    """Random bias-free target within Malach's assumptions: |W_ij| <= 1/sqrt(d_in), ||W||_2 <= 1."""
    rng = np.random.default_rng([seed, *dims])
    ws = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        W = rng.uniform(-1, 1, (d_out, d_in)) / math.sqrt(d_in)
        ws.append(W / max(1.0, np.linalg.norm(W, 2)))
    return MLP(ws, [None] * len(ws))


def malach_scaled(mlp: MLP) -> MLP:
    """Each layer scaled so its largest |weight| is 1/sqrt(d_in) (Malach's ||W||_inf <= 1/sqrt(n)).
    For a bias-free net this is F / constant: the same classifier (argmax)."""
    if mlp.has_bias:
        raise SlthError("rescaling keeps the classifier only for bias-free targets; "
                        "train the target with --no-bias")
    return MLP([W / np.abs(W).max() / math.sqrt(W.shape[1]) for W in mlp.weights],
               [None] * mlp.depth, list(mlp.names))


def digits_target(seed: int = 0) -> tuple[MLP, str]:
    """The study's trained target (b): 64-16-10 on digits (cached), ``malach_scaled``."""
    from ..targets import default_target

    mlp, desc = default_target("digits", hidden=(16,), epochs=30, seed=seed)
    return malach_scaled(mlp), desc + "; layers rescaled to max |w| = 1/sqrt(d_in)"


# ------------------------------------------------------------------------------ one method
def _method(method: str, target: MLP, eps: float | None, s: "Settings | None" = None):
    """The registered method, configured for the target (malach: the study's --max-params;
    pensia: uniform blocks, without coverage, so that the size is the theorem's n)."""
    fields = {f.name for f in settings_fields(method)}
    opts = {"max_params": s.max_params} if s is not None and "max_params" in fields else {}
    if "coverage" in fields:
        opts["coverage"] = False
    return get(method, **opts).configure(target, eps)


def effective(method: str, target: MLP, size: int, seed: int, eps: float,
              threads: int | None = None):
    """Effective layers of ``method``'s ticket at a uniform size (eps only sets orseau's range)."""
    return effective_at(target, _method(method, target, eps), [size] * target.depth, seed,
                        threads)


def random_params(method: str, target: MLP, size: int) -> int:
    return _method(method, target, None).g_params(target, [size] * target.depth)


def hidden_width(method: str, target: MLP, size: int) -> int:
    """Width of G's first hidden layer."""
    m = _method(method, target, None)
    return m.tensors(target_layers(target)[0], m.layer_sizes([size] * target.depth)[0])[0].shape[0]


def theory_size(method: str, target: MLP, eps: float, delta: float) -> float | None:
    """The theorem's size (largest over layers), or None where it has none."""
    try:
        m = _method(method, target, eps)
    except SlthError:   # the method refuses this target
        return None
    if "delta" in {f.name for f in settings_fields(method)}:
        m = get(method, delta=delta).configure(target, eps)
    ns = m.theory(target, eps).get("theory_" + m.size.key)
    return None if not ns or None in ns else float(max(ns))


def size_limit(method: str, target: MLP, s: Settings) -> int:
    if method == "pensia":
        return pensia.N_MAX
    if get(method).size.growth == "double":
        return s.orseau_n_max
    hi = _method(method, target, None, s).size_range(target)[1]
    # the exact SubsetSum's time doubles every 2 coefficients: other exact methods stop here
    return min(hi, s.max_subsetsum) if get(method).work == "SubsetSum" else hi


def sizes_over_eps(method: str, target: MLP, domain: Domain, eps_grid: list[float], seed: int,
                   s: Settings) -> list[int | None]:
    """Smallest size meeting each eps (grid in decreasing order) for one seed; None past the
    method's limit. Only hyperbolic orseau's G depends on eps (its range): the others' bounds
    are cached across eps. Each eps starts from the last size, growing in small steps."""
    cache: dict = {}
    hi = size_limit(method, target, s)

    def ok(size: int, eps: float) -> bool:
        key = (size, eps if method == "orseau" else None)
        if key not in cache:
            cache[key] = bound_details(target, effective(method, target, size, seed, eps,
                                                         1 if s.workers > 1 else None),
                                       domain)["certified_bound"]
        return cache[key] <= eps

    out, prev, prev_eps = [], None, None
    for eps in eps_grid:
        if prev is None and out:  # a larger eps was already out of reach
            out.append(None)
            continue
        growth = get(method).size.growth
        if prev is None:
            start, lo = get(method).size.start, 1
        else:  # smaller eps: never below the last size; a "power" size grows like 1/eps
            lo = prev
            start = max(prev, math.ceil(prev * prev_eps / eps * 0.7)) if growth == "power" else prev
        grow = {"log": 1.0, "double": 1.15}.get(growth, 1.3) if prev else 1.5
        got = smallest(lambda k: ok(k, eps), start, hi, lo=lo, grow=grow, rel_tol=s.rel_tol)
        out.append(got)
        prev, prev_eps = got, eps
    return out


def _task(args):
    method, target, domain, eps_grid, seed, s = args
    t0 = time.perf_counter()
    try:
        sizes = sizes_over_eps(method, target, domain, eps_grid, seed, s)
    except SlthError:   # a method that refuses this target (malach on a convolution)
        sizes = [None] * len(eps_grid)
    return sizes, time.perf_counter() - t0


def quantile(sizes: list[int | None], delta: float) -> int | None:
    """Smallest size that meets eps for a fraction >= 1 - delta of the seeds (None = out of reach)."""
    need = math.ceil((1 - delta) * len(sizes) - 1e-9)
    ok = sorted(v for v in sizes if v is not None)
    return ok[need - 1] if len(ok) >= need else None


# ------------------------------------------------------------------------------ fits
def fit_log(x: list[float], n: list[float]) -> dict | None:
    """n = a + C log2(x): least squares; R^2."""
    pts = [(math.log2(a), b) for a, b in zip(x, n) if b is not None]
    if len(pts) < 2:
        return None
    X, Y = np.array(pts).T
    C, a = np.polyfit(X, Y, 1)
    return {"a": float(a), "C": float(C), "r2": _r2(Y, a + C * X), "points": len(pts)}


def fit_power(x: list[float], n: list[float]) -> dict | None:
    """n = C x^p (log-log least squares); R^2 in log space."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, n) if b is not None and b > 0]
    if len(pts) < 2:
        return None
    X, Y = np.array(pts).T
    p, lc = np.polyfit(X, Y, 1)
    return {"C": float(math.exp(lc)), "p": float(p), "r2": _r2(Y, lc + p * X), "points": len(pts)}


def _r2(y, yhat) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / ss if ss > 0 else 1.0


def fits(x: list[float], n: list[float]) -> dict:
    return {"log": fit_log(x, n), "power": fit_power(x, n)}


# ------------------------------------------------------------------------------ the study
def run(s: Settings, progress=None) -> dict:
    """Run the whole study; returns the JSON-able result (``width.json``)."""
    s.check()
    say = progress or (lambda done, total, msg: None)
    t0 = time.perf_counter()
    grid = sorted(s.eps_grid, reverse=True)
    targets = {"assumption": (assumption_target(s.dims, s.target_seed), Domain("ball"),
                              f"{'-'.join(map(str, s.dims))} random, |W_ij| <= 1/sqrt(d_in), "
                              "||W||_2 <= 1, unit ball")}
    if s.trained:
        mlp, desc = digits_target(s.target_seed)
        targets["digits"] = (mlp, Domain("box"), desc + "; box [0,1]^64")
    if s.target:
        net = load_target(s.target)
        targets["file"] = (net, Domain("box"), f"{Path(s.target).name}: {net.depth} layers, "
                                               f"{net.n_params:,} weights; box [0,1]^{net.in_dim}")
    sweeps = {"d": [(d, assumption_target([d, d, d], s.target_seed)) for d in s.sweep_d],
              "depth": [(l, assumption_target([s.dims[0]] * (l + 1), s.target_seed))
                        for l in s.sweep_depth]}
    tasks, keys = [], []
    for name, (mlp, dom, _) in targets.items():
        for m in s.methods:
            for seed in range(s.seeds_for(m)):
                tasks.append((m, mlp, dom, grid, seed, s))
                keys.append(("eps", name, m, seed))
    for sweep, items in sweeps.items():
        for v, mlp in items:
            for m in s.methods:
                for seed in range(s.seeds_for(m)):
                    tasks.append((m, mlp, Domain("ball"), [s.sweep_eps], seed, s))
                    keys.append((sweep, v, m, seed))
    results = {}
    seconds: dict[str, float] = {m: 0.0 for m in s.methods}
    say(0, len(tasks), "searching sizes")
    if s.workers > 1:
        # spawn: numba's OpenMP threads make fork unsafe
        with ProcessPoolExecutor(s.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            for i, (key, res) in enumerate(zip(keys, ex.map(_task, tasks))):
                results[key] = res[0]
                seconds[key[2]] += res[1]
                say(i + 1, len(tasks), f"{key[2]} on {key[1]}")
    else:
        for i, (key, task) in enumerate(zip(keys, tasks)):
            res = _task(task)
            results[key] = res[0]
            seconds[key[2]] += res[1]
            say(i + 1, len(tasks), f"{key[2]} on {key[1]}")

    out = {"settings": asdict(s), "targets": {}, "eps": {}, "d": {}, "depth": {}}
    for name, (mlp, dom, desc) in targets.items():
        out["targets"][name] = {"dims": getattr(mlp, "dims", None), "domain": dom.as_dict(),
                                "description": desc, "params": mlp.n_params}
        out["eps"][name] = {m: _eps_summary(m, mlp, grid, [results[("eps", name, m, seed)]
                                                            for seed in range(s.seeds_for(m))], s)
                            for m in s.methods}
    for sweep, items in sweeps.items():
        for m in s.methods:
            vals = [v for v, _ in items]
            size = [quantile([results[(sweep, v, m, seed)][0] for seed in range(s.seeds_for(m))],
                             s.delta)
                    for v in vals]
            out[sweep][m] = {
                sweep: vals, "eps": s.sweep_eps, "seeds": s.seeds_for(m), "size": size,
                "random_params": [random_params(m, t, k) if k else None for (_, t), k in zip(items, size)],
                "hidden_width": [hidden_width(m, t, k) if k else None for (_, t), k in zip(items, size)],
                "theory_size": [theory_size(m, t, s.sweep_eps, s.delta) for _, t in items],
                "fit": fits(vals, size),
            }
    out["seconds_per_method"] = seconds
    out["seconds"] = time.perf_counter() - t0
    return out


def _eps_summary(m: str, mlp, grid: list[float], per_seed: list[list], s: Settings) -> dict:
    """One method on one target over the eps grid: the (1 - delta)-quantile size over the seeds,
    its random parameters and width, the theory's size, and the fits."""
    size = [quantile([p[j] for p in per_seed], s.delta) for j in range(len(grid))]
    median = [quantile([p[j] for p in per_seed], 0.5) for j in range(len(grid))]
    tail = [e <= s.tail_eps for e in grid]
    return {
        "eps": grid, "seeds": len(per_seed), "size": size, "size_per_seed": per_seed,
        "size_median": median,
        "random_params": [random_params(m, mlp, k) if k else None for k in size],
        "hidden_width": [hidden_width(m, mlp, k) if k else None for k in size],
        "theory_size": [theory_size(m, mlp, e, s.delta) for e in grid],
        "fit": fits([1 / e for e in grid], size),
        "fit_tail": fits([1 / e for e, t in zip(grid, tail) if t],
                         [k for k, t in zip(size, tail) if t]),
        # the per-seed median (delta = 0.5) over the whole grid: the typical seed's size
        "fit_median": fits([1 / e for e in grid], median),
        "fit_ranges": {"fit": [max(grid), min(grid)],
                       "fit_tail": [max([e for e, t in zip(grid, tail) if t], default=None),
                                    min(grid)],
                       "fit_median": [max(grid), min(grid)]},
    }


def summary_rows(res: dict) -> list[dict]:
    """One row per (target, method): the eps fit that the theory predicts, and the constant."""
    rows = []
    tail = res["settings"]["tail_eps"]
    for name, per in res["eps"].items():
        for m, r in per.items():
            f, ft, fm = r["fit"], r["fit_tail"], r["fit_median"]
            reached = [e for e, k in zip(r["eps"], r["size"]) if k is not None]
            rows.append({"target": name, "method": m, "eps_reached": min(reached) if reached else None,
                         "points": sum(k is not None for k in r["size"]),
                         "points_tail": sum(k is not None for e, k in zip(r["eps"], r["size"]) if e <= tail),
                         "log_C": f["log"] and f["log"]["C"], "log_a": f["log"] and f["log"]["a"],
                         "log_r2": f["log"] and f["log"]["r2"],
                         "log_C_tail": ft["log"] and ft["log"]["C"],
                         "log_r2_tail": ft["log"] and ft["log"]["r2"],
                         "seeds": r["seeds"],
                         "log_C_median": fm["log"] and fm["log"]["C"],
                         "log_r2_median": fm["log"] and fm["log"]["r2"],
                         "power_p": f["power"] and f["power"]["p"],
                         "power_r2": f["power"] and f["power"]["r2"]})
    return rows


# ------------------------------------------------------------------------------ plots
COLORS = {"pensia": "tab:blue", "orseau": "tab:green", "orseau-uniform": "tab:olive",
          "malach": "tab:red", "burkholz": "tab:purple"}


def plot(res: dict, out_dir) -> list[str]:
    """eps.png (size and G's hidden width vs eps, per target), d.png, depth.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(res["eps"])
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.5 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        tgt = res["targets"][name]
        ax, axw = axes[row]
        for m, r in res["eps"][name].items():
            f = r["fit"]["power" if m in ("malach", "orseau-uniform") else "log"]
            lab = (f"{m}: " + (f"n ~ {f['C']:.2g} (1/eps)^{f['p']:.2f}, R2 {f['r2']:.3f}"
                               if "p" in f else f"n = {f['a']:.1f} + {f['C']:.2f} log2(1/eps), "
                                                  f"R2 {f['r2']:.3f}")) if f else m
            _line(ax, r["eps"], r["size"], m, lab)
            _line(ax, r["eps"], r["theory_size"], m, None, theory=True)
            _line(axw, r["eps"], r["hidden_width"], m, m)
        eps = np.array(next(iter(res["eps"][name].values()))["eps"])
        if tgt.get("dims"):     # an MLP: its first hidden width d
            axw.plot(eps, tgt["dims"][1] * np.log2(1 / eps), "k:", label="Pensia lower bound "
                     "d log2(1/eps) (constant 1)")
        for a, yl in ((ax, "size (n per half-block; malach: K per gadget)"),
                      (axw, "G's first hidden width")):
            a.set_xscale("log")
            a.set_yscale("log")
            a.invert_xaxis()
            a.set_xlabel("eps (certified bound)")
            a.set_ylabel(yl)
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=7)
        shape = "-".join(map(str, tgt["dims"])) if tgt.get("dims") else tgt["description"]
        ax.set_title(f"{name}: {shape} (dashed: theory)", fontsize=9)
        axw.set_title(f"{name}: width of G", fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, out_dir, "eps.png"))
    for sweep, xl in (("d", "target width d"), ("depth", "target depth l")):
        if not res[sweep]:
            continue
        fig, (ax, axw) = plt.subplots(1, 2, figsize=(12, 4.5))
        for m, r in res[sweep].items():
            f = r["fit"]["power"]
            _line(ax, r[sweep], r["size"], m, f"{m}: size ~ {sweep}^{f['p']:.2f}" if f else m)
            _line(ax, r[sweep], r["theory_size"], m, None, theory=True)
            _line(axw, r[sweep], r["hidden_width"], m, m)
        if sweep == "d":
            x = np.array(next(iter(res[sweep].values()))["d"], float)
            e = next(iter(res[sweep].values()))["eps"]
            axw.plot(x, x * math.log2(1 / e), "k:", label="Pensia lower bound d log2(1/eps)")
        for a, yl in ((ax, "size (dashed: theory)"), (axw, "G's first hidden width")):
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_xlabel(f"{xl} (eps = {next(iter(res[sweep].values()))['eps']:g})")
            a.set_ylabel(yl)
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, out_dir, f"{sweep}.png"))
    return files


def _line(ax, x, y, m, label, theory=False):
    pts = [(a, b) for a, b in zip(x, y) if b is not None]
    if pts:
        X, Y = zip(*pts)
        ax.plot(X, Y, "--" if theory else "o-", color=COLORS.get(m), label=label,
                alpha=0.6 if theory else 1.0, lw=1 if theory else 1.5, ms=4)


def _save(fig, out_dir, name) -> str:
    import matplotlib.pyplot as plt
    path = f"{out_dir}/{name}"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return name
