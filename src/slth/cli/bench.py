"""``slth bench subsetsum``."""

from __future__ import annotations

import time
from pathlib import Path
import numpy as np
import click
from rich.table import Table

from ..errors import SlthError
from . import bench_app
from ..jsonio import write_json
from ._common import console, peak_rss_mb, progress_bar

BACKENDS = {"gurobi", "highs"}


def _bench_target(target: Path | None, seed: int):
    from ..data import fashion_available
    from ..targets import default_target, load_target, synthetic_exp1_target

    if target is not None:
        return load_target(target), f"target from {target}"
    if fashion_available():
        with progress_bar(transient=True) as bar:
            task = bar.add_task("training default 784-500-10 target", total=10)
            mlp, desc = default_target("fashion-mnist", progress=lambda e, l: bar.update(task, completed=e))
        return mlp, desc
    return synthetic_exp1_target(seed), ("synthetic 784-500-10 net (Fashion-MNIST absent): "
                                         "Student-t weights scaled to Experiment 1's range")


@bench_app.command("subsetsum")
@click.option("--workload", default="pensia-exp1", show_default=True,
              help="'pensia-exp1' (the paper's Experiment 1: shared coefficient vectors) or "
                   "'pensia-construction' (per-instance coefficients b*a, as the real "
                   "construction solves them, 2 instances per parameter).")
@click.option("--target", type=click.Path(path_type=Path), default=None,
              help="Target net: a state_dict (.pt) or .safetensors file. Default: a 784-500-10 "
                   "net trained on Fashion-MNIST (cached), else a synthetic one.")
@click.option("--objective", default="error", show_default=True,
              help="'error' (exact minimum error) or 'size' (fewest coefficients within --eps).")
@click.option("--eps", type=float, default=0.01, show_default=True,
              help="Per-weight tolerance (the paper's 0.01).")
@click.option("--n", "n", type=int, default=21, show_default=True,
              help="Coefficients per instance (the paper's 21).")
@click.option("--compare", default="", help="MIP baselines to run on a sample of the same "
              "instances: comma-separated from gurobi,highs.")
@click.option("--compare-sample", type=int, default=200, show_default=True,
              help="Instances per baseline.")
@click.option("--time-limit", type=float, default=None,
              help="Seconds per MIP instance (default: none).")
@click.option("--threads", type=int, default=None,
              help="Threads for our solver (default: all cores).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the coefficients and the sample.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the figures as JSON here.")
def bench_subsetsum(workload, target, objective, eps, n, compare, compare_sample, time_limit,
                    threads, seed, json_path):
    """Time the exact SubsetSum engine on Pensia et al.'s Experiment 1 (397,000 instances,
    n = 21) or on the real construction's per-instance coefficients (2 x 397,000), and compare
    with the paper's MIP on a sample of the same instances."""
    from ..experiments.bench_subsetsum import WORKLOADS

    backends = _check_bench_args(workload, objective, eps, n, compare, compare_sample, threads)
    mlp, desc = _bench_target(target, seed)
    console.print(f"[bold]target[/]: {desc}")
    wl = WORKLOADS[workload](mlp, n=n, seed=seed)
    console.print(f"[bold]workload[/]: {len(wl.targets):,} instances, n = {n}, "
                  f"coefficients {wl.coefficients}")
    result, ours = _time_engine(wl, objective, eps, threads)
    result.update(workload=workload, target=desc, n=n, seed=seed)
    if backends:
        _run_baselines(wl, ours, result, backends, compare_sample, time_limit, seed)
    result["peak_rss_mb"] = peak_rss_mb()
    _print_bench(result, ours)
    if json_path:
        write_json(json_path, result)
        console.print(f"wrote {json_path}")


def _check_bench_args(workload, objective, eps, n, compare, compare_sample, threads) -> list[str]:
    from ..experiments.bench_subsetsum import WORKLOADS

    if workload not in WORKLOADS:
        raise SlthError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if objective not in ("error", "size"):
        raise SlthError(f"--objective must be 'error' or 'size', got {objective!r}")
    if not eps > 0:
        raise SlthError(f"--eps must be > 0, got {eps}")
    if not 1 <= n <= 40:
        raise SlthError(f"--n must be between 1 and 40, got {n}")
    backends = [b.strip() for b in compare.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise SlthError(f"--compare accepts gurobi,highs; got {', '.join(bad)}")
    if compare_sample < 1:
        raise SlthError(f"--compare-sample must be >= 1, got {compare_sample}")
    if threads is not None and threads < 1:
        raise SlthError(f"--threads must be >= 1, got {threads}")
    return backends


def _time_engine(wl, objective, eps, threads):
    """Compile, then time the exact engine on the whole workload: (result dict, its answer)."""
    import numba

    from ..experiments.bench_subsetsum import PAPER_EXP1
    from ..subsetsum import solve

    N = len(wl.targets)
    t0 = time.perf_counter()
    solve(wl.coeffs[:2], wl.targets[:4], groups=np.array([0, 0, 1, 1]), objective=objective, eps=eps)
    solve(wl.coeffs[:4], wl.targets[:4], groups=np.arange(4), objective=objective, eps=eps)
    compile_s = time.perf_counter() - t0
    with progress_bar() as bar:
        task = bar.add_task(f"exact solver ({objective})", total=N)
        t0 = time.perf_counter()
        ours = solve(wl.coeffs, wl.targets, groups=wl.groups, objective=objective, eps=eps,
                     threads=threads, progress=lambda k: bar.update(task, completed=k))
        seconds = time.perf_counter() - t0
    n = wl.coeffs.shape[-1]
    return {"instances": N, "objective": objective, "eps": eps, "seconds": seconds,
            "compile_seconds": compile_s, "per_instance_us": seconds / N * 1e6,
            "mean_abs_error": float(ours.errors.mean()), "max_abs_error": float(ours.errors.max()),
            "coefficients_total": N * n, "coefficients_kept": ours.kept,
            "all_within_eps": bool((ours.errors <= eps).all()),
            "infeasible": int((~ours.feasible).sum()),
            "threads": threads or numba.config.NUMBA_NUM_THREADS, "paper": PAPER_EXP1,
            "baselines": {}}, ours


def _run_baselines(wl, ours, result, backends, compare_sample, time_limit, seed):
    from ..experiments.bench_subsetsum import compare_baselines

    N = result["instances"]
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(N, size=min(compare_sample, N), replace=False))
    for b in backends:
        with progress_bar() as bar:
            task = bar.add_task(f"MIP baseline {b}", total=len(sample))
            result["baselines"][b] = compare_baselines(
                wl, ours, sample, b, result["objective"], result["eps"], result["seconds"] / N,
                progress=lambda k: bar.update(task, completed=k), time_limit=time_limit)


def _print_bench(result, ours):
    N, n, p = result["instances"], result["n"], result["paper"]
    table = Table(title=f"SubsetSum, {result['workload']} ({N:,} instances, n = {n}, "
                        f"objective {result['objective']})")
    for col in ("solver", "per instance", "mean |err|", "max |err|", "kept / instance",
                "speed-up", "worse than ours", "better than ours"):
        table.add_column(col, justify="right")
    table.add_row("slth exact", f"{result['per_instance_us']:.2f} µs", f"{ours.errors.mean():.2e}",
                  f"{ours.errors.max():.2e}", f"{ours.kept / N:.2f}", "1×", "-", "-")
    for r in result["baselines"].values():
        table.add_row(r["solver"], f"{r['per_instance_s']:.3f} s", f"{r['mean_abs_error']:.2e}",
                      f"{r['max_abs_error']:.2e}", f"{r['coefficients_kept_per_instance']:.2f}",
                      f"{r['speedup']:,.0f}×", str(r["worse_than_ours"]), str(r["better_than_ours"]))
    table.add_row("paper (Gurobi, 36 cores)", f"{p['seconds'] / p['instances']:.3f} s", "-",
                  f"≤ {p['eps']}", f"{p['coefficients_kept'] / p['instances']:.2f}", "-", "-", "-")
    console.print(table)
    console.print(f"whole workload: {result['seconds']:.2f} s on {result['threads']} threads "
                  f"(paper: {p['seconds']:,} s on {p['cores']} cores); kept "
                  f"{ours.kept:,} of {N * n:,} coefficients (paper: {p['coefficients_kept']:,}); "
                  f"all within eps={result['eps']}: {result['all_within_eps']}; peak memory "
                  f"{result['peak_rss_mb']:.0f} MiB")
