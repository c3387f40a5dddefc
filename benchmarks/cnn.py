"""CNN benchmark: tickets for LeNet5 and ResNet-20 trained on Fashion-MNIST.

    python benchmarks/cnn.py --model lenet5 --n 21
    python benchmarks/cnn.py --model lenet5 --eps 0.5
    python benchmarks/cnn.py --model resnet20 --n 21

Steps:

1. the target: ``slth train --model M --data fashion-mnist --epochs E`` (LeNet5: 5 epochs,
   ResNet-20: 3), cached as ``<cache>/M-fashion-mnist-e{E}-s{seed}.safetensors`` (``--cache``,
   default ``$SLTH_CACHE/bench-cnn``, ``$SLTH_CACHE`` defaulting to ``~/.cache/slth``); trained
   only when that file is missing;
2. per method: ``slth construct TARGET --method M --n N|--eps E --data fashion-mnist
   --runs-dir OUT/runs/...`` in a fresh run folder, in its own process, timed with
   ``/usr/bin/time -v`` (wall time and peak resident memory of that process; without
   ``/usr/bin/time``: ``resource.getrusage(RUSAGE_CHILDREN)``);
3. one row per (target, method, size) from the run's ``report.json`` and the ticket's graph:
   random and active parameters, G/target, depth of G (conv/linear layers on G's longest path),
   certified bound, largest error found, tightness (bound / error found), accuracies, agreement,
   time, peak memory, where the time went (the report's ``run`` section), and the issue's targets
   (LeNet5: <= 60 s, <= 4 GB, accuracy within 0.1 point, agreement >= 99.9%, tightness <= 10;
   ResNet-20: <= 5 min, <= 12 GB, accuracy within 0.1 point, agreement >= 99.9%, bound never
   below an error found).

Rows accumulate in ``OUT/cnn.json`` (a row is replaced when its target, method and size come
again) and are written as a Markdown table to ``OUT/cnn.md``. Timings are only meaningful on a
machine that runs nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = {"lenet5": 5, "resnet20": 3}
GOALS = {   # the targets on a 2-core machine
    "lenet5": {"seconds": 60, "peak_gb": 4, "accuracy_points": 0.1, "agreement": 0.999,
               "tightness": 10},
    "resnet20": {"seconds": 300, "peak_gb": 12, "accuracy_points": 0.1, "agreement": 0.999,
                 "tightness": None},
}
TIME = "/usr/bin/time"


def cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("SLTH_CACHE", Path.home() / ".cache" / "slth")) / "bench-cnn"


def slth_cmd() -> list[str]:
    exe = shutil.which("slth", path=str(Path(sys.executable).parent)) or shutil.which("slth")
    return [exe] if exe else [sys.executable, "-m", "slth.cli"]


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output to ``log``); its wall time and peak resident memory."""
    use_time = os.path.exists(TIME)
    full = [TIME, "-v", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(full, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    peak_kb = None
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        peak_kb = int(m.group(1)) if m else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # an upper bound
    return {"rc": rc, "wall_seconds": wall, "peak_rss_gb": peak_kb / 2 ** 20}


def train(model: str, epochs: int, seed: int, cache: Path, data_dir: str | None) -> Path:
    path = cache / f"{model}-fashion-mnist-e{epochs}-s{seed}.safetensors"
    if path.exists():
        print(f"target: {path} (cached)", flush=True)
        return path
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [*slth_cmd(), "train", "--model", model, "--data", "fashion-mnist", "--epochs",
           str(epochs), "--seed", str(seed), "--out", str(path)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    print("training:", " ".join(cmd), flush=True)
    log = cache / f"{path.stem}.train.log"
    res = timed(cmd, log)
    if res["rc"] != 0 or not path.exists():
        sys.exit(f"training failed (exit {res['rc']}); see {log}")
    print(f"trained in {res['wall_seconds']:.0f} s", flush=True)
    return path


def ticket_graph(path: Path) -> dict | None:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    return json.loads(head["__metadata__"]["slth"]).get("graph")


def depth_of(graph: dict | None, fallback: int) -> int:
    """Conv/linear layers on G's longest input-output path."""
    if graph is None:
        return fallback
    depth = []
    for nd in graph["nodes"]:
        d = max((depth[j] for j in nd.get("inputs", [])), default=0)
        depth.append(d + (nd["op"] in ("conv", "linear")))
    return depth[-1]


def row_of(model: str, method: str, size: dict, rep: dict, res: dict, cmd: list[str],
           ticket: Path) -> dict:
    found = rep.get("max_error_found")
    bound = rep.get("certified_bound")
    acc_t, acc_g = rep.get("target_accuracy"), rep.get("ticket_accuracy")
    row = {
        "target": model, "method": method, **size,
        "sizes": rep.get("n_per_layer") or rep.get("samples_per_layer"),
        "target_params": rep.get("target_params"),
        "random_params": rep.get("random_params"), "active_params": rep.get("active_params"),
        "g_over_target": rep.get("overparam_factor"),
        "depth_target": len(rep.get("target_dims", [])) - 1,
        "depth_g": depth_of(ticket_graph(ticket), 2 * (len(rep.get("target_dims", [])) - 1)),
        "certified_bound": bound, "max_error_found": found,
        "tightness": rep.get("bound_tightness"), "bound_holds": rep.get("bound_holds"),
        "target_accuracy": acc_t, "ticket_accuracy": acc_g, "agreement": rep.get("agreement"),
        "accuracy_diff_points": None if acc_t is None else 100 * (acc_g - acc_t),
        "wall_seconds": res["wall_seconds"], "report_seconds": rep.get("seconds"),
        "peak_rss_gb": res["peak_rss_gb"],
        "solve_seconds": rep.get("solve_seconds"), "run": rep.get("run"),
        "command": " ".join(cmd),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    g = GOALS.get(model)
    if g:
        row["goals"] = {
            f"time <= {g['seconds']} s": row["wall_seconds"] <= g["seconds"],
            f"memory <= {g['peak_gb']} GB": row["peak_rss_gb"] <= g["peak_gb"],
            f"accuracy within {g['accuracy_points']} point": (
                acc_t is not None and abs(row["accuracy_diff_points"]) <= g["accuracy_points"]),
            f"agreement >= {100 * g['agreement']:g}%": (rep.get("agreement") or 0) >= g["agreement"],
            "bound >= every error found": bool(rep.get("bound_holds")),
        }
        if g["tightness"] is not None:
            row["goals"][f"tightness <= {g['tightness']}"] = (
                row["tightness"] is not None and row["tightness"] <= g["tightness"])
    return row


def fmt(v, spec=".3g"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown(rows: list[dict]) -> str:
    cols = ["target", "method", "size", "random params", "active params", "G/target", "depth G",
            "certified bound", "max error found", "tightness", "acc target", "acc ticket",
            "agreement", "time (s)", "peak mem (GB)", "goals missed"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        size = f"n={r['n']}" if r.get("n") is not None else f"eps={r['eps']:g}"
        if r.get("eps") is not None and r.get("sizes"):
            size += f" (n={','.join(map(str, r['sizes']))})"
        missed = [k for k, ok in (r.get("goals") or {}).items() if not ok]
        out.append("| " + " | ".join([
            r["target"], r["method"], size, fmt(r["random_params"]), fmt(r["active_params"]),
            fmt(r["g_over_target"], ".1f"), f"{r['depth_g']} (F: {r['depth_target']})",
            fmt(r["certified_bound"], ".4g"), fmt(r["max_error_found"], ".4g"),
            fmt(r["tightness"], ".2f"),
            fmt(None if r["target_accuracy"] is None else 100 * r["target_accuracy"], ".2f"),
            fmt(None if r["ticket_accuracy"] is None else 100 * r["ticket_accuracy"], ".2f"),
            fmt(None if r["agreement"] is None else 100 * r["agreement"], ".2f"),
            fmt(r["wall_seconds"], ".1f"), fmt(r["peak_rss_gb"], ".2f"),
            ", ".join(missed) if missed else "none"]) + " |")
    out.append("")
    out.append("Where the time went (report.json `run`, seconds):")
    out.append("")
    for r in rows:
        run = r.get("run") or {}
        parts = {k: run[k] for k in ("chunks_seconds_wall", "chunk_compute_seconds_total",
                                     "assemble_seconds", "evaluate_seconds", "save_seconds")
                 if k in run}
        size = f"n={r['n']}" if r.get("n") is not None else f"eps={r['eps']:g}"
        out.append(f"- {r['target']} {r['method']} {size}: solve/size search "
                   f"{fmt(r.get('solve_seconds'), '.1f')}, "
                   + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                   + f", chunks {run.get('chunks_computed')}; `{r['command']}`")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(EPOCHS), required=True)
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: lenet5 5, resnet20 3)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--n", type=str, default=None, help="block size (default 21)")
    size.add_argument("--eps", type=float, default=None, help="certified error to reach")
    p.add_argument("--methods", default="pensia", help="comma-separated (e.g. pensia,orseau)")
    p.add_argument("--seed", type=int, default=0, help="seed of G (and of the training)")
    p.add_argument("--out", type=Path, default=Path("bench-cnn"))
    p.add_argument("--cache", default=None, help="folder of trained targets")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--target", type=Path, default=None,
                   help="use this target file instead of training one")
    a = p.parse_args(argv)
    if a.n is None and a.eps is None:
        a.n = "21"
    epochs = a.epochs or EPOCHS[a.model]
    target = a.target or train(a.model, epochs, a.seed, cache_dir(a.cache), a.data_dir)
    a.out.mkdir(parents=True, exist_ok=True)
    store = a.out / "cnn.json"
    rows = json.loads(store.read_text())["rows"] if store.exists() else []
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        tag = f"n{a.n}" if a.n is not None else f"eps{a.eps:g}"
        runs = a.out / "runs" / f"{a.model}-{method}-{tag}-s{a.seed}"
        shutil.rmtree(runs, ignore_errors=True)       # a fresh run: never a finished folder
        cmd = [*slth_cmd(), "construct", str(target), "--method", method,
               *(["--n", a.n] if a.n is not None else ["--eps", str(a.eps)]),
               "--data", "fashion-mnist", "--seed", str(a.seed), "--runs-dir", str(runs)]
        if a.data_dir:
            cmd += ["--data-dir", a.data_dir]
        print("running:", " ".join(cmd), flush=True)
        log = a.out / f"{a.model}-{method}-{tag}-s{a.seed}.log"
        res = timed(cmd, log)
        reports = list(runs.glob("*/report.json"))
        if res["rc"] != 0 or not reports:
            print(f"  failed (exit {res['rc']}, {res['wall_seconds']:.1f} s); see {log}:\n"
                  + "\n".join(log.read_text().splitlines()[-5:]), flush=True)
            continue
        rep = json.loads(reports[0].read_text())
        sz = {"n": int(a.n) if a.n is not None and a.n.isdigit() else a.n, "eps": a.eps}
        row = row_of(a.model, method, sz, rep, res, cmd, reports[0].parent / "ticket.safetensors")
        rows = [r for r in rows if (r["target"], r["method"], r.get("n"), r.get("eps"))
                != (a.model, method, sz["n"], sz["eps"])] + [row]
        print(f"  {res['wall_seconds']:.1f} s, {res['peak_rss_gb']:.2f} GB peak, bound "
              f"{row['certified_bound']:.4g}, found {row['max_error_found']:.4g}, accuracy "
              f"{100 * row['target_accuracy']:.2f} -> {100 * row['ticket_accuracy']:.2f}, "
              f"agreement {100 * row['agreement']:.2f}%", flush=True)
        for k, ok in row["goals"].items():
            print(f"    {'ok ' if ok else 'MISS'} {k}", flush=True)
        store.write_text(json.dumps({"rows": rows}, indent=1))
        (a.out / "cnn.md").write_text(markdown(rows))
    print(f"wrote {store} and {a.out / 'cnn.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
