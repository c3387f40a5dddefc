"""``slth runs list``, and ``slth construct`` into run folders (``--workers``, ``--scheduler``,
``--runs-dir``): the CLI side of ``slth.runs``."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import app
from ._common import atomic_output_dir, console, progress_bar, stderr_line


@app.group("runs")
def runs_app():
    """Run folders: runs/<method>-<hash of settings>/ (resumable constructions)."""


@runs_app.command("list")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True, help="Folder holding the run folders.")
def list_cmd(runs_dir):
    """Show every run folder, its settings and its status (finished, or chunks done)."""
    from ..runs import list_runs

    rows = list_runs(runs_dir)
    if not rows:
        console.print(f"no run folders in {runs_dir}")
        return
    t = Table(title=f"runs in {runs_dir}")
    for col in ("run folder", "method", "target", "settings", "status", "density",
                "certified bound", "created"):
        t.add_column(col)
    for r in rows:
        s = r["settings"] or {}
        size = f"n={s['n']}" if s.get("n") is not None else f"eps={s.get('eps')}"
        t.add_row(r["name"], r["method"], "-".join(map(str, r["target_dims"] or [])),
                  f"{size} seed={s.get('seed')}", r["status"],
                  f"{r['density']:.4%}" if r.get("density") is not None else "-",
                  f"{r['certified_bound']:.3g}" if r.get("certified_bound") is not None else "-",
                  r.get("created") or "-")
    console.print(t)


def construct_to_run_folder(target, method, eps, n_text, domain_kind, radius, data_name, data_dir,
                            seed, extra, compact, out, workers, scheduler, runs_dir):
    """``slth construct`` without --out, or with --workers / --scheduler: build in a run folder
    (resumed if interrupted, returned as is if finished); with --out, copy its files there."""
    from ..certify import Domain
    from ..runs import execute
    from .construct import report_table, size_settings

    settings = size_settings(eps, n_text, dict(extra, seed=seed))
    if workers is not None and scheduler is not None:
        raise SlthError("give --workers N (a local Dask cluster) or --scheduler tcp://HOST:PORT, "
                        "not both")
    if (workers or scheduler) and not (method == "pensia" and n_text is not None):
        stderr_line("note: only pensia with --n is split into chunks; this run is built in this "
                    "process")
    with progress_bar(transient=True) as bar:
        task = bar.add_task("constructing", total=None)

        def say(msg, done=None, total=None):
            bar.update(task, description=msg, completed=done or 0, total=total)

        run = execute(target, method, settings, domain=Domain(domain_kind, radius=radius),
                      data=data_name, data_dir=data_dir, runs_dir=runs_dir, workers=workers,
                      scheduler=scheduler, compact=compact, progress=say)
    rep = run.report
    console.print(report_table(rep, f"{method} ticket for {target}"))
    if run.stats.get("finished_before"):
        console.print(f"run already finished, not recomputed: {run.folder}")
    else:
        s = run.stats
        console.print(f"run folder {run.folder}: {s['chunks_computed']} of {s['chunks_total']} "
                      f"chunks computed now, {s['chunks_reused']} reused from an earlier attempt")
    if out is not None:
        with atomic_output_dir(out) as tmp:
            names = ["ticket.safetensors", "report.json", "sparsity_report.json"]
            for name in names + (["ticket.compact.safetensors"] if compact else []):
                shutil.copyfile(run.folder / name, tmp / name)
        console.print(f"wrote {out}/ticket.safetensors and {out}/report.json")
