"""``slth demo``: the whole idea in a few minutes on the embedded digits data."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import click
from rich.table import Table

from . import app
from ._common import console, progress_bar


@app.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("slth-demo"),
              show_default=True, help="Folder for the demo's outputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random draw.")
def demo(out, seed):
    """Train a small target on the embedded digits data and approximate every one of its
    weights by an exact SubsetSum over random coefficients."""
    from ..data import load_dataset
    from ..subsetsum import solve
    from ..targets import TrainConfig, accuracy, train_target

    data = load_dataset("digits")
    cfg = TrainConfig(hidden=(32,), bias=False, epochs=30, lr=0.05, seed=seed)
    with progress_bar(transient=True) as bar:
        task = bar.add_task("training a 64-32-10 target on digits", total=cfg.epochs)
        mlp, acc = train_target(data, cfg, progress=lambda e, l: bar.update(task, completed=e))
    console.print(f"target {'-'.join(map(str, mlp.dims))}: test accuracy {acc:.2%}")
    rng = np.random.default_rng(seed)
    table = Table(title="every target weight as a SubsetSum of n Uniform[-1,1] coefficients")
    for col in ("n", "max |error|", "mean kept", "accuracy of approximated net", "time"):
        table.add_column(col, justify="right")
    for n in (4, 8, 12, 16, 21):
        t0 = time.perf_counter()
        approx = []
        kept = 0
        for w in mlp.weights:
            r = solve(rng.uniform(-1, 1, (w.size, n)), w.ravel())
            approx.append(r.sums.reshape(w.shape))
            kept += r.kept
        errs = max(float(np.abs(a - w).max()) for a, w in zip(approx, mlp.weights))
        from ..targets import MLP
        approx_acc = accuracy(MLP(approx, mlp.biases).forward, data.x_test, data.y_test)
        table.add_row(str(n), f"{errs:.1e}", f"{kept / mlp.n_params:.1f}", f"{approx_acc:.2%}",
                      f"{time.perf_counter() - t0:.2f} s")
    console.print(table)
