"""Issue 6 scaling benchmark: a ~10M-weight target built with 1 and with 2 Dask workers.

    python benchmarks/scaling.py --out bench-scaling --n 8 --json scaling.json

Target: synthetic 784-3000-3000-10, bias-free, 11,382,000 weights, trained-like (Student-t with 3
degrees of freedom, std 1/sqrt(d_in) per layer, clipped to [-0.5, 0.5]; no data needed). Steps, each
in a fresh process so memory figures are its own:

1. engine: every chunk task of the run's plan (``runtasks.build_chunk``: solve, draw G's rows,
   read them in the target's terms) in one process, ``threads=1``, no Dask, no files (the
   single-threaded engine's throughput);
2. workers=1 and workers=2: the full ``slth.runs.execute`` (LocalCluster of single-threaded workers,
   chunk files, G written into the ticket by the workers, certification, error search);
3. a sample of chunks at n = 21 (the paper's block size), engine only, for the projection.

Prints a summary and writes it as JSON: weights per second, speed-ups, a worker's throughput against
the engine, and the workers needed to build a 25M-weight target in under an hour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIMS = [784, 3000, 3000, 10]


def make_target(path: Path):
    from slth.targets import MLP

    rng = np.random.default_rng(0)
    ws = [np.clip(rng.standard_t(3, (o, i)) / np.sqrt(3 * i), -0.5, 0.5)
          for i, o in zip(DIMS[:-1], DIMS[1:])]
    MLP(ws, [None] * len(ws)).save(path)


def engine(target_path: Path, n: int, sample: int | None = None) -> dict:
    """Solve the plan's chunks in this process, single-threaded (every chunk, or ``sample``
    chunks spread over the largest layer)."""
    from slth.runs import plan_chunks, rows_per_chunk
    from slth.runtasks import build_chunk
    from slth.targets import load_target

    t = load_target(target_path)
    chunks = plan_chunks(t.dims, rows_per_chunk(t.dims))
    if sample:
        big = [c for c in chunks if c.layer == 1]
        chunks = big[:: max(1, len(big) // sample)][:sample]
    secs, weights = [], []
    t0 = time.perf_counter()
    for c in chunks:
        _, _, s, _ = build_chunk(t.weights[c.layer][c.r0:c.r1], None, n, 0, c.layer, c.r0,
                                 c.r1, (0, 1), threads=1)
        secs.append(s)
        weights.append((c.r1 - c.r0) * t.dims[c.layer])
    return {"mode": "engine", "n": n, "chunks": len(chunks), "weights": int(sum(weights)),
            "wall_seconds": time.perf_counter() - t0, "chunk_seconds": secs,
            "chunk_weights": weights, "peak_rss_mb": _rss()}


def workers_run(target_path: Path, n: int, workers: int, runs_dir: Path) -> dict:
    import shutil

    from slth.runs import execute

    shutil.rmtree(runs_dir, ignore_errors=True)   # a fresh run, not a finished one
    t0 = time.perf_counter()
    run = execute(target_path, "pensia", {"n": n, "seed": 0}, runs_dir=runs_dir, workers=workers)
    wall = time.perf_counter() - t0
    s = run.stats
    return {"mode": f"workers={workers}", "n": n, "wall_seconds": wall,
            "chunks": s["chunks_total"], "weights": int(sum(s["chunk_weights"])),
            "chunk_seconds": s["chunk_seconds"], "chunk_weights": s["chunk_weights"],
            **{k: s.get(k) for k in ("cluster_start_seconds", "chunks_seconds_wall",
                                     "assemble_seconds", "evaluate_seconds", "save_seconds")},
            "ascent_seconds": run.report["ascent_seconds"],
            "literal_check_seconds": (run.report["adversarial_seconds"]
                                      - run.report["ascent_seconds"]),
            "client_peak_rss_mb": run.report["peak_rss_mb"],
            "random_params": run.report["random_params"], "density": run.report["density"],
            "certified_bound": run.report["certified_bound"],
            "max_weight_error": run.report["max_weight_error"],
            "ticket_sha256": hashlib.sha256(run.ticket_path.read_bytes()).hexdigest(),
            "ticket_bytes": run.ticket_path.stat().st_size, "peak_rss_mb": _rss()}


def _machine_busy_seconds() -> float:
    """CPU seconds all processes of this machine have used since boot (/proc/stat)."""
    import os
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _wait_until_quiet(cores: float = 0.1, window: float = 5.0, limit: float = 1800.0) -> None:
    """Wait (at most ``limit`` s) until the machine's other processes use < ``cores`` CPUs."""
    t_end = time.time() + limit
    while time.time() < t_end:
        b0 = _machine_busy_seconds()
        time.sleep(window)
        if (_machine_busy_seconds() - b0) / window < cores:
            return
    print("  machine not quiet; measuring anyway", flush=True)


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarize(eng: dict, w1: dict, w2: dict, eng21: dict, weights_goal: float = 25e6,
              hour: float = 3600.0) -> dict:
    W = w1["weights"]
    rate = lambda r: sum(r["chunk_weights"]) / sum(r["chunk_seconds"])  # noqa: E731 per worker
    # cluster start to a complete ticket file flushed to disk (the report's work not included)
    build = lambda r: (r["cluster_start_seconds"] + r["chunks_seconds_wall"]  # noqa: E731
                       + r["assemble_seconds"])
    # after the chunk phase: the widen masks (client) and the report (ascent and literal tasks on
    # the workers, bound in the client)
    after1 = w1["wall_seconds"] - w1["cluster_start_seconds"] - w1["chunks_seconds_wall"]
    out = {
        "target_weights": W,
        "engine_weights_per_s": W / eng["wall_seconds"],
        "workers1_chunk_phase_weights_per_s": W / w1["chunks_seconds_wall"],
        "workers2_chunk_phase_weights_per_s": W / w2["chunks_seconds_wall"],
        "speedup_chunk_phase_2_vs_1": w1["chunks_seconds_wall"] / w2["chunks_seconds_wall"],
        "speedup_construction_2_vs_1": build(w1) / build(w2),
        "speedup_ascent_2_vs_1": w1["ascent_seconds"] / w2["ascent_seconds"],
        "speedup_after_chunks_2_vs_1": after1 / (w2["wall_seconds"] - w2["cluster_start_seconds"]
                                                 - w2["chunks_seconds_wall"]),
        "workers1_end_to_end_weights_per_s": W / w1["wall_seconds"],
        "workers2_end_to_end_weights_per_s": W / w2["wall_seconds"],
        "speedup_end_to_end_2_vs_1": w1["wall_seconds"] / w2["wall_seconds"],
        "worker_vs_engine_throughput_per_chunk": rate(w1) / rate(eng),
        "after_chunks_seconds_workers1": after1,
        "tickets_identical_1_vs_2_workers": w1["ticket_sha256"] == w2["ticket_sha256"],
    }
    # worker-seconds: chunks at the measured per-chunk rate; the rest (widen layers, ascent,
    # literal checks) scaled from the 1-worker run by target weights x n (an upper estimate:
    # the ascent grows with the target's weights only)
    proj = {}
    for r_run in (w2, eng21):
        r, n = rate(r_run), r_run["n"]
        chunks = weights_goal / r
        rest = (w1["chunks_seconds_wall"] - sum(w1["chunk_seconds"]) + after1) \
            * (n / w1["n"]) * weights_goal / W
        budget = hour - w1["cluster_start_seconds"]
        proj[f"n={n}"] = {"per_worker_weights_per_s": r, "chunk_worker_seconds": chunks,
                          "other_worker_seconds_projected": rest,
                          "workers_for_1h": math.ceil((chunks + rest) / budget),
                          "G_params_projected": (w1["random_params"] * (n / w1["n"])
                                                 * weights_goal / W)}
    out["projection_25M_weights_1h"] = proj
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-scaling"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--sample-n21", type=int, default=4, help="chunks measured at n = 21")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quiet-limit", type=float, default=1800.0,
                    help="seconds to wait at most, before each step, for the machine to be quiet")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tp = a.out / "target-784-3000-3000-10.safetensors"
    if a.step:   # one measurement, in its own process
        kind, _, arg = a.step.partition(":")
        res = (engine(tp, a.n) if kind == "engine" else
               engine(tp, 21, a.sample_n21) if kind == "engine21" else
               workers_run(tp, a.n, int(arg), a.out / f"runs-w{arg}"))
        (a.out / f"{a.step.replace(':', '')}.json").write_text(json.dumps(res))
        return
    if not tp.exists():
        make_target(tp)
    results = {}
    for step in ("engine", "workers:1", "workers:2", "engine21"):
        _wait_until_quiet(limit=a.quiet_limit)
        print(f"[{time.strftime('%H:%M:%S')}] {step}", flush=True)
        busy0, ours0 = _machine_busy_seconds(), _children_cpu_seconds()
        subprocess.run([sys.executable, __file__, "--out", str(a.out), "--n", str(a.n),
                        "--sample-n21", str(a.sample_n21), "--step", step], check=True)
        results[step] = json.loads((a.out / f"{step.replace(':', '')}.json").read_text())
        # CPU time used on this machine by processes other than this step: should be ~0
        results[step]["foreign_cpu_seconds"] = ((_machine_busy_seconds() - busy0)
                                                - (_children_cpu_seconds() - ours0))
        print(f"  foreign CPU seconds: {results[step]['foreign_cpu_seconds']:.1f}", flush=True)
    summary = summarize(results["engine"], results["workers:1"], results["workers:2"],
                        results["engine21"])
    full = {"dims": DIMS, "n": a.n, "summary": summary,
            "runs": {k: {kk: vv for kk, vv in v.items()
                         if kk not in ("chunk_seconds", "chunk_weights")}
                     for k, v in results.items()},
            "chunk_seconds": {k: v["chunk_seconds"] for k, v in results.items()}}
    print(json.dumps({"summary": summary, "runs": full["runs"]}, indent=2))
    if a.json:
        a.json.write_text(json.dumps(full, indent=2))


if __name__ == "__main__":
    main()
