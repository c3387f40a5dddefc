"""Run folders: resumable constructions under ``runs/<method>-<hash of settings>/``.

>>> run = execute(target, "pensia", {"n": 21, "seed": 0}, workers=2)   # doctest: +SKIP
>>> run.folder, run.report["certified_bound"], run.stats["chunks_computed"]   # doctest: +SKIP

A run folder holds

* ``settings.json``: everything the result depends on (method, target fingerprint, construction
  settings, domain, data; their SHA-256 names the folder) and the chunk plan;
* ``run.log``: one timestamped line per event (start, chunk computed / reused / corrupt, finished);
* ``chunks/L{layer}-{r0}-{r1}[-n{size}].{sha256}.npz`` while the run is in progress: one finished
  chunk of output rows each (its state: masks, effective rows, reductions; the size is named in
  ``--eps`` runs, which try several), numpy arrays only (read with ``allow_pickle=False``),
  written to a temporary file and renamed into place; the name carries the SHA-256 of the file,
  checked before a chunk is used (a mismatch: the file is deleted and the chunk recomputed).
  Removed when the run finishes;
* ``ticket.safetensors`` (filled piece by piece as ``ticket.safetensors.<attempt>.part``, renamed
  once complete), ``sparsity_report.json`` (density and sparsity per layer and in total) and
  ``report.json``, written last: a folder with ``report.json`` is finished and never recomputed.

Every construction runs through the same driver (``slth.pipeline.build``): chunks of output rows
solved on their own (``method.solve``), on this process or Dask, so the ticket depends neither on
the chunking nor on the number of workers nor on the order chunks finish. A run killed at any
point (Ctrl-C, kill -9, a lost worker) resumes from its finished chunks - in ``--eps`` runs also
in the middle of the size search - and G's rows of those are redrawn, not solved again. The
client never holds G (``slth.tasks``).
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

from .distributed import n_workers, pool_for, probe
from .errors import SlthError
from .jsonio import jsonable, write_json
from .pipeline import CHUNK_WEIGHTS, Chunk, layer_shapes, plan_chunks, rows_per_chunk  # noqa: F401 (re-exported)
from .targets import load_target

LITERAL_ROWS = 4096      # rows of one tensor of G per literal-check task
LITERAL_BYTES = 1 << 28  # float64 weights per literal-check task
LITERAL_BATCH_BYTES = 1 << 30  # float64 activations of the widest layer per batch of points


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
def settings_key(target, method: str, settings: dict, domain, data: str | None) -> dict:
    """What a run's result depends on (not: workers, scheduler, threads, chunk size, paths)."""
    from .report import target_dims
    return {"method": method, "target_fingerprint": target.fingerprint(),
            "target_dims": target_dims(target), "settings": settings,
            "domain": domain.as_dict(), "data": data}


def settings_hash(key: dict) -> str:
    text = json.dumps(jsonable(key), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


# ------------------------------------------------------------------ the run
def execute(target, method: str = "pensia", settings: dict | None = None,
            *, domain=None, data: str | None = None, data_dir=None,
            runs_dir: str | os.PathLike = "runs", workers: int | None = None,
            scheduler: str | None = None, threads: int | None = None,
            chunk_weights: int = CHUNK_WEIGHTS, compact: bool = False,
            evaluate_options: dict | None = None, target_label: str | None = None,
            progress: Callable[[str, int | None, int | None], None] | None = None) -> Run:
    """Build, certify and save a ticket in ``runs_dir/<method>-<hash>/``, resuming what a
    previous call left there; a finished run is returned as it is.

    settings: ``n`` or ``eps``, ``seed`` and the method's settings (``slth.constructions``).
    data: dataset name for the report's accuracy figures (``slth.data``), or None.
    workers / scheduler: a LocalCluster of that many single-threaded workers, or an existing
    Dask scheduler's address; neither: this process, ``threads`` numba threads (None: all cores).
    evaluate_options: keywords for ``report.evaluate_parts`` (restarts, steps of the gradient
    ascent); they change only the report's search for large errors, so they are not hashed.
    progress(message, done, total): called as work proceeds (done/total in chunks, or None).
    """
    from .certify import Domain
    from .constructions import get

    t_start = time.perf_counter()
    say = progress or (lambda msg, done=None, total=None: None)
    if not hasattr(target, "weights"):
        target_label = target_label or str(target)
        target = load_target(target)
    domain = domain or Domain()
    ds = _dataset(data, data_dir, target)
    settings = dict(settings or {})
    seed = int(settings.pop("seed", 0))
    n, eps = settings.pop("n", None), settings.pop("eps", None)
    m = get(method, **settings)
    if n is not None:
        n = m.check_sizes(target, n)
    if scheduler is not None:   # fail before touching the disk
        probe(scheduler)
    key = settings_key(target, method, {"n": n, "eps": eps, "seed": seed, **m.options()},
                       domain, data)
    if n is None:
        key["settings"].pop("n")
    else:
        key["settings"].pop("eps")
    folder = Path(runs_dir) / f"{method}-{settings_hash(key)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlthError(f"cannot create run folder {folder}: {e.strerror}; choose a writable "
                        "--runs-dir") from None
    with _locked(folder):
        log = RunLog(folder / "run.log")
        if (folder / "report.json").exists():
            return _finished(folder, log, compact)
        if (folder / "settings.json").exists():
            rows = json.loads((folder / "settings.json").read_text()).get("chunk_rows_per_layer")
        else:
            from .constructions.base import target_layers
            shapes = layer_shapes(target_layers(target))
            rows = rows_per_chunk(shapes, chunk_weights)
            write_json(folder / "settings.json", {**key, "chunk_rows_per_layer": rows,
                                                  "layer_rows": [o for o, _ in shapes],
                                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        where = (f"{workers} local Dask workers" if workers else
                 f"Dask scheduler {scheduler}" if scheduler else "this process")
        log(f"start: {method} {key['settings']} on {where}")
        try:
            report, stats = _build_in_folder(folder, target, m, n, eps, seed, domain, ds, rows,
                                             log, say, workers, scheduler, threads, compact,
                                             evaluate_options or {})
        except BaseException as e:
            log(f"stopped: {type(e).__name__}: {str(e)[:200]}")
            raise
        report.update(seconds=time.perf_counter() - t_start,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      data=data, target=target_label, run=_run_summary(folder, stats, where))
        write_json(folder / "report.json", report)   # last: its presence marks the run finished
        shutil.rmtree(folder / "chunks", ignore_errors=True)
        log(f"finished in {report['seconds']:.1f} s: {stats.get('chunks_computed')} chunks "
            f"computed, {stats.get('chunks_reused')} reused")
        return Run(folder, report, stats)


def _dataset(data, data_dir, target):
    if not data:
        return None
    from .data import load_dataset
    ds = load_dataset(data, data_dir)
    check_data_fits(ds, target, data)
    return ds


def check_data_fits(ds, target, name: str) -> None:
    """One place for the data/target dimension check."""
    if ds is not None and ds.dim != target.in_dim:
        raise SlthError(f"{name} has {ds.dim} inputs but the target expects "
                        f"{target.in_dim}; pick the data the target was trained on")


def _finished(folder: Path, log, compact: bool) -> Run:
    log("asked again: run already finished, not recomputed")
    if compact and not (folder / "ticket.compact.safetensors").exists():
        from .ticket import load_ticket
        load_ticket(folder / "ticket.safetensors").save_compact(folder / "ticket.compact.safetensors")
    return Run(folder, json.loads((folder / "report.json").read_text()), {"finished_before": True})


def _build_in_folder(folder, target, m, n, eps, seed, domain, ds, rows, log, say, workers,
                     scheduler, threads, compact, evaluate_options):
    """The driver (``pipeline.build``) into the run folder's ticket file, then the report."""
    from .pipeline import build
    from .ticket import TicketFile

    store = ChunkStore(folder / "chunks", log)
    stats: dict = {"finished_before": False}
    t0 = time.perf_counter()

    def started(client):
        stats["cluster_start_seconds"] = time.perf_counter() - t0
        log(f"Dask cluster with {n_workers(client)} workers at "
            f"{client.scheduler.address} (dashboard {client.dashboard_link})")

    for stale in folder.glob("ticket.safetensors.*.part"):   # left by a killed attempt
        stale.unlink()
    out: dict = {}

    def report(sink, built):
        from .report import evaluate_parts
        t2 = time.perf_counter()
        out["report"] = evaluate_parts(
            target, built.info, built.sparsity, built.layout.widths, built.effective,
            literal_of(sink, built, pool), domain, ds, seed=seed, ascend_all=ascender(pool, target, built.effective, domain),
            certificate=built.certificate, progress=lambda msg: say(msg, None, None),
            **evaluate_options)
        stats["evaluate_seconds"] = time.perf_counter() - t2
        say("writing the ticket", None, None)

    with pool_for(workers, scheduler, started) as pool:
        built = build(target, m, n=n, eps=eps, seed=seed, domain=domain, pool=pool,
                      sink_of=lambda specs, meta, graph: TicketFile(
                          folder / "ticket.safetensors", specs, meta, graph),
                      store=store, chunk_rows=rows, threads=threads, log=log, say=say,
                      then=report)
    stats.update(built.stats)
    t3 = time.perf_counter()
    if compact:
        from .ticket import load_ticket
        load_ticket(folder / "ticket.safetensors").save_compact(
            folder / "ticket.compact.safetensors")
    write_json(folder / "sparsity_report.json", built.sparsity)
    stats["save_seconds"] = time.perf_counter() - t3
    return out["report"], stats


def literal_of(sink, built, pool):
    """literal(x [N, d]) -> [N, d_out]: the masked network G run layer by layer from the ticket
    file; each tensor's rows as tasks (groups of at most ``LITERAL_ROWS`` rows and
    ``LITERAL_BYTES`` of float64 weights) on local workers, else here; the points go through in
    batches whose widest activation stays under ``LITERAL_BATCH_BYTES``."""
    from .tasks import PARTS, literal_task

    tensors = list(zip(built.layout.names, built.layout.tensors))
    if built.layout.graph is not None:     # a graph G (convolutional targets) is small: run it
        return lambda x: sink.ticket(built.layout.names).forward(np.asarray(x, np.float64))
    widest = max(t.shape[0] for _, (_, t) in tensors)

    def layer(h, j, name, t):
        slots = {p: sink.slot(f"{name}.{p}") if f"{name}.{p}" in sink.where else None
                 for p in PARTS}
        step = max(1, min(LITERAL_ROWS, LITERAL_BYTES // (8 * int(np.prod(t.shape[1:])))))
        groups = [(r, min(t.shape[0], r + step)) for r in range(0, t.shape[0], step)]
        hx = pool.share(h) if pool.shared_fs and pool.client is not None else h
        if pool.shared_fs:
            parts = dict(pool.map(groups, lambda g: (literal_task, (hx, slots, *g, t.op,
                                                                     t.attrs))))
        else:   # the workers do not see the file: read it here
            parts = {g: literal_task(h, slots, *g, t.op, t.attrs) for g in groups}
        out = np.empty((len(h), t.shape[0]))
        for (r0, r1), v in parts.items():
            out[:, r0:r1] = v
        return np.maximum(out, 0.0, out=out) if j < len(tensors) - 1 else out

    def literal(x):
        x = np.asarray(x, np.float64)
        batch = max(1, LITERAL_BATCH_BYTES // (8 * widest))
        outs = []
        for b0 in range(0, len(x), batch):
            h = x[b0:b0 + batch]
            for j, (name, (_, t)) in enumerate(tensors):
                h = layer(h, j, name, t)
            outs.append(h)
        return np.concatenate(outs) if outs else np.zeros((0, tensors[-1][1][1].shape[0]))

    return literal


def ascender(pool, target, eff, domain):
    """ascend_all(x0, steps): the gradient ascent in groups of ``ASCENT_GROUP`` points, as tasks."""
    from .certify import ASCENT_GROUP, ascend

    def ascend_all(x0, steps):
        shared = (pool.share(target), pool.share(eff))
        groups = list(range(0, len(x0), ASCENT_GROUP))
        xs = dict(pool.map(groups, lambda g: (ascend, (*shared, domain, x0[g:g + ASCENT_GROUP],
                                                       steps))))
        return np.concatenate([xs[g] for g in groups] or [x0])

    return ascend_all


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
        elif st.get("chunk_rows_per_layer") and st["settings"].get("n") is not None:
            outs = st.get("layer_rows") or st["target_dims"][1:]
            total = sum(-(-o // r) for o, r in zip(outs, st["chunk_rows_per_layer"]))
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
