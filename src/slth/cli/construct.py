"""``slth construct``: build a ticket in a resumable run folder (``slth.runs``), on this process
or Dask, and print its report; ``--out`` copies the run's files to a folder of your choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import app
from ._common import (MethodCommand, atomic_output_dir, console, data_options, domain_options,
                      load_cli_target, method_settings, parse_size, progress_bar, runs_dir_option,
                      size_options, target_options)


def _fmt(v, spec=".3g"):
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


def report_table(rep: dict, title: str) -> Table:
    """The summary table of one construction report: ours beside the theory's."""
    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("ours", justify="right")
    t.add_column("theory", justify="right")
    size_key = next((k for k in ("n_per_layer", "samples_per_layer", "rho_per_layer")
                     if k in rep), None)
    if size_key:
        t.add_row(size_key.replace("_", " "), _fmt(rep[size_key]), _fmt(rep.get("theory_" + size_key)))
    t.add_row("G width per layer", _fmt(rep["width_per_layer"]), "")
    t.add_row("random params (G)", f"{rep['random_params']:,}", _fmt(rep.get("theory_random_params")))
    t.add_row("active params (ticket)", f"{rep['active_params']:,}", "")
    t.add_row("target params", f"{rep['target_params']:,}", "")
    t.add_row("density (kept / G)", f"{rep['density']:.4%}", "")
    t.add_row("over-parameterization (G / target)", f"{rep['overparam_factor']:.1f}×", "")
    t.add_row("max weight error", _fmt(rep.get("max_weight_error")), "")
    t.add_row(f"certified bound ({rep['domain']['kind']})", _fmt(rep["certified_bound"]),
              _fmt(rep.get("eps")))
    t.add_row("max error on test data in domain", _fmt(rep.get("empirical_max_error")), "")
    t.add_row("max error by gradient ascent", _fmt(rep.get("adversarial_max_error")), "")
    t.add_row("tightness (certified / found)", _fmt(rep.get("bound_tightness"), ".1f"), "")
    if rep.get("target_accuracy") is not None:
        t.add_row("target accuracy", f"{rep['target_accuracy']:.2%}", "")
        t.add_row("ticket accuracy", f"{rep['ticket_accuracy']:.2%}", "")
        t.add_row("agreement (same class)", f"{rep['agreement']:.2%}", "")
    t.add_row("time", f"{rep['seconds']:.1f} s", "")
    t.add_row("peak memory", f"{rep['peak_rss_mb']:.0f} MiB", "")
    return t


@app.command("construct", cls=MethodCommand)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["pensia"]), default="pensia", show_default=True,
              help="Which construction (every registered method).")
@size_options
@domain_options
@click.option("--data", "data_name", type=click.Choice(["digits", "fashion-mnist", "mnist"]),
              default=None, help="Test data for accuracy, agreement and the empirical error.")
@data_options
@target_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for G's weights.")
@click.option("--compact/--no-compact", default=False, show_default=True,
              help="Also write ticket.compact.safetensors (active weights only).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also copy the ticket and reports to this folder (replaced if it exists).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Build on a local Dask cluster of this many single-threaded workers "
                   "(see docs/distributed.md).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Build on an existing Dask cluster.")
@runs_dir_option
def construct_cmd(target, method, eps, n_text, domain, radius, data_name, data_dir, model_spec,
                  input_shape, seed, compact, out, workers, scheduler, runs_dir, method_options):
    """Build a ticket for TARGET inside a random network, certify its output error, and write
    RUNS_DIR/<method>-<hash>/ticket.safetensors and report.json (resumable: the same command
    again continues an interrupted run and returns a finished one as it is)."""
    from ..certify import Domain
    from ..runs import execute

    settings = {**parse_size(eps, n_text), "seed": seed,
                **method_settings(method, method_options)}
    if workers is not None and scheduler is not None:
        raise SlthError("give --workers N (a local Dask cluster) or --scheduler tcp://HOST:PORT, "
                        "not both")
    if out is not None and out.exists() and not out.is_dir():
        raise SlthError(f"--out {out} exists and is not a folder; choose another path")
    net = load_cli_target(target, model_spec, input_shape, data_name)
    with progress_bar(transient=True) as bar:
        task = bar.add_task("constructing", total=None)

        def say(msg, done=None, total=None):
            bar.update(task, description=msg, completed=done or 0, total=total)

        run = execute(net, method, settings, domain=Domain(domain, radius=radius),
                      target_label=str(target),
                      data=data_name, data_dir=data_dir, runs_dir=runs_dir, workers=workers,
                      scheduler=scheduler, compact=compact, progress=say)
    console.print(report_table(run.report, f"{method} ticket for {target}"))
    s = run.stats
    if s.get("finished_before"):
        console.print(f"run already finished, not recomputed: {run.folder}")
    else:
        console.print(f"run folder {run.folder}: {s['chunks_computed']} of {s['chunks_total']} "
                      f"chunks computed now, {s['chunks_reused']} reused from an earlier attempt")
    if out is not None:
        with atomic_output_dir(out) as tmp:
            names = ["ticket.safetensors", "report.json", "sparsity_report.json"]
            for name in names + (["ticket.compact.safetensors"] if compact else []):
                shutil.copyfile(run.folder / name, tmp / name)
        console.print(f"wrote {out}/ticket.safetensors and {out}/report.json")
