"""``slth reproduce pensia-exp1``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import reproduce_app
from ..jsonio import write_json
from ._common import console, peak_rss_mb, progress_bar
from ._common import data_options


@reproduce_app.command("pensia-exp1")
@click.option("--target", type=click.Path(path_type=Path), default=None,
              help="784-500-10 target (state_dict or .safetensors). Default: one trained on "
                   "Fashion-MNIST (cached).")
@click.option("--data", "data_name", type=click.Choice(["fashion-mnist", "mnist", "digits"]),
              default="fashion-mnist", show_default=True, help="Test data for the accuracies.")
@data_options
@click.option("--n", "n", type=int, default=21, show_default=True, help="Coefficients per weight.")
@click.option("--eps", type=float, default=0.01, show_default=True, help="Per-weight tolerance.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write all figures as JSON here.")
def exp1_cmd(target, data_name, data_dir, n, eps, seed, json_path):
    """Pensia et al.'s Experiment 1: their procedure and our real network construction on the
    same target, beside the paper's published row."""
    from ..data import load_dataset
    from ..experiments.exp1 import reproduce
    from ..targets import default_target, load_target

    if not eps > 0:
        raise SlthError(f"--eps must be > 0, got {eps}")
    if not 1 <= n <= 32:
        raise SlthError(f"--n must be between 1 and 32, got {n}")
    data = load_dataset(data_name, data_dir)
    if target is None:
        if data_name != "fashion-mnist":
            raise SlthError("without --target the default target is trained on fashion-mnist; "
                            "pass --target for other data")
        with progress_bar(transient=True) as bar:
            task = bar.add_task("training the default 784-500-10 target", total=10)
            mlp, desc = default_target("fashion-mnist", progress=lambda e, l: bar.update(task, completed=e))
    else:
        mlp, desc = load_target(target), str(target)
    if mlp.dims[0] != data.dim:
        raise SlthError(f"the target expects {mlp.dims[0]} inputs but {data_name} has {data.dim}")
    console.print(f"[bold]target[/]: {desc}")
    with progress_bar(transient=True) as bar:
        task = bar.add_task("reproducing", total=None)
        res = reproduce(mlp, data, n=n, eps=eps, seed=seed,
                        progress=lambda m: bar.update(task, description=m))
    res["target"] = desc
    res["data"] = data_name
    res["peak_rss_mb"] = peak_rss_mb()
    p, pp, c = res["paper_reported"], res["paper_procedure"], res["construction"]
    t = Table(title=f"Pensia et al. Experiment 1: paper vs slth ({'-'.join(map(str, mlp.dims))}, "
                    f"{data_name})")
    for col in ("", "paper (reported)", "paper's procedure, slth solver", "real network construction (slth)"):
        t.add_column(col, justify="right")
    t.add_row("target weights", f"{p['instances']:,}", f"{pp['weights']:,}", f"{c['target_params']:,}")
    t.add_row("coefficients / random weights", f"{p['coefficients_total']:,}",
              f"{pp['coefficients_total']:,} ({pp['coefficients_distinct']:,} distinct)",
              f"{c['random_params']:,} (G)")
    t.add_row("kept", f"{p['coefficients_kept']:,}", f"{pp['coefficients_kept']:,}",
              f"{c['active_params']:,} active")
    t.add_row("every weight within eps", "yes", "yes" if pp["all_within_eps"] else "no",
              f"max weight error {c['max_weight_error']:.2e}")
    t.add_row("time", f"{p['seconds']:,} s on {p['cores']} cores",
              f"{pp['seconds']:.1f} s on 2 cores", f"{c['seconds']:.1f} s on 2 cores")
    t.add_row("target accuracy", f"{p['accuracy_reported']:.2%} (MNIST)",
              f"{pp.get('target_accuracy', 0):.2%}", f"{c['target_accuracy']:.2%}")
    t.add_row("accuracy of the approximation", "never measured",
              f"{pp.get('approximated_accuracy', 0):.2%} (written back)",
              f"{c['ticket_accuracy']:.2%} (pruned G)")
    t.add_row("agreement with the target", "-", f"{pp.get('agreement', 0):.2%}", f"{c['agreement']:.2%}")
    t.add_row("certified output bound", "-", "-", f"{c['certified_bound']:.3g} ({c['domain']['kind']})")
    console.print(t)
    if json_path:
        write_json(json_path, res)
        console.print(f"wrote {json_path}")
