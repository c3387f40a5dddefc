"""Run folders: resumable constructions under ``runs/<method>-<hash of settings>/``.

>>> run = execute(target, "pensia", {"n": 21, "seed": 0}, workers=2)   # doctest: +SKIP
>>> run.folder, run.report["certified_bound"], run.stats["chunks_computed"]   # doctest: +SKIP

A run folder holds

* ``settings.json``: everything the result depends on (method, target fingerprint, construction
  settings, domain, data; their SHA-256 names the folder) and the chunk plan;
* ``run.log``: one timestamped line per event (start, chunk computed / reused / corrupt, finished);
* ``chunks/L{layer}-{r0}-{r1}.{sha256}.npz`` while the run is in progress: one finished chunk of
  output rows each, numpy arrays only (read with ``allow_pickle=False``), written to a temporary
  file and renamed into place; the name carries the SHA-256 of the file, checked before a chunk is
  used (a mismatch: the file is deleted and the chunk recomputed). Removed when the run finishes;
* ``ticket.safetensors``, ``sparsity_report.json`` (density and sparsity per layer and in total)
  and ``report.json``, written last: a folder with ``report.json`` is finished and never recomputed.

Pensia's construction with a block size n is split into chunks of output rows
(``pensia.solve_rows``). Every row's draws come from its own seeded streams, so the ticket depends
neither on the chunking nor on the number of workers nor on the order chunks finish: it is
byte-identical to ``pensia.construct`` in one process. A run killed at any point (Ctrl-C, kill -9,
a lost worker) resumes from its finished chunks. Other methods and ``eps`` mode run as one piece in
this process, still in a run folder (resumable only as a whole).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import resource
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SlthError
from .targets import MLP, load_target

CHUNK_WEIGHTS = 65_536   # target weights per chunk: ~0.3 s at n = 8, ~9 s at n = 21 on one core


@dataclass(frozen=True)
class Chunk:
    """Output rows r0:r1 of target layer ``layer``."""

    layer: int
    r0: int
    r1: int

    @property
    def name(self) -> str:
        return f"L{self.layer}-{self.r0:07d}-{self.r1:07d}"


@dataclass
class Run:
    """A run folder and what this call did. stats: chunks_total / reused / computed / corrupt,
    chunk_seconds (compute time of each chunk computed now, s), phase times (s), finished_before."""

    folder: Path
    report: dict
    stats: dict = field(default_factory=dict)

    @property
    def ticket_path(self) -> Path:
        return self.folder / "ticket.safetensors"


# ------------------------------------------------------------------ settings and folders
def settings_key(target: MLP, method: str, settings: dict, domain, data: str | None) -> dict:
    """What a run's result depends on (not: workers, scheduler, threads, chunk size, paths)."""
    return {"method": method, "target_fingerprint": target.fingerprint(),
            "target_dims": target.dims, "settings": settings,
            "domain": domain.as_dict(), "data": data}


def settings_hash(key: dict) -> str:
    text = json.dumps(key, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rows_per_chunk(dims: list[int], chunk_weights: int = CHUNK_WEIGHTS) -> list[int]:
    """Per layer, the output rows of one chunk: each layer is cut into equal chunks of at most
    about ``chunk_weights`` target weights (at least one row)."""
    out = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        k = -(-d_in * d_out // max(1, chunk_weights))     # number of chunks
        out.append(-(-d_out // k))
    return out


def plan_chunks(dims: list[int], rows: list[int]) -> list[Chunk]:
    """The chunks of a target with layer widths ``dims``, ``rows[i]`` output rows each."""
    return [Chunk(i, r, min(d_out, r + rows[i])) for i, d_out in enumerate(dims[1:])
            for r in range(0, d_out, rows[i])]


class RunLog:
    """Appends timestamped lines to ``run.log`` (flushed at once, so a kill loses nothing)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


# ------------------------------------------------------------------ chunk files
class ChunkStore:
    """Finished chunks of one run: ``{name}.{sha256}.npz`` files in ``folder``."""

    def __init__(self, folder: Path, log: Callable[[str], None]):
        self.folder = folder
        self.log = log
        self.corrupt = 0
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".tmp-*"):   # left by a kill mid-write; we hold the run's lock
            tmp.unlink()

    def save(self, chunk: Chunk, arrays: dict[str, np.ndarray]) -> Path:
        """Write atomically: temp file, fsync, rename to a name that carries its SHA-256."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        path = self.folder / f"{chunk.name}.{hashlib.sha256(data).hexdigest()}.npz"
        tmp = self.folder / f".tmp-{chunk.name}-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def load(self, chunk: Chunk, expect: dict[str, tuple]) -> dict[str, np.ndarray] | None:
        """The chunk's arrays if a file with a matching checksum and the expected shapes exists;
        a file that fails either check is deleted (it will be recomputed, never used)."""
        found = None
        for path in sorted(self.folder.glob(f"{chunk.name}.*.npz")):
            arrays = _read_verified(path, expect) if found is None else None
            if arrays is not None:
                found = arrays
                continue
            if found is None:
                self.corrupt += 1
                self.log(f"chunk {chunk.name}: {path.name} is corrupt (checksum or content "
                         "mismatch); deleted, will recompute")
            path.unlink()
        return found



def _read_verified(path: Path, expect: dict[str, tuple]) -> dict[str, np.ndarray] | None:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != path.name.split(".")[1]:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if {k: v.shape for k, v in arrays.items()} == expect else None


def solve_chunk(Wr: np.ndarray, cr: np.ndarray | None, n: int, seed: int, layer: int, r0: int,
                r1: int, halves: tuple, threads: int | None = 1):
    """One chunk's SubsetSums: rows r0:r1 of one target layer, given as Wr [r1 - r0, d_in] (and
    their biases cr), solved by ``pensia.solve_rows``.

    Returns (arrays, seconds, where): ``mask`` uint8 [2, rows, d_in, ceil(n/8)] (bits along n),
    ``sums`` float64 [2, rows, d_in], and with a bias ``bias_mask`` [rows, ceil(n/8)] and
    ``bias_sums`` [rows]. The out-weights b are not returned: they are redrawn from their streams.
    Run on Dask workers with threads=1 (single-threaded workers)."""
    from .constructions.pensia import solve_rows

    t0 = time.perf_counter()
    # solve_rows takes absolute row numbers and reads only rows r0:r1; np.zeros leaves the rows
    # above r0 as untouched (uncommitted) memory
    W = np.zeros((r1, Wr.shape[1]))
    W[r0:] = Wr
    c = None
    if cr is not None:
        c = np.zeros(r1)
        c[r0:] = cr
    sol = solve_rows(W, c, n, seed, layer, range(r0, r1), halves, threads)
    arrays = {"mask": np.packbits(sol.mask, axis=-1), "sums": sol.sums}
    if sol.bias_mask is not None:
        arrays["bias_mask"] = np.packbits(sol.bias_mask, axis=-1)
        arrays["bias_sums"] = sol.bias_sums
    try:
        from distributed import get_worker
        where = get_worker().address
    except (ImportError, ValueError):
        where = "this process"
    return arrays, time.perf_counter() - t0, where


def _expected_shapes(chunk: Chunk, dims: list[int], n: int, has_bias: bool) -> dict:
    rows, d_in, nb = chunk.r1 - chunk.r0, dims[chunk.layer], (n + 7) // 8
    out = {"mask": (2, rows, d_in, nb), "sums": (2, rows, d_in)}
    if has_bias:
        out.update(bias_mask=(rows, nb), bias_sums=(rows,))
    return out


# ------------------------------------------------------------------ the run
def execute(target: MLP | str | os.PathLike, method: str = "pensia", settings: dict | None = None,
            *, domain=None, data: str | None = None, data_dir=None,
            runs_dir: str | os.PathLike = "runs", workers: int | None = None,
            scheduler: str | None = None, threads: int | None = None,
            chunk_weights: int = CHUNK_WEIGHTS, compact: bool = False,
            evaluate_options: dict | None = None,
            progress: Callable[[str, int | None, int | None], None] | None = None) -> Run:
    """Build, certify and save a ticket in ``runs_dir/<method>-<hash>/``, resuming what a
    previous call left there; a finished run is returned as it is.

    settings: the construction's keywords (``n`` or ``eps``, ``seed``, method options).
    data: dataset name for the report's accuracy figures (``slth.data``), or None.
    workers / scheduler: a LocalCluster of that many single-threaded workers, or an existing
    Dask scheduler's address; neither: this process, ``threads`` numba threads (None: all cores).
    evaluate_options: keywords for ``report.evaluate`` (e.g. restarts, steps of the gradient
    ascent); they change only the report's search for large errors, so they are not hashed.
    progress(message, done, total): called as work proceeds (done/total in chunks, or None).
    """
    from .certify import Domain

    t_start = time.perf_counter()
    say = progress or (lambda msg, done=None, total=None: None)
    target_label = None
    if not isinstance(target, MLP):
        target_label = str(target)
        target = load_target(target)
    domain = domain or Domain()
    ds = None
    if data:
        from .data import load_dataset
        ds = load_dataset(data, data_dir)
        if ds.dim != target.dims[0]:
            raise SlthError(f"{data} has {ds.dim} inputs but the target expects "
                            f"{target.dims[0]}; pick the data the target was trained on")
    settings = dict(settings or {})
    settings.setdefault("seed", 0)
    chunked = method == "pensia" and settings.get("n") is not None
    if chunked:
        settings["n"] = _pensia_sizes(settings["n"], target.depth)
        settings.setdefault("prune_dead", False)
    if scheduler is not None:   # fail before touching the disk
        from .distributed import probe
        probe(scheduler)
    key = settings_key(target, method, settings, domain, data)
    folder = Path(runs_dir) / f"{method}-{settings_hash(key)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlthError(f"cannot create run folder {folder}: {e.strerror}; choose a writable "
                        "--runs-dir") from None
    with _locked(folder):
        log = RunLog(folder / "run.log")
        if (folder / "report.json").exists():
            log("asked again: run already finished, not recomputed")
            if compact and not (folder / "ticket.compact.safetensors").exists():
                from .ticket import load_ticket
                load_ticket(folder / "ticket.safetensors").save_compact(
                    folder / "ticket.compact.safetensors")
            report = json.loads((folder / "report.json").read_text())
            return Run(folder, report, {"finished_before": True})
        if (folder / "settings.json").exists():
            plan = json.loads((folder / "settings.json").read_text()).get("chunk_rows_per_layer")
        else:
            plan = rows_per_chunk(target.dims, chunk_weights) if chunked else None
            _write_json(folder / "settings.json", {**key, "chunk_rows_per_layer": plan,
                                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        where = (f"{workers} local Dask workers" if workers else
                 f"Dask scheduler {scheduler}" if scheduler else "this process")
        log(f"start: {method} {settings} on {where}")
        stats = {"finished_before": False}
        try:
            if chunked:
                store = ChunkStore(folder / "chunks", log)
                con = _pensia_chunked(target, settings, plan_chunks(target.dims, plan), store,
                                      log, say, stats, workers, scheduler, threads)
            else:
                if workers or scheduler:
                    log("only pensia with n is split into chunks: this run uses one process")
                from .constructions import construct
                t0 = time.perf_counter()
                con = construct(target, method=method, domain=domain,
                                progress=lambda m: say(m, None, None), **settings)
                stats.update(chunks_total=1, chunks_reused=0, chunks_computed=1,
                             chunk_seconds=[time.perf_counter() - t0])
            report = _finish(folder, target, con, domain, ds, settings["seed"],
                             compact, say, stats, evaluate_options or {})
        except BaseException as e:
            log(f"stopped: {type(e).__name__}: {str(e)[:200]}")
            raise
        report.update(seconds=time.perf_counter() - t_start,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      data=data, target=target_label, run=_run_summary(folder, stats, where))
        _write_json(folder / "report.json", report)   # last: its presence marks the run finished
        shutil.rmtree(folder / "chunks", ignore_errors=True)
        log(f"finished in {report['seconds']:.1f} s: {stats.get('chunks_computed')} chunks "
            f"computed, {stats.get('chunks_reused')} reused")
        return Run(folder, report, stats)


def _pensia_sizes(n, depth: int) -> list[int]:
    ns = [int(n)] * depth if np.ndim(n) == 0 else [int(k) for k in n]
    if len(ns) != depth:
        raise SlthError(f"--n gave {len(ns)} sizes for a target of {depth} layers")
    if any(not 1 <= k <= 40 for k in ns):
        raise SlthError(f"block sizes must be between 1 and 40, got {ns}")
    return ns


def _pensia_chunked(target, settings, chunks, store, log, say, stats, workers, scheduler, threads):
    """Solve every chunk (reusing verified chunk files), then assemble the ticket."""
    ns, seed, prune_dead = settings["n"], settings["seed"], settings["prune_dead"]
    halves = [(0, 1) if (i == 0 or not prune_dead) else (0,) for i in range(target.depth)]
    has_bias = [b is not None for b in target.biases]
    results = {}
    for ch in chunks:
        arrays = store.load(ch, _expected_shapes(ch, target.dims, ns[ch.layer], has_bias[ch.layer]))
        if arrays is not None:
            results[ch] = arrays
    pending = [ch for ch in chunks if ch not in results]
    stats.update(chunks_total=len(chunks), chunks_reused=len(results),
                 chunks_computed=0, chunk_seconds=[], chunk_weights=[],
                 chunks_corrupt=store.corrupt)
    if results:
        log(f"resuming: {len(results)} of {len(chunks)} chunks already done")
    say("SubsetSum chunks", len(results), len(chunks))

    def args_of(ch):
        c = target.biases[ch.layer]
        return (target.weights[ch.layer][ch.r0:ch.r1], None if c is None else c[ch.r0:ch.r1],
                ns[ch.layer], seed, ch.layer, ch.r0, ch.r1, halves[ch.layer])

    def done(ch, out):
        arrays, secs, where = out
        path = store.save(ch, arrays)
        results[ch] = arrays
        stats["chunks_computed"] += 1
        stats["chunk_seconds"].append(secs)
        stats["chunk_weights"].append((ch.r1 - ch.r0) * target.dims[ch.layer])
        log(f"chunk {ch.name} computed in {secs:.3f} s on {where}: {path.name}")
        say("SubsetSum chunks", len(results), len(chunks))

    t0 = time.perf_counter()
    if pending and (workers or scheduler):
        from .distributed import client_for, n_workers, run_tasks
        with client_for(workers, scheduler) as client:
            stats["cluster_start_seconds"] = time.perf_counter() - t0
            log(f"Dask cluster with {n_workers(client)} workers at {client.scheduler.address} "
                f"(dashboard {client.dashboard_link})")
            for ch, out in run_tasks(client, solve_chunk, pending, args_of):
                done(ch, out)
    else:
        for ch in pending:
            done(ch, solve_chunk(*args_of(ch), threads=threads))
    stats["chunks_seconds_wall"] = time.perf_counter() - t0
    say("assembling G and the masks", None, None)
    t1 = time.perf_counter()
    con = _pensia_assemble(target, ns, seed, prune_dead, chunks, results,
                           stats["chunks_seconds_wall"])
    stats["assemble_seconds"] = time.perf_counter() - t1
    return con


def _pensia_assemble(target, ns, seed, prune_dead, chunks, results, solve_s):
    """The ticket and info of ``pensia.construct(target, n=ns, seed=seed, prune_dead=...)`` from
    the chunks' answers (same arrays, same metadata: the saved ticket is byte-identical)."""
    from .constructions import Construction
    from .constructions.pensia import LayerSolution, assemble_layers, draw_in, draw_out
    from .ticket import Ticket

    layers, effs = [], []
    for i, n in enumerate(ns):
        d_in, d_out = target.dims[i], target.dims[i + 1]
        part = [results[ch] for ch in chunks if ch.layer == i]
        has_bias = target.biases[i] is not None
        a, beta = draw_in(d_in, n, has_bias, seed, i)
        b, bb = draw_out(range(d_out), d_in, n, has_bias, seed, i)
        mask = np.unpackbits(np.concatenate([p["mask"] for p in part], axis=1), axis=-1,
                             count=n).astype(bool)
        sol = LayerSolution(n, a, b, mask, np.concatenate([p["sums"] for p in part], axis=1))
        if has_bias:
            sol.beta, sol.bb = beta, bb
            sol.bias_mask = np.unpackbits(np.concatenate([p["bias_mask"] for p in part]),
                                          axis=-1, count=n).astype(bool)
            sol.bias_sums = np.concatenate([p["bias_sums"] for p in part])
        layers.extend(assemble_layers(sol, seed, i))
        effs.append(sol.effective())
        del sol, b, mask
    # the lines below mirror the end of pensia.construct (see the module docstring)
    max_w_err = max(max(float(np.abs(e.pos - W).max()),
                        float(np.abs(e.neg + W).max()) if i == 0 or not prune_dead else 0.0)
                    for i, (e, W) in enumerate(zip(effs, target.weights)))
    bias_err = max([float(np.abs(e.bias - c).max()) for e, c in zip(effs, target.biases)
                    if c is not None] or [0.0])
    ticket = Ticket(layers, {
        "method": "pensia", "seed": seed, "n_per_layer": ns, "target_dims": target.dims,
        "target_has_bias": target.has_bias, "prune_dead": prune_dead,
        "target_fingerprint": target.fingerprint(),
    })
    info = {"method": "pensia", "n_per_layer": ns, "neurons_per_target_weight": [2 * k for k in ns],
            "width_per_layer": ticket.widths, "max_weight_error": max(max_w_err, bias_err),
            "subsetsum_seconds": solve_s, "size_search": [], "eps": None}
    return Construction(ticket, info)


def _finish(folder, target, con, domain, ds, seed, compact, say, stats,
            evaluate_options) -> dict:
    """Certify and measure the ticket (``report.evaluate``); write the ticket and its sparsity
    report. Returns the report (written by the caller, last)."""
    from .report import evaluate

    t0 = time.perf_counter()
    rep = evaluate(target, con, domain, ds, seed=seed, progress=lambda m: say(m, None, None),
                   **evaluate_options)
    rep.update({k: v for k, v in con.info.items() if k.startswith("theory_")})
    stats["evaluate_seconds"] = time.perf_counter() - t0
    say("writing the ticket", None, None)
    t1 = time.perf_counter()
    con.ticket.save(folder / "ticket.safetensors")
    if compact:
        con.ticket.save_compact(folder / "ticket.compact.safetensors")
    _write_json(folder / "sparsity_report.json", con.ticket.sparsity_report())
    stats["save_seconds"] = time.perf_counter() - t1
    return rep


def _run_summary(folder, stats, where) -> dict:
    keep = ("chunks_total", "chunks_reused", "chunks_computed", "chunks_corrupt",
            "cluster_start_seconds", "chunks_seconds_wall", "assemble_seconds",
            "evaluate_seconds", "save_seconds")
    out = {"folder": str(folder), "ran_on": where, **{k: stats[k] for k in keep if k in stats}}
    if stats.get("chunk_seconds"):
        out["chunk_compute_seconds_total"] = float(sum(stats["chunk_seconds"]))
    return out


# ------------------------------------------------------------------ listing
def list_runs(runs_dir: str | os.PathLike = "runs") -> list[dict]:
    """One dict per run folder: name, method, status ("finished", "k/N chunks", "started"),
    settings, target dims, density and certified bound when finished."""
    out = []
    root = Path(runs_dir)
    for folder in sorted(root.glob("*-*")) if root.is_dir() else []:
        if not (folder / "settings.json").exists():
            continue
        st = json.loads((folder / "settings.json").read_text())
        row = {"name": folder.name, "folder": str(folder), "method": st.get("method"),
               "target_dims": st.get("target_dims"), "settings": st.get("settings"),
               "created": st.get("created")}
        if (folder / "report.json").exists():
            rep = json.loads((folder / "report.json").read_text())
            row.update(status="finished", density=rep.get("density"),
                       sparsity=rep.get("sparsity"), certified_bound=rep.get("certified_bound"))
        elif st.get("chunk_rows_per_layer"):
            total = len(plan_chunks(st["target_dims"], st["chunk_rows_per_layer"]))
            done = len(list((folder / "chunks").glob("L*.npz")))
            row["status"] = f"{done}/{total} chunks"
        else:
            row["status"] = "started"
        out.append(row)
    return out


# ------------------------------------------------------------------ helpers
class _locked:
    """An exclusive lock on a run folder (released by the OS if the process dies)."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self):
        self.f = open(self.path, "a")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise SlthError(f"run folder {self.path.parent} is in use by another slth process; "
                            "wait for it to finish or use another --runs-dir") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
