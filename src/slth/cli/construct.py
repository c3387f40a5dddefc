"""``slth construct``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import app
from ..jsonio import write_json
from ._common import (atomic_output_dir, console, data_options, domain_options, parse_int_list,
                      peak_rss_mb, progress_bar)


def report_table(rep: dict, title: str) -> Table:
    """The summary table of one construction report."""
    def fmt(v, spec=".3g"):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return format(v, spec)
        if isinstance(v, list):
            return ", ".join(map(str, v))
        return str(v)

    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("ours", justify="right")
    t.add_column("theory", justify="right")
    size_key = next((k for k in ("n_per_layer", "samples_per_layer", "k_per_layer") if k in rep), None)
    if size_key:
        t.add_row(size_key.replace("_", " "), fmt(rep[size_key]), fmt(rep.get("theory_" + size_key)))
    t.add_row("G width per layer", fmt(rep["width_per_layer"]), "")
    t.add_row("random params (G)", f"{rep['random_params']:,}", fmt(rep.get("theory_random_params")))
    t.add_row("active params (ticket)", f"{rep['active_params']:,}", "")
    t.add_row("target params", f"{rep['target_params']:,}", "")
    t.add_row("density (kept / G)", f"{rep['density']:.4%}", "")
    t.add_row("over-parameterization (G / target)", f"{rep['overparam_factor']:.1f}×", "")
    t.add_row("max weight error", fmt(rep.get("max_weight_error")), "")
    t.add_row(f"certified bound ({rep['domain']['kind']})", fmt(rep["certified_bound"]),
              fmt(rep.get("eps")))
    t.add_row("max error on test data in domain", fmt(rep.get("empirical_max_error")), "")
    t.add_row("max error by gradient ascent", fmt(rep.get("adversarial_max_error")), "")
    t.add_row("tightness (certified / found)", fmt(rep.get("bound_tightness"), ".1f"), "")
    if rep.get("target_accuracy") is not None:
        t.add_row("target accuracy", f"{rep['target_accuracy']:.2%}", "")
        t.add_row("ticket accuracy", f"{rep['ticket_accuracy']:.2%}", "")
        t.add_row("agreement (same class)", f"{rep['agreement']:.2%}", "")
    t.add_row("time", f"{rep['seconds']:.1f} s", "")
    t.add_row("peak memory", f"{rep['peak_rss_mb']:.0f} MiB", "")
    return t


def size_settings(eps: float | None, n_text: str | None, extra: dict) -> dict:
    """``extra`` plus the validated size: ``eps`` or ``n`` (one int, or one per layer)."""
    if (eps is None) == (n_text is None):
        raise SlthError("give exactly one of --eps (error bound) or --n (size)")
    if eps is not None and not eps > 0:
        raise SlthError(f"--eps must be > 0, got {eps}")
    settings = dict(extra)
    if n_text is None:
        settings["eps"] = eps
        return settings
    ns = parse_int_list(n_text, "--n")
    if any(k < 1 for k in ns):
        raise SlthError(f"--n must be >= 1, got {n_text}")
    settings["n"] = ns[0] if len(ns) == 1 else ns
    return settings


def run_construction(target_path, method, eps, n_text, domain_kind, radius, data_name, data_dir,
                     seed, extra, progress_label="constructing"):
    """Load, construct, evaluate; returns (target, construction, report)."""
    from ..certify import Domain
    from ..constructions import construct
    from ..data import load_dataset
    from ..report import evaluate
    from ..targets import load_target

    settings = size_settings(eps, n_text, extra)
    domain = Domain(domain_kind, radius=radius)
    target = load_target(target_path)
    data = load_dataset(data_name, data_dir) if data_name else None
    if data is not None and data.dim != target.dims[0]:
        raise SlthError(f"{data_name} has {data.dim} inputs but the target expects "
                        f"{target.dims[0]}; pick the data the target was trained on")
    t0 = time.perf_counter()
    with progress_bar(transient=True) as bar:
        task = bar.add_task(progress_label, total=None)
        say = lambda msg: bar.update(task, description=msg)  # noqa: E731
        con = construct(target, method=method, domain=domain, seed=seed, progress=say, **settings)
        rep = evaluate(target, con, domain, data, seed=seed, progress=say)
        rep.update({k: v for k, v in con.info.items() if k.startswith("theory_")})  # method options
    rep["seconds"] = time.perf_counter() - t0
    rep["peak_rss_mb"] = peak_rss_mb()
    rep["data"] = data_name
    rep["target"] = str(target_path)
    return target, con, rep


@app.command("construct")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["pensia", "malach", "orseau"]), default="pensia",
              show_default=True, help="Which paper's construction.")
@click.option("--eps", type=float, default=None,
              help="Certified error to reach: the smallest size whose bound meets it.")
@click.option("--n", "n_text", default=None,
              help="Size to use instead of --eps: block size per half (pensia, orseau) or gadget "
                   "size K per target neuron (malach), one value or "
                   "one per layer (e.g. 21 or 21,16).")
@domain_options
@click.option("--data", "data_name", type=click.Choice(["digits", "fashion-mnist", "mnist"]),
              default=None, help="Test data for accuracy, agreement and the empirical error.")
@data_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for G's weights.")
@click.option("--prune-dead/--keep-dead", default=False, show_default=True,
              help="pensia: drop the negative halves of hidden layers (their post-ReLU inputs "
                   "make them output 0).")
@click.option("--distribution", type=click.Choice(["hyperbolic", "uniform"]), default="hyperbolic",
              show_default=True, help="orseau: magnitude distribution of G's weights.")
@click.option("--gamma", type=click.Choice(["phi", "3/2"]), default="phi", show_default=True,
              help="orseau: base of the golden-ratio digits.")
@click.option("--w-min", type=float, default=None,
              help="orseau: hyperbolic range [w-min, w-max] (default: set per layer from its "
                   "scale and tolerance).")
@click.option("--w-max", type=float, default=None, help="orseau: see --w-min (uniform: 1).")
@click.option("--sizing", type=click.Choice(["search", "theory"]), default="search",
              show_default=True, help="orseau with --eps: smallest size meeting eps, or the "
                                      "batch-sampling size of the theorem.")
@click.option("--delta", type=float, default=0.1, show_default=True,
              help="orseau, malach: failure probability of the theory sizes.")
@click.option("--max-params", type=int, default=100_000_000, show_default=True,
              help="malach: refuse a G with more random parameters.")
@click.option("--compact/--no-compact", default=False, show_default=True,
              help="Also write ticket.compact.safetensors (active weights only).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder. Without it the run goes to RUNS_DIR/<method>-<hash of "
                   "settings>/ (resumable; a finished run is not recomputed).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Build on a local Dask cluster of this many single-threaded workers "
                   "(pensia with --n; see docs/distributed.md).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Build on an existing Dask cluster (pensia with --n).")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True, help="Where run folders live.")
def construct_cmd(target, method, eps, n_text, domain, radius, data_name, data_dir, seed,
                  prune_dead, distribution, gamma, w_min, w_max, sizing, delta, max_params,
                  compact, out, workers, scheduler, runs_dir):
    """Build a ticket for TARGET inside a random network, certify its output error, and write
    OUT/ticket.safetensors and OUT/report.json (without --out: a resumable run folder)."""
    from ..constructions.orseau import PHI
    extra = {"pensia": {"prune_dead": prune_dead},
             "orseau": {"distribution": distribution, "gamma": PHI if gamma == "phi" else 1.5,
                        "w_min": w_min, "w_max": w_max, "sizing": sizing, "delta": delta},
             "malach": {"delta": delta, "max_params": max_params}}[method]
    if out is None or workers or scheduler:  # run folders, Dask (issue 6): slth.cli.runs
        from .runs import construct_to_run_folder
        return construct_to_run_folder(target, method, eps, n_text, domain, radius, data_name,
                                       data_dir, seed, extra, compact, out, workers, scheduler,
                                       runs_dir)
    with atomic_output_dir(out) as tmp:
        _, con, rep = run_construction(target, method, eps, n_text, domain, radius, data_name,
                                       data_dir, seed, extra)
        con.ticket.save(tmp / "ticket.safetensors")
        if compact:
            con.ticket.save_compact(tmp / "ticket.compact.safetensors")
        write_json(tmp / "sparsity_report.json", con.ticket.sparsity_report())
        write_json(tmp / "report.json", rep)
    console.print(report_table(rep, f"{method} ticket for {target}"))
    console.print(f"wrote {out}/ticket.safetensors and {out}/report.json")
