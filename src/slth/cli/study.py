"""``slth study width`` and ``slth study neurons``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import SlthError
from . import study_app
from ..jsonio import write_json
from ._common import (atomic_output_dir, console, parse_float_list, parse_int_list, peak_rss_mb,
                      progress_bar)


def _fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


@study_app.command("width")
@click.option("--methods", default="pensia,orseau,orseau-uniform,malach", show_default=True,
              help="Comma-separated: pensia, orseau, orseau-uniform (orseau with "
                   "--distribution uniform), malach.")
@click.option("--eps-grid", default=None,
              help="Comma-separated eps values [default: 10^-1 to 10^-6, half decades].")
@click.option("--seeds", type=int, default=10, show_default=True,
              help="Seeds per point; the size reported meets eps for a fraction >= 1 - delta.")
@click.option("--pensia-seeds", type=int, default=30, show_default=True,
              help="Seeds per point for pensia, whose search is cheap (0: same as --seeds).")
@click.option("--delta", type=float, default=0.1, show_default=True)
@click.option("--dims", default="8,8,8", show_default=True,
              help="Widths of the random target (a) within the theorems' assumptions.")
@click.option("--trained/--no-trained", default=True, show_default=True,
              help="Also the 64-16-10 net trained on digits (b).")
@click.option("--target", "target_file", type=click.Path(dir_okay=False), default=None,
              help="Also this target file (MLP, CNN or ResNet: .safetensors or .pt2), on the "
                   "box [0,1]; methods that refuse it get no size.")
@click.option("--sweep-eps", type=float, default=0.01, show_default=True,
              help="eps of the sweeps over target width d and depth l.")
@click.option("--sweep-d", default="4,8,16,32", show_default=True, help="Target widths d (depth 2).")
@click.option("--sweep-depth", default="1,2,3,4", show_default=True,
              help="Target depths l (width = first of --dims).")
@click.option("--max-params", type=int, default=20_000_000, show_default=True,
              help="malach: largest G tried (its size grows like 1/eps).")
@click.option("--workers", type=int, default=2, show_default=True, help="Processes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def width_cmd(methods, eps_grid, seeds, pensia_seeds, delta, dims, trained, target_file, sweep_eps, sweep_d, sweep_depth,
              max_params, workers, out):
    """How large must G be? For each method and eps, the smallest size that meets eps (certified)
    w.p. >= 1 - delta over seeds, beside the theorems; then against target width and depth.
    Writes OUT/width.json and OUT/eps.png, OUT/d.png, OUT/depth.png."""
    from ..experiments import width as W

    s = W.Settings(methods=[m.strip() for m in methods.split(",") if m.strip()], seeds=seeds,
                   pensia_seeds=pensia_seeds, delta=delta, dims=parse_int_list(dims, "--dims"), trained=trained,
                   target=target_file,
                   sweep_eps=sweep_eps, sweep_d=parse_int_list(sweep_d, "--sweep-d"),
                   sweep_depth=parse_int_list(sweep_depth, "--sweep-depth"),
                   max_params=max_params, workers=workers)
    if eps_grid is not None:
        s.eps_grid = parse_float_list(eps_grid, "--eps-grid")
    if len(s.dims) < 2:
        raise SlthError(f"--dims needs at least two widths (input and output), got {dims}")
    s.check()
    with atomic_output_dir(out) as tmp:
        with progress_bar() as bar:
            task = bar.add_task("width study", total=None)
            res = W.run(s, progress=lambda done, total, msg: bar.update(
                task, completed=done, total=total, description=msg))
        res["peak_rss_mb"] = peak_rss_mb()
        res["plots"] = W.plot(res, tmp)
        write_json(tmp / "width.json", res)
    t = Table(title=f"smallest size meeting eps (certified) w.p. >= {1 - delta:g} over the seeds: "
                    f"fits over eps = {max(s.eps_grid):g}...{min(s.eps_grid):g} (unless stated)")
    for col in ("target", "method", "seeds", "eps points", "smallest eps", "n = a + C log2(1/eps)",
                "R2 (log)", f"C, R2 (eps <= {s.tail_eps:g}; points)", "median size: C, R2 (log)",
                "n ~ (1/eps)^p", "R2 (power)"):
        t.add_column(col, justify="right")
    for r in W.summary_rows(res):
        t.add_row(r["target"], r["method"], str(r["seeds"]), str(r["points"]), _fmt(r["eps_reached"]),
                  f"{_fmt(r['log_a'], '.1f')} + {_fmt(r['log_C'], '.2f')} log2" if r["log_C"] is not None else "-",
                  _fmt(r["log_r2"], ".3f"),
                  f"{_fmt(r['log_C_tail'], '.2f')}, {_fmt(r['log_r2_tail'], '.3f')} ({r['points_tail']})",
                  f"{_fmt(r['log_C_median'], '.2f')}, {_fmt(r['log_r2_median'], '.3f')}",
                  _fmt(r["power_p"], ".2f"), _fmt(r["power_r2"], ".3f"))
    console.print(t)
    console.print(f"{res['seconds']:.0f} s; wrote {out}/width.json and "
                  f"{', '.join(f'{out}/{p}' for p in res['plots'])}")


@study_app.command("neurons")
@click.option("--dims", default="2,4,8,16,32,64", show_default=True, help="Input dimensions d.")
@click.option("--widths", default="16,32,64,128,256,512,1024,2048", show_default=True,
              help="Hidden widths N of the random 2-layer net.")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--threshold", type=float, default=0.1, show_default=True,
              help="Relative error whose required width is reported per d.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def neurons_cmd(dims, widths, seeds, threshold, out):
    """Malach's note: pruning whole neurons of a random 2-layer net is a random-features model,
    which cannot approximate even one ReLU neuron efficiently; pruning weights can. Writes
    OUT/neurons.json and OUT/neurons.png."""
    from ..experiments import neurons as N

    s = N.Settings(dims=parse_int_list(dims, "--dims"), widths=parse_int_list(widths, "--widths"),
                   seeds=seeds, threshold=threshold)
    s.check()
    with atomic_output_dir(out) as tmp:
        with progress_bar() as bar:
            task = bar.add_task("neuron vs weight pruning", total=None)
            res = N.run(s, progress=lambda done, total, msg: bar.update(
                task, completed=done, total=total, description=msg))
        res["plots"] = N.plot(res, tmp)
        write_json(tmp / "neurons.json", res)
    t = Table(title=f"hidden width N needed for relative error <= {threshold:g} "
                    "(single ReLU neuron, x on the unit sphere)")
    t.add_column("d", justify="right")
    for m in N.METHODS:
        t.add_column(m, justify="right")
    for d in s.dims:
        row = [str(d)]
        for m in N.METHODS:
            w = res["width_needed"][m][str(d)]
            row.append(f"{w:,}" if w else f"> {max(s.widths):,}")
        t.add_row(*row)
    console.print(t)
    console.print(f"wrote {out}/neurons.json and {out}/neurons.png")


@study_app.command("depth")
@click.option("--methods", default="pensia,orseau,burkholz", show_default=True,
              help="Comma-separated registered methods.")
@click.option("--depths", default="1,2,3,4,5,6", show_default=True, help="Target depths l.")
@click.option("--eps-grid", default="1e-2,1e-3", show_default=True, help="Certified errors.")
@click.option("--width", type=int, default=8, show_default=True,
              help="Width of the random targets (within the theorems' assumptions).")
@click.option("--trained/--no-trained", default=True, show_default=True,
              help="Also ReLU nets of each depth trained on digits (hidden width 16).")
@click.option("--max-subsetsum", type=int, default=28, show_default=True,
              help="Largest exact SubsetSum size (pensia n, burkholz rho) the eps search tries; "
                   "beyond it: not reached (its time doubles every 2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Processes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def depth_cmd(methods, depths, eps_grid, width, trained, max_subsetsum, seed, workers, out):
    """What depth costs in width: for targets of depth l = 1..6 and each eps, the depth of G,
    its random and active parameters, time and certified bound, for Pensia and Orseau (depth 2l)
    and Burkholz (depth l+1), beside the theorems. Writes OUT/depth.json and OUT/depth.png."""
    from ..experiments import depth as D

    s = D.Settings(methods=[m.strip() for m in methods.split(",") if m.strip()],
                   depths=parse_int_list(depths, "--depths"),
                   eps_grid=parse_float_list(eps_grid, "--eps-grid"), width=width,
                   trained=trained, seed=seed, workers=workers, max_subsetsum=max_subsetsum)
    s.check()
    with atomic_output_dir(out) as tmp:
        with progress_bar() as bar:
            task = bar.add_task("depth study", total=None)
            res = D.run(s, progress=lambda done, total, msg: bar.update(
                task, completed=done, total=total, description=msg))
        res["peak_rss_mb"] = peak_rss_mb()
        res["plot"] = D.plot(res, tmp)
        write_json(tmp / "depth.json", res)
    t = Table(title="what depth costs in width (sizes found by --eps, certified)")
    for col in ("target", "l", "eps", "method", "G depth", "size", "random params",
                "active params", "theory random", "certified bound", "time"):
        t.add_column(col, justify="right")
    for r in res["rows"]:
        if r.get("refused"):
            t.add_row(r["target"], str(r["depth"]), f"{r['eps']:g}", r["method"],
                      "not reached" if "not reachable" in r["refused"] else "refused",
                      *["-"] * 6)
            continue
        t.add_row(r["target"], str(r["depth"]), f"{r['eps']:g}", r["method"], str(r["g_depth"]),
                  ",".join(map(str, r["size"])), f"{r['random_params']:,}",
                  f"{r['active_params']:,}",
                  f"{r['theory_random_params']:,}" if r.get("theory_random_params") else "-",
                  f"{r['certified_bound']:.3g}", f"{r['seconds']:.1f} s")
    console.print(t)
    console.print(f"{res['seconds']:.0f} s; wrote {out}/depth.json and {out}/depth.png")
