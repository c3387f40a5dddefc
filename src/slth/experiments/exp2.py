"""Pensia et al.'s Experiment 2: is a ticket easier to find in the redundant structure than in a
wide random network with as many weights?

For every model (FC2, FC4, LeNet5) the sweep trains the dense base network normally (the
"trained" baseline) and runs edge-popup on three random structures (redundant-linear,
redundant-relu, wide; see ``slth.search.models``) at every density of the grid. Results go to
``out/results.json`` after every run, so a killed sweep resumes where it stopped: finished runs
(keyed by model, structure and density) are read back, never redone, and a run is a pure
function of the settings and its key (its seed is derived from --seed, the model and the
structure, so every density of one structure searches the same G). One PNG per model plots test
accuracy against the number of remaining (kept) FC weights, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SlthError
from ..jsonio import write_json
from ..search.models import build, check_choice, MODELS
from ..search.supermask import check_density
from ..search.train import SearchConfig, fit

STRUCTURES = ("redundant-linear", "redundant-relu", "wide")
PAPER_SPARSITY_GRID = (0, .01, .02, .025, .05, .1, .25, .5, .75, .9, .95, .975, .98, .99)
PAPER_DENSITY_GRID = tuple(round(1 - s, 4) for s in PAPER_SPARSITY_GRID)
PAPER = {
    "data": "MNIST",
    "sparsity_grid": list(PAPER_SPARSITY_GRID),
    "dense_trained_accuracy": {"fc2": 0.9860, "fc4": 0.9881, "lenet5": 0.9844},
    "examples": [
        {"model": "fc2", "structure": "redundant-linear", "sparsity": 0.5, "accuracy": 0.9797},
        {"model": "fc2", "structure": "wide", "sparsity": 0.5, "accuracy": 0.9817},
        {"model": "lenet5", "structure": "redundant-linear", "sparsity": 0.25, "accuracy": 0.9830},
        {"model": "lenet5", "structure": "wide", "sparsity": 0.25, "accuracy": 0.9734},
    ],
}


@dataclass
class Exp2Settings:
    """Everything a run's result depends on besides (model, structure, density)."""

    data: str = "digits"
    epochs: int = 10
    seed: int = 0
    redundancy: int = 5
    hidden: int = 500
    scope: str = "layer"
    lr: float | None = None
    batch_size: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


def run_key(model: str, structure: str, density: float | None) -> str:
    return f"{model}/{structure}" + ("" if density is None else f"/{density:.6g}")


def run_seed(seed: int, model: str, structure: str) -> int:
    """A seed per (model, structure): the same G for every density of a structure."""
    h = hashlib.sha256(f"{seed}/{model}/{structure}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def plan(models, densities) -> list[tuple[str, str, float | None]]:
    """(model, structure, density) of every run, trained baselines first per model."""
    runs = []
    for m in models:
        runs.append((m, "trained", None))
        runs += [(m, s, d) for d in densities for s in STRUCTURES]
    return runs


def check_plan(models, densities) -> None:
    if not models:
        raise SlthError("--models is empty; give some of " + ", ".join(MODELS))
    for m in models:
        check_choice(m, MODELS, "model")
    for d in densities:
        check_density(d, "every density of --density-grid")


def one_run(data, st: Exp2Settings, model: str, structure: str, density: float | None,
            progress=None) -> dict:
    """Train one network; returns its JSON record."""
    seed = run_seed(st.seed, model, structure)
    net = build(model, structure, data.image_shape, data.n_classes, density=density or 1.0,
                scope=st.scope, r=st.redundancy, hidden=st.hidden, seed=seed)
    cfg = SearchConfig(epochs=st.epochs, lr=st.lr, batch_size=st.batch_size, seed=seed)
    hist = fit(net, data.x_train, data.y_train, cfg, x_test=data.x_test, y_test=data.y_test,
               progress=progress)
    return {
        "model": model, "structure": structure,
        "density": density, "sparsity": None if density is None else 1 - density,
        "widths": net.info["widths"], "params": net.searched_params,
        "remaining_params": net.kept_params,
        "accuracy": hist["test_accuracy"][-1],
        "test_accuracy": hist["test_accuracy"], "train_loss": hist["train_loss"],
        "seconds": hist["seconds"], "samples_per_s": hist["samples_per_s"], "lr": hist["lr"],
        "seed": seed,
    }


def load_state(path: Path, st: Exp2Settings) -> dict:
    """The results file's content if it exists with the same settings, else a fresh state."""
    if not path.exists():
        return {"settings": st.as_dict(), "paper": PAPER, "runs": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SlthError(f"{path} exists but is not readable JSON ({e}); remove it or choose "
                        "another --out") from None
    old = state.get("settings")
    if old != st.as_dict():
        diff = ", ".join(f"{k}: {old.get(k) if old else None} vs {v}" for k, v in st.as_dict().items()
                         if not old or old.get(k) != v)
        raise SlthError(f"{path.parent} holds a sweep with other settings ({diff}); resume it "
                        "with the same settings or choose another --out")
    state.setdefault("runs", {})
    return state


def sweep(data, st: Exp2Settings, models, densities, out: Path, progress=None,
          on_run=None) -> dict:
    """Run (or resume) the sweep into ``out``; returns the results dict.

    progress(message, runs_done, runs_total, steps_done, steps_total) is called as work
    proceeds; on_run(key, record) after each finished run (after it is saved).
    """
    check_plan(models, densities)
    out = Path(out)
    path = out / "results.json"
    state = load_state(path, st)
    out.mkdir(parents=True, exist_ok=True)
    todo = plan(models, densities)
    per_run_steps = st.epochs * ((len(data.x_train) + st.batch_size - 1) // st.batch_size)
    t0 = time.perf_counter()
    for i, (m, s, d) in enumerate(todo):
        key = run_key(m, s, d)
        if key in state["runs"]:
            continue
        say = (lambda e, k, l, key=key, i=i: progress(key, i, len(todo), k, per_run_steps)) \
            if progress else None
        if progress:
            progress(key, i, len(todo), 0, per_run_steps)
        state["runs"][key] = one_run(data, st, m, s, d, progress=say)
        write_json(path, state, indent=1)
        if on_run:
            on_run(key, state["runs"][key])
    state["summary"] = summarise(state, models, densities)
    state["sweep_seconds_this_call"] = time.perf_counter() - t0
    write_json(path, state, indent=1)
    for m in models:
        plot_model(state, m, out / f"{m}.png")
    return state


def summarise(state: dict, models, densities) -> list[dict]:
    """Per model: the trained baseline and, per structure, the best run of this grid."""
    rows = []
    for m in models:
        base = state["runs"].get(run_key(m, "trained", None))
        for s in STRUCTURES:
            runs = [state["runs"][run_key(m, s, d)] for d in densities
                    if run_key(m, s, d) in state["runs"]]
            if not runs:
                continue
            best = max(runs, key=lambda r: r["accuracy"])
            rows.append({"model": m, "structure": s, "best_accuracy": best["accuracy"],
                         "best_density": best["density"],
                         "trained_accuracy": base["accuracy"] if base else None})
    return rows


def plot_model(state: dict, model: str, path: Path) -> None:
    """Accuracy (%) vs remaining FC weights (log scale): the three structures and the dense
    trained baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in state["runs"].values() if r["model"] == model]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"redundant-linear": ("o-", "C0", "redundant, linear"),
              "redundant-relu": ("s-", "C1", "redundant, ReLU"),
              "wide": ("^-", "C2", "wide random net")}
    for s, (fmt, color, label) in styles.items():
        pts = sorted((r["remaining_params"], 100 * r["accuracy"]) for r in runs if r["structure"] == s)
        if pts:
            ax.plot(*zip(*pts), fmt, color=color, label=label, ms=4)
    base = next((r for r in runs if r["structure"] == "trained"), None)
    if base:
        ax.axhline(100 * base["accuracy"], color="k", ls="--", lw=1,
                   label=f"dense trained ({base['params']:,} weights)")
        ax.plot([base["params"]], [100 * base["accuracy"]], "k*", ms=9)
    st = state["settings"]
    ax.set_xscale("log")
    ax.set_xlabel("remaining (kept) FC weights")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model.upper()} on {st['data']}: edge-popup, {st['epochs']} epochs, "
                 f"r = {st['redundancy']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
