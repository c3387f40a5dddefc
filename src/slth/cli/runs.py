"""``slth runs list``: the run folders ``slth construct`` makes (``slth.runs``)."""

from __future__ import annotations

from rich.table import Table

from . import app
from ._common import console, runs_dir_option


@app.group("runs")
def runs_app():
    """Run folders: runs/<method>-<hash of settings>/ (resumable constructions)."""


@runs_app.command("list")
@runs_dir_option
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
