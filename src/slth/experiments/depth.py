"""What depth costs in width: G of depth 2l (Pensia, Orseau) against depth l+1 (Burkholz).

For targets of depth l = 1 ... L - (a) random within the theorems' assumptions (width ``width``,
|W_ij| <= 1/sqrt(d_in), ||W||_2 <= 1, unit ball) and (b) ReLU nets of l layers trained on the
digits (hidden width 16, box [0, 1]^64) - and each eps of ``eps_grid``, every method builds its
ticket with ``--eps`` (the smallest sizes whose certified bound is <= eps, the driver's shared
search) and we record the depth of G, its random and active parameters, the time and the
certified bound, beside the theorem's size (``theory_random_params``).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from ..certify import Domain
from ..constructions import get, names
from ..errors import SlthError
from ..pipeline import construct
from .width import assumption_target

METHODS = ("pensia", "orseau", "burkholz")


@dataclass
class Settings:
    """Everything the study depends on (its JSON header)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    eps_grid: list[float] = field(default_factory=lambda: [1e-2, 1e-3])
    width: int = 8
    trained: bool = True
    trained_hidden: int = 16
    seed: int = 0
    workers: int = 2
    # the exact SubsetSum's time doubles with every 2 coefficients (meet in the middle): the
    # study stops pensia and burkholz there and reports "not reached" beyond
    max_subsetsum: int = 28

    def check(self):
        bad = [m for m in self.methods if m not in names()]
        if bad or not self.methods:
            raise SlthError(f"--methods: unknown {', '.join(bad) or '(empty)'}; choose from "
                            f"{', '.join(names())}")
        if not self.depths or any(l < 1 for l in self.depths):
            raise SlthError(f"--depths must be integers >= 1, got {self.depths}")
        if not self.eps_grid or any(not e > 0 for e in self.eps_grid):
            raise SlthError(f"every eps must be > 0, got {self.eps_grid}")
        if self.width < 1 or self.trained_hidden < 1 or self.workers < 1 or self.max_subsetsum < 1:
            raise SlthError("--width, --trained-hidden, --workers and --max-subsetsum must be >= 1")


def trained_target(depth: int, hidden: int, seed: int = 0):
    """A ReLU net of ``depth`` layers trained on the digits (cached), and its description."""
    from ..targets import default_target

    return default_target("digits", hidden=(hidden,) * (depth - 1), epochs=30, seed=seed)


def targets(s: Settings) -> list[tuple[str, int, object, Domain]]:
    """(kind, depth, target, domain) for every target of the study."""
    out = [("random", l, assumption_target([s.width] * (l + 1), s.seed), Domain("ball"))
           for l in s.depths]
    if s.trained:
        out += [("digits", l, trained_target(l, s.trained_hidden, s.seed)[0], Domain("box"))
                for l in s.depths]
    return out


def one(args) -> dict:
    """One (target, method, eps): the ticket by --eps, its sizes and costs."""
    kind, depth, target, dom, method, eps, seed, cap = args
    t0 = time.perf_counter()
    row = {"target": kind, "depth": depth, "method": method, "eps": eps,
           "target_params": target.n_params}
    try:
        con = construct(target, method, eps=eps, domain=dom, seed=seed, threads=1,
                        max_size=cap if get(method).work == "SubsetSum" else None)
    except SlthError as e:
        return {**row, "refused": str(e), "seconds": time.perf_counter() - t0}
    t = con.ticket
    info = con.info
    size_key = next(k for k in ("n_per_layer", "rho_per_layer", "samples_per_layer") if k in info)
    row.update(g_depth=len(t.layers), random_params=t.random_params,
               active_params=t.active_params, size=info[size_key], size_key=size_key,
               theory_size=info.get("theory_" + size_key),
               theory_random_params=info.get("theory_random_params"),
               certified_bound=con.built.certificate["certified_bound"],
               seconds=time.perf_counter() - t0)
    return row


def run(s: Settings, progress=None) -> dict:
    """Run the study; returns the JSON-able result (``depth.json``)."""
    s.check()
    say = progress or (lambda done, total, msg: None)
    t0 = time.perf_counter()
    jobs = [(kind, l, tgt, dom, m, e, s.seed, s.max_subsetsum) for kind, l, tgt, dom in targets(s)
            for e in s.eps_grid for m in s.methods]
    rows = []
    say(0, len(jobs), "constructing")
    if s.workers > 1:
        # spawn: numba's threads make fork unsafe
        with ProcessPoolExecutor(s.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            for i, r in enumerate(ex.map(one, jobs)):
                rows.append(r)
                say(i + 1, len(jobs), f"{r['method']} on {r['target']} depth {r['depth']}")
    else:
        for i, job in enumerate(jobs):
            rows.append(one(job))
            say(i + 1, len(jobs), f"{job[4]} on {job[0]} depth {job[1]}")
    return {"settings": asdict(s), "rows": rows, "seconds": time.perf_counter() - t0}


def plot(res: dict, out_dir) -> str:
    """depth.png: random parameters of G against the target's depth, per method, per target
    kind and eps (dashed: the theorem's)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if not r.get("refused")]
    kinds = sorted({r["target"] for r in res["rows"]})
    eps = sorted({r["eps"] for r in res["rows"]}, reverse=True)
    fig, axes = plt.subplots(len(kinds), len(eps), figsize=(5.5 * len(eps), 4.2 * len(kinds)),
                             squeeze=False)
    colors = {"pensia": "tab:blue", "orseau": "tab:green", "burkholz": "tab:purple"}
    for a, kind in enumerate(kinds):
        for b, e in enumerate(eps):
            ax = axes[a][b]
            for m in res["settings"]["methods"]:
                pts = sorted((r["depth"], r["random_params"], r.get("theory_random_params"),
                              r["g_depth"]) for r in rows
                             if r["target"] == kind and r["eps"] == e and r["method"] == m)
                if not pts:
                    continue
                c = colors.get(m)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c,
                        label=f"{m} (G depth {pts[-1][3]} at l = {pts[-1][0]})")
                th = [(p[0], p[2]) for p in pts if p[2]]
                if th:
                    ax.plot(*zip(*th), "--", color=c, alpha=0.5, lw=1)
            ax.set_yscale("log")
            ax.set_xlabel("target depth l")
            ax.set_ylabel("random parameters of G")
            ax.set_title(f"{kind} targets, eps = {e:g} (dashed: theory)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/depth.png", dpi=110)
    plt.close(fig)
    return "depth.png"
