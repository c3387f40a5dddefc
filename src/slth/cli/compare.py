"""``slth compare``: every construction on one target, one table and one plot."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import app
from ..jsonio import write_json
from ._common import (MethodCommand, atomic_output_dir, console, data_options, domain_options,
                      load_cli_target, method_settings, peak_rss_mb, progress_bar, target_options)


@app.command("compare", cls=MethodCommand)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--eps", type=float, required=True, help="Certified error every method must reach.")
@domain_options
@click.option("--methods", default="pensia,orseau,orseau-uniform,malach", show_default=True,
              help="Comma-separated registered methods (pensia, orseau, orseau-uniform, "
                   "malach, ...).")
@click.option("--data", "data_name", type=click.Choice(["digits", "fashion-mnist", "mnist"]),
              default=None, help="Test data for accuracy, agreement and the empirical error.")
@data_options
@target_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for G's weights.")
@click.option("--rescale/--no-rescale", default=False, show_default=True,
              help="Scale each layer to max |w| = 1/sqrt(d_in) first (Malach's assumption; a "
                   "bias-free classifier keeps its predictions).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def compare_cmd(target, eps, domain, radius, methods, data_name, data_dir, model_spec,
                input_shape, seed, rescale, out, method_options):
    """Build TARGET's ticket with every method at the same eps and compare random and active
    parameters, density, over-parameterization, neurons per target weight, certified bound,
    accuracy, agreement and time. Writes OUT/compare.json, OUT/compare.md and OUT/compare.png.
    A method option (e.g. --max-params) applies to every method that has it."""
    from ..certify import Domain
    from ..data import load_dataset
    from ..experiments import compare as C
    from ..constructions import names
    from ..experiments.width import malach_scaled
    from ..runs import check_data_fits

    if not eps > 0:
        raise SlthError(f"--eps must be > 0, got {eps}")
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in ms if m not in names()]
    if bad or not ms:
        raise SlthError(f"--methods: unknown {', '.join(bad) or '(empty)'}; choose from "
                        f"{', '.join(names())}")
    settings = {}
    for m in ms:
        settings.update(method_settings(m, method_options, strict=False))
    dom = Domain(domain, radius=radius)
    mlp = load_cli_target(target, model_spec, input_shape, data_name)
    if rescale:
        mlp = malach_scaled(mlp)
    data = load_dataset(data_name, data_dir) if data_name else None
    check_data_fits(data, mlp, data_name)
    with atomic_output_dir(out) as tmp:
        with progress_bar(transient=True) as bar:
            task = bar.add_task("comparing", total=None)
            res = C.run(mlp, eps, dom, data, ms, seed, settings,
                        progress=lambda msg: bar.update(task, description=msg))
        res.update({"target": str(target), "rescaled": rescale, "data": data_name,
                    "peak_rss_mb": peak_rss_mb()})
        res["plot"] = C.plot(res, tmp)
        (tmp / "compare.md").write_text(C.markdown(res))
        write_json(tmp / "compare.json", res)
    t = Table(title=f"{getattr(mlp, 'name', '') or 'the'} target, eps = {eps:g} on "
                    f"{dom.describe()}")
    for col in ("method", "random params", "active params", "density", "G / target",
                "neurons / target weight", "size", "certified bound", "max error found",
                "accuracy", "agreement", "time"):
        t.add_column(col, justify="right")
    for r in res["rows"]:
        if r.get("refused"):
            t.add_row(r["method"], C.refusal(r, short=True), *["-"] * 10)
            continue
        acc, agr = r.get("ticket_accuracy"), r.get("agreement")
        t.add_row(r["method"], f"{r['random_params']:,}", f"{r['active_params']:,}",
                  f"{r['density']:.3%}", f"{r['overparam_factor']:.1f}×",
                  f"{r['neurons_per_target_weight']:.2f}", ",".join(map(str, r["size"])),
                  f"{r['certified_bound']:.3g}", f"{r['max_error_found']:.3g}",
                  "-" if acc is None else f"{acc:.2%}", "-" if agr is None else f"{agr:.2%}",
                  f"{r['seconds']:.1f} s")
    console.print(t)
    for m, v in res["malach_vs"].items():
        console.print(C.ratio_sentence(m, v))
    console.print(f"wrote {out}/compare.json, {out}/compare.md and {out}/compare.png")
