"""``slth demo``: the whole idea in a few minutes on the embedded digits data."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from . import app
from ._common import atomic_output_dir, console, peak_rss_mb, progress_bar


@app.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("slth-demo"),
              show_default=True, help="Folder for the demo's outputs (replaced if it exists).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random draw.")
@click.option("--quick", is_flag=True, help="A smaller demo (about a third of the time).")
def demo(out, seed, quick):
    """Train a small target on the embedded digits data, build its ticket with every
    construction and certify them, measure size against eps beside the theorems, run a short
    edge-popup search and a planted-ticket check, print a summary and write OUT/report.html
    (self-contained: open it in a browser), OUT/summary.json and the plots."""
    from ..experiments import demo as D

    s = D.DemoSettings.quick(seed) if quick else D.DemoSettings(seed=seed)
    with atomic_output_dir(out) as tmp:
        with progress_bar() as bar:
            overall = bar.add_task(D.STEPS[0], total=len(D.STEPS))

            def say(i, msg):
                bar.update(overall, completed=i, description=f"{D.STEPS[i]}: {msg}"[:90])

            sm = D.run(tmp, s, progress=say)
            bar.update(overall, completed=len(D.STEPS), description="done")
    _print_summary(sm)
    console.print(f"{sm['seconds']['total']:.0f} s, peak memory {peak_rss_mb():,.0f} MiB; "
                  f"open {out / 'report.html'} in a browser (also {out / 'summary.json'})")


def _print_summary(sm: dict) -> None:
    t = sm["target"]
    console.print(f"target {'-'.join(map(str, t['dims']))} on digits: {t['params']:,} weights, "
                  f"test accuracy {t['accuracy']:.2%}")
    tab = Table(title=f"tickets at certified eps = {sm['settings']['eps']:g} (box [0,1]^64)")
    for c in ("method", "size", "theory size", "random params", "density", "certified bound",
              "error found", "accuracy", "agreement"):
        tab.add_column(c, justify="right")
    for r in sm["constructions"]:
        if r.get("refused"):
            tab.add_row(r["method"], "refused", *[""] * 7)
            continue
        tab.add_row(r["method"], ",".join(map(str, r["size"])),
                    ",".join(f"{x:,.0f}" for x in r["theory_size"] or []),
                    f"{r['random_params']:,}", f"{r['density']:.3%}",
                    f"{r['certified_bound']:.3g}", f"{r['max_error_found']:.3g}",
                    f"{r['ticket_accuracy']:.2%}", f"{r['agreement']:.2%}")
    console.print(tab)
    tab = Table(title="size against eps (random 8-8-8 target, unit ball)")
    tab.add_column("method")
    tab.add_column("sizes, eps " + " → ".join(f"{e:.0e}" for e in
                                              next(iter(sm["width"]["methods"].values()))["eps"]))
    tab.add_column("fit", justify="right")
    for m, r in sm["width"]["methods"].items():
        fl, fp = r["fit_log"], r["fit_power"]
        fit = (f"{fl['C']:.2f}·log2(1/eps), R² {fl['r2']:.3f}" if m != "malach" and fl else
               f"(1/eps)^{fp['p']:.2f}, R² {fp['r2']:.3f}" if fp else "-")
        tab.add_row(m, " ".join("-" if k is None else str(k) for k in r["size"]), fit)
    console.print(tab)
    c = sm["cnn"]
    console.print(f"CNN on digits ({c['params']:,} weights, accuracy {c['accuracy']:.2%}): "
                  f"ticket in a random CNN of {c['random_params']:,} weights, density "
                  f"{c['density']:.2%}, certified bound {c['certified_bound']:.3g} (box), largest "
                  f"error found {c['max_error_found']:.3g}, ticket accuracy "
                  f"{c['ticket_accuracy']:.2%}, agreement {c['agreement']:.2%}")
    tab = Table(title=f"edge-popup on FC2 ({sm['settings']['search_epochs']} epochs): best per structure")
    for c in ("structure", "best accuracy", "at density", "dense trained"):
        tab.add_column(c, justify="right")
    for r in sm["search"]:
        tab.add_row(r["structure"], f"{r['best_accuracy']:.2%}", f"{r['best_density']:g}",
                    f"{r['trained_accuracy']:.2%}")
    console.print(tab)
    tab = Table(title="planted Pensia ticket: what edge-popup recovers")
    for c in ("density", "precision", "recall", "chance", "accuracy"):
        tab.add_column(c, justify="right")
    for r in sm["plant"]["runs"]:
        tab.add_row(f"{r['density']:.3g}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                    f"{r['chance_precision']:.3f}", f"{r['accuracy']:.2%}")
    console.print(tab)
