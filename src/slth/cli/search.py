"""``slth search``, ``slth reproduce pensia-exp2``, ``slth plant`` and ``slth bench supermask``:
finding tickets by training (edge-popup)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import app, bench_app, reproduce_app
from ..jsonio import write_json
from ._common import (atomic_output_dir, console, parse_float_list, parse_int_list, peak_rss_mb,
                      progress_bar)
from ._common import data_options

DATA = click.Choice(["digits", "fashion-mnist", "mnist"])
MODEL_CHOICES = ["fc2", "fc4", "lenet5"]
STRUCTURE_CHOICES = ["redundant-linear", "redundant-relu", "wide", "dense", "trained"]
INIT_CHOICES = ["kaiming-normal", "kaiming-uniform", "signed-constant", "pensia"]
# Defaults of the Experiment 2 sweep per data set: digits must finish in minutes on 2 cores.
# digits has 22 batches per epoch (MNIST: 938), so the LeNet5 rate 0.01 leaves it untrained: 0.1.
EXP2_DEFAULTS = {
    "digits": {"epochs": 10, "grid": "0.75,0.5,0.25,0.1,0.05,0.02", "lr": 0.1},
    "fashion-mnist": {"epochs": 10, "grid": None, "lr": None},
    "mnist": {"epochs": 10, "grid": None, "lr": None},
}


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def _check_common(epochs, lr, batch_size, redundancy, hidden):
    if epochs < 1:
        raise SlthError(f"--epochs must be >= 1, got {epochs}")
    if lr is not None and not lr > 0:
        raise SlthError(f"--lr must be > 0, got {lr}")
    if batch_size < 1:
        raise SlthError(f"--batch-size must be >= 1, got {batch_size}")
    if redundancy < 1:
        raise SlthError(f"--redundancy must be >= 1, got {redundancy}")
    if hidden < 1:
        raise SlthError(f"--hidden must be >= 1, got {hidden}")


def _step_bar(bar, task, total_steps):
    return lambda epoch, steps, loss: bar.update(task, completed=steps, total=total_steps,
                                                 description=f"epoch {epoch + 1} loss {loss:.3f}")


# ------------------------------------------------------------------------------ slth search
@app.command("search")
@click.option("--model", type=click.Choice(MODEL_CHOICES), default="fc2", show_default=True,
              help="Base network (FC input width = the data's pixel count).")
@click.option("--structure", type=click.Choice(STRUCTURE_CHOICES), default="dense",
              show_default=True, help="Random structure to search (or 'trained': the dense "
              "baseline trained normally).")
@click.option("--ticket", "ticket_path", type=click.Path(path_type=Path), default=None,
              help="Search the G of this constructed ticket (folder or .safetensors) instead "
                   "of --model/--structure.")
@click.option("--density", type=float, default=0.5, show_default=True,
              help="Fraction of the searched weights to KEEP, in (0, 1] (sparsity = 1 - density).")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer",
              show_default=True, help="Top-k per tensor, or one top-k over all searched weights.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--data", "data_name", type=DATA, default="digits", show_default=True)
@data_options
@click.option("--redundancy", type=int, default=5, show_default=True,
              help="Copies per input (r) of the redundant structures; also sizes 'wide'.")
@click.option("--hidden", type=int, default=500, show_default=True,
              help="Hidden width of the FC2/FC4 base networks.")
@click.option("--bias/--no-bias", default=False, show_default=True,
              help="Give the FC layers random biases, pruned like the weights.")
@click.option("--init", type=click.Choice(INIT_CHOICES), default=None,
              help="Weight init (default: pensia for redundant structures, kaiming-normal "
                   "otherwise).")
@click.option("--prune-convs", is_flag=True, default=False,
              help="lenet5: search the convolutions too (default: frozen, never pruned).")
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True,
              help="ce: labels; mse: the ticket's target outputs (needs --ticket and --target).")
@click.option("--target", type=click.Path(path_type=Path), default=None,
              help="With --ticket and --loss mse: the target network (default: the one named "
                   "in the ticket folder's report.json).")
@click.option("--lr", type=float, default=None,
              help="SGD learning rate (default 0.1; 0.01 for lenet5).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of every random draw (weights, scores, shuffling).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def search_cmd(model, structure, ticket_path, density, scope, epochs, data_name, data_dir,
               redundancy, hidden, bias, init, prune_convs, loss, target, lr, batch_size, seed, out):
    """Find a ticket by edge-popup: learn scores over frozen random weights, keep the top
    --density fraction, and write OUT/result.json, OUT/module.safetensors (prune-style module)
    and, for FC models, OUT/ticket.safetensors."""
    from ..data import load_dataset
    from ..search import SearchConfig, build, fit, from_ticket, to_sequential, to_ticket
    from ..search.export import arch_of, save_module
    from ..search.supermask import check_density

    check_density(density, "--density")
    _check_common(epochs, lr, batch_size, redundancy, hidden)
    if loss == "mse" and ticket_path is None:
        raise SlthError("--loss mse needs --ticket (the target's outputs are the teacher)")
    data = load_dataset(data_name, data_dir)
    y_train = data.y_train
    if ticket_path is not None:
        from ..ticket import load_ticket

        ticket = load_ticket(ticket_path)
        if ticket.widths[0] != data.dim:
            raise SlthError(f"the ticket's G takes {ticket.widths[0]} inputs but {data_name} has "
                            f"{data.dim}; pick the data its target was trained on")
        net = from_ticket(ticket, density=density, scope=scope, seed=seed)
        if loss == "mse":  # the search net computes G(x) / output_scale (see from_ticket)
            y_train = _target_outputs(ticket_path, target, data) / net.info["output_scale"]
    else:
        net = build(model, structure, data.image_shape, data.n_classes, density=density,
                    scope=scope, r=redundancy, hidden=hidden, bias=bias, init=init,
                    prune_convs=prune_convs, seed=seed)
    cfg = SearchConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, loss=loss)
    steps = epochs * ((len(data.x_train) + batch_size - 1) // batch_size)
    with atomic_output_dir(out) as tmp:
        with progress_bar(transient=True) as bar:
            task = bar.add_task("searching", total=steps)
            hist = fit(net, data.x_train, y_train, cfg, x_test=data.x_test, y_test=data.y_test,
                       progress=_step_bar(bar, task, steps))
        res = {"model": net.info["model"], "structure": net.info["structure"],
               "data": data_name, "density": density, "sparsity": 1 - density, "scope": scope,
               "widths": net.info["widths"], "searched_params": net.searched_params,
               "kept_params": net.kept_params, "accuracy": hist["test_accuracy"][-1],
               **hist, "settings": {**cfg.as_dict(), "redundancy": redundancy, "hidden": hidden,
                                    "bias": bias, "init": init, "prune_convs": prune_convs,
                                    "ticket": None if ticket_path is None else str(ticket_path)},
               "peak_rss_mb": peak_rss_mb()}
        meta = {k: res[k] for k in ("model", "structure", "data", "density", "scope", "widths",
                                    "searched_params", "kept_params", "accuracy")}
        meta.update(source="slth search", seed=seed, epochs=epochs)
        save_module(to_sequential(net), arch_of(net), tmp / "module.safetensors", meta)
        if net.info["model"] != "lenet5":
            tk = to_ticket(net, meta)
            tk.save(tmp / "ticket.safetensors")
            write_json(tmp / "sparsity_report.json", tk.sparsity_report())
        write_json(tmp / "result.json", res)
    t = Table(title=f"edge-popup: {res['model']} / {res['structure']} on {data_name}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("searched weights", f"{res['searched_params']:,}")
    t.add_row("kept (density / sparsity)", f"{res['kept_params']:,} ({density:.4g} / {1 - density:.4g})")
    t.add_row("test accuracy", _pct(res["accuracy"]))
    t.add_row("epochs, time", f"{epochs}, {hist['seconds']:.1f} s ({hist['samples_per_s']:.0f} samples/s)")
    console.print(t)
    console.print(f"wrote {out}/result.json and {out}/module.safetensors"
                  + ("" if net.info["model"] == "lenet5" else f" and {out}/ticket.safetensors"))


def _ticket_report(ticket_path: Path) -> dict:
    folder = ticket_path if ticket_path.is_dir() else ticket_path.parent
    p = folder / "report.json"
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _load_target_for(ticket_path: Path, target: Path | None):
    from ..targets import load_target

    if target is None:
        t = _ticket_report(ticket_path).get("target")
        if not t:
            raise SlthError(f"no target given and no report.json naming one next to {ticket_path}; "
                            "pass --target")
        target = Path(t)
    return load_target(target), target


def _target_outputs(ticket_path, target, data):
    import numpy as np

    mlp, _ = _load_target_for(ticket_path, target)
    if mlp.dims[0] != data.dim:
        raise SlthError(f"the target takes {mlp.dims[0]} inputs but the data has {data.dim}")
    return mlp.forward(data.x_train).astype(np.float32)


# ------------------------------------------------------------------ slth reproduce pensia-exp2
@reproduce_app.command("pensia-exp2")
@click.option("--data", "data_name", type=DATA, default="digits", show_default=True)
@data_options
@click.option("--models", default="fc2,fc4,lenet5", show_default=True,
              help="Comma-separated from fc2, fc4, lenet5.")
@click.option("--density-grid", default=None,
              help="Densities (fraction KEPT), comma-separated. Default: the paper's grid "
                   "(sparsity 0 ... 0.99, i.e. density 1 ... 0.01); on digits "
                   + EXP2_DEFAULTS["digits"]["grid"] + ".")
@click.option("--epochs", type=int, default=None,
              help=f"Epochs per run (default {EXP2_DEFAULTS['digits']['epochs']} on digits, "
                   f"{EXP2_DEFAULTS['fashion-mnist']['epochs']} otherwise).")
@click.option("--redundancy", type=int, default=5, show_default=True, help="Copies per input (r).")
@click.option("--hidden", type=int, default=500, show_default=True,
              help="Hidden width of FC2/FC4 (the paper's 500).")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer",
              show_default=True, help="Top-k per tensor (the paper) or global.")
@click.option("--lr", type=float, default=None,
              help="Default: the paper's 0.1 (FC) and 0.01 (LeNet5); 0.1 for all on digits.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder; an unfinished sweep there is resumed.")
def exp2_cmd(data_name, data_dir, models, density_grid, epochs, redundancy, hidden, scope, lr,
             batch_size, seed, out):
    """Pensia et al.'s Experiment 2: edge-popup on the redundant (linear, ReLU) and wide
    structures over a density grid, with the dense trained baseline. Writes OUT/results.json
    and OUT/<model>.png; a killed sweep resumes where it stopped."""
    from ..data import load_dataset
    from ..experiments.exp2 import PAPER_DENSITY_GRID, Exp2Settings, check_plan, load_state, sweep

    d = EXP2_DEFAULTS[data_name]
    epochs = epochs if epochs is not None else d["epochs"]
    lr = lr if lr is not None else d["lr"]
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    grid = (parse_float_list(density_grid, "--density-grid") if density_grid
            else (parse_float_list(d["grid"], "grid") if d["grid"] else list(PAPER_DENSITY_GRID)))
    check_plan(model_list, grid)
    _check_common(epochs, lr, batch_size, redundancy, hidden)
    if out.exists() and not out.is_dir():
        raise SlthError(f"--out {out} exists and is not a folder; choose another path")
    st = Exp2Settings(data=data_name, epochs=epochs, seed=seed, redundancy=redundancy,
                      hidden=hidden, scope=scope, lr=lr, batch_size=batch_size)
    load_state(out / "results.json", st)  # refuse other settings before any work
    data = load_dataset(data_name, data_dir)
    t0 = time.perf_counter()
    with progress_bar() as bar:
        runs_task = bar.add_task("runs", total=None)
        step_task = bar.add_task("", total=None)

        def progress(key, i, n, k, steps):
            bar.update(runs_task, completed=i, total=n, description=key)
            bar.update(step_task, completed=k, total=steps, description="steps")

        state = sweep(data, st, model_list, grid, out, progress=progress)
        bar.update(runs_task, completed=bar.tasks[0].total)
    t = Table(title=f"Pensia et al. Experiment 2 on {data_name} ({epochs} epochs, r = {redundancy}, "
                    f"{scope} top-k)")
    for c in ("model", "structure", "best accuracy", "at density", "dense trained"):
        t.add_column(c, justify="right")
    for r in state["summary"]:
        t.add_row(r["model"], r["structure"], _pct(r["best_accuracy"]), f"{r['best_density']:g}",
                  _pct(r["trained_accuracy"]))
    console.print(t)
    console.print(f"{time.perf_counter() - t0:.0f} s; wrote {out}/results.json and "
                  + ", ".join(f"{out}/{m}.png" for m in model_list))


# ------------------------------------------------------------------------------ slth plant
@app.command("plant")
@click.argument("ticket_path", type=click.Path(path_type=Path))
@click.option("--target", type=click.Path(path_type=Path), default=None,
              help="The target the ticket was built for (default: the one named in the ticket "
                   "folder's report.json).")
@click.option("--data", "data_name", type=DATA, default=None,
              help="Data (default: the ticket report's, else digits).")
@data_options
@click.option("--density-grid", default=None,
              help="Densities (fraction KEPT) to search at. Default: 0.5, 1, 2 and 4 times the "
                   "planted ticket's density (at most 1).")
@click.option("--epochs-grid", default="5,20", show_default=True,
              help="Epochs per run, comma-separated (each a separate run with its own schedule).")
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global",
              show_default=True, help="One top-k over all of G, or the same density per layer.")
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True,
              help="ce: the labels; mse: match the target's outputs.")
@click.option("--lr", type=float, default=None, help="SGD learning rate (default 0.1).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def plant_cmd(ticket_path, target, data_name, data_dir, density_grid, epochs_grid, scope, loss,
              lr, batch_size, seed, out):
    """Run edge-popup on the G of a constructed (planted) ticket TICKET_PATH (a 'slth construct'
    folder or its ticket.safetensors) and measure accuracy, error to the target and how much of
    the planted mask it recovers (precision / recall), against density and epochs."""
    from ..data import load_dataset
    from ..experiments.plant import plant
    from ..search.supermask import check_density
    from ..ticket import load_ticket

    ticket = load_ticket(ticket_path)
    rep = _ticket_report(ticket_path)
    mlp, target_path = _load_target_for(ticket_path, target)
    if mlp.dims[0] != ticket.widths[0] or mlp.dims[-1] != ticket.widths[-1]:
        raise SlthError(f"the target ({'-'.join(map(str, mlp.dims))}) does not match the ticket's "
                        f"G ({ticket.widths[0]} inputs, {ticket.widths[-1]} outputs); pass the "
                        "target it was built for")
    data_name = data_name or rep.get("data") or "digits"
    epochs_list = parse_int_list(epochs_grid, "--epochs-grid")
    if any(e < 1 for e in epochs_list):
        raise SlthError(f"--epochs-grid values must be >= 1, got {epochs_grid}")
    if density_grid:
        grid = [check_density(v, "every density of --density-grid")
                for v in parse_float_list(density_grid, "--density-grid")]
    else:
        grid = sorted({min(1.0, round(f * ticket.density, 6)) for f in (0.5, 1, 2, 4)})
    _check_common(1, lr, batch_size, 1, 1)
    data = load_dataset(data_name, data_dir)
    if data.dim != mlp.dims[0]:
        raise SlthError(f"{data_name} has {data.dim} inputs but the target takes {mlp.dims[0]}; "
                        "pick the data the target was trained on")
    with atomic_output_dir(out) as tmp:
        with progress_bar(transient=True) as bar:
            task = bar.add_task("planting", total=len(grid) * len(epochs_list))
            res = plant(ticket, mlp, data, grid, epochs_list, scope=scope, loss=loss, seed=seed,
                        lr=lr, batch_size=batch_size, certified_bound=rep.get("certified_bound"),
                        progress=lambda msg, i, n: bar.update(task, completed=i, description=msg))
        res["ticket"] = str(ticket_path)
        res["target"] = str(target_path)
        res["data"] = data_name
        res["peak_rss_mb"] = peak_rss_mb()
        write_json(tmp / "plant.json", res)
    p = res["planted"]
    t = Table(title=f"edge-popup on the G of {ticket_path} ({scope} top-k, {loss} loss, {data_name})")
    for c in ("density", "epochs", "kept", "precision", "recall", "accuracy", "agreement",
              "error mean", "error max"):
        t.add_column(c, justify="right")
    t.add_row(f"{p['density']:.4g} (planted)", "-", f"{p['active_params']:,}", "1", "1",
              _pct(p["accuracy"]), _pct(p["agreement"]), f"{p['error_mean']:.3g}",
              f"{p['error_max']:.3g}")
    for r in res["runs"]:
        t.add_row(f"{r['density']:.4g}", str(r["epochs"]), f"{r['kept']:,}",
                  f"{r['precision']:.3f}", f"{r['recall']:.3f}", _pct(r["accuracy"]),
                  _pct(r["agreement"]), f"{r['error_mean']:.3g}", f"{r['error_max']:.3g}")
    console.print(t)
    console.print(f"chance precision (a random mask) = planted density {p['density']:.4g}; "
                  f"target accuracy {_pct(p['target_accuracy'])}"
                  + (f"; certified bound {p['certified_bound']:.3g}" if p["certified_bound"] else ""))
    console.print(f"wrote {out}/plant.json")


# ------------------------------------------------------------------------ slth bench supermask
@bench_app.command("supermask")
@click.option("--model", type=click.Choice(MODEL_CHOICES), default="fc2", show_default=True)
@click.option("--structure", type=click.Choice(STRUCTURE_CHOICES[:4]), default="wide",
              show_default=True)
@click.option("--data", "data_name", type=DATA, default="fashion-mnist", show_default=True)
@data_options
@click.option("--density", type=float, default=0.5, show_default=True,
              help="Fraction of weights kept.")
@click.option("--steps", type=int, default=20, show_default=True, help="SGD steps per round.")
@click.option("--rounds", type=int, default=3, show_default=True,
              help="Alternating rounds per implementation (median reported).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the figures as JSON here.")
def bench_supermask_cmd(model, structure, data_name, data_dir, density, steps, rounds, batch_size,
                        seed, json_path):
    """Training throughput (samples/s) of our supermask layers vs hidden-networks' sort-based
    GetSubnet on the same structure, in the same run."""
    from ..data import load_dataset
    from ..search.bench import bench_supermask
    from ..search.supermask import check_density

    check_density(density, "--density")
    if batch_size < 1:
        raise SlthError(f"--batch-size must be >= 1, got {batch_size}")
    data = load_dataset(data_name, data_dir)
    with progress_bar(transient=True) as bar:
        task = bar.add_task("benchmarking", total=2 * rounds)
        res = bench_supermask(data, model, structure, density, steps, rounds, batch_size, seed,
                              progress=lambda msg, i, n: bar.update(task, completed=i, description=msg))
    res["peak_rss_mb"] = peak_rss_mb()
    t = Table(title=f"supermask training throughput: {model} / {structure} on {data_name}, "
                    f"{res['searched_params']:,} searched weights, density {density:g}, "
                    f"batch {batch_size}, {res['threads']} threads")
    t.add_column("implementation")
    t.add_column("samples/s", justify="right")
    t.add_column("speed-up", justify="right")
    t.add_row("slth (top-k, no sort)", f"{res['samples_per_s']['ours']:,.0f}", f"{res['speedup']:.2f}×")
    t.add_row("sort-based GetSubnet (hidden-networks)", f"{res['samples_per_s']['sort']:,.0f}", "1×")
    console.print(t)
    console.print(f"same initial masks: {res['same_initial_masks']}; largest loss difference over "
                  f"the first round: {res['max_loss_diff_first_round']:.3g}")
    if json_path:
        write_json(json_path, res)
        console.print(f"wrote {json_path}")
