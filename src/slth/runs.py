"""Run folders: resumable constructions under ``runs/<method>-<hash of settings>/``.

>>> run = execute(target, "pensia", {"n": 21, "seed": 0}, workers=2)   # doctest: +SKIP
>>> run.folder, run.report["certified_bound"], run.stats["chunks_computed"]   # doctest: +SKIP

A run folder holds

* ``settings.json``: everything the result depends on (method, target fingerprint, construction
  settings, domain, data; their SHA-256 names the folder) and the chunk plan;
* ``run.log``: one timestamped line per event (start, chunk computed / reused / corrupt, finished);
* ``chunks/L{layer}-{r0}-{r1}.{sha256}.npz`` while the run is in progress: one finished chunk of
  output rows each (its masks, effective rows and errors: ``runtasks.state_shapes``), numpy
  arrays only (read with ``allow_pickle=False``), written to a temporary
  file and renamed into place; the name carries the SHA-256 of the file, checked before a chunk is
  used (a mismatch: the file is deleted and the chunk recomputed). Removed when the run finishes;
* ``ticket.safetensors`` (filled piece by piece as ``ticket.safetensors.part``, renamed once
  complete and certified), ``sparsity_report.json`` (density and sparsity per layer and in total)
  and ``report.json``, written last: a folder with ``report.json`` is finished and never recomputed.

Pensia's construction with a block size n is split into chunks of output rows
(``pensia.solve_rows``). Every row's draws come from its own seeded streams, so the ticket depends
neither on the chunking nor on the number of workers nor on the order chunks finish: it is
byte-identical to ``pensia.construct`` in one process. A run killed at any point (Ctrl-C, kill -9,
a lost worker) resumes from its finished chunks (G's rows of those are redrawn, not solved again).
The client never holds G: see ``_pensia_tasks`` and ``slth.runtasks``. Other methods and ``eps`` mode run as one piece in
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

from .distributed import n_workers, pool_for, probe
from .errors import SlthError
from .jsonio import jsonable, write_json
from .targets import MLP, load_target

CHUNK_WEIGHTS = 65_536   # target weights per chunk: ~0.3 s at n = 8, ~9 s at n = 21 on one core
LITERAL_GROUP = 8        # chunks per literal-check task


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
    text = json.dumps(jsonable(key), sort_keys=True)
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
            write_json(folder / "settings.json", {**key, "chunk_rows_per_layer": plan,
                                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        where = (f"{workers} local Dask workers" if workers else
                 f"Dask scheduler {scheduler}" if scheduler else "this process")
        log(f"start: {method} {settings} on {where}")
        stats = {"finished_before": False}
        try:
            if chunked:
                store = ChunkStore(folder / "chunks", log)
                t0 = time.perf_counter()

                def started(client):
                    stats["cluster_start_seconds"] = time.perf_counter() - t0
                    log(f"Dask cluster with {n_workers(client)} workers at "
                        f"{client.scheduler.address} (dashboard {client.dashboard_link})")

                with pool_for(workers, scheduler, started) as pool:
                    report = _pensia_tasks(pool, target, settings, plan_chunks(target.dims, plan),
                                           store, log, say, stats,
                                           threads if pool.client is None else 1, folder,
                                           domain, ds, compact, evaluate_options or {},
                                           key["target_fingerprint"])
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
        write_json(folder / "report.json", report)   # last: its presence marks the run finished
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


def _pensia_tasks(pool, target, settings, chunks, store, log, say, stats, threads, folder,
                  domain, ds, compact, evaluate_options, fingerprint) -> dict:
    """Pensia's construction as tasks (``slth.runtasks``) on ``pool``: solve every chunk
    (reusing verified chunk files), write G's rows into the ticket file as they arrive, then
    certify and measure the ticket with the same tasks' help. The client holds only the
    effective form (target-sized), never G. Returns the report."""
    from . import runtasks
    from .constructions.pensia import widen_bias_mask, widen_mask_index
    from .report import evaluate_parts
    from .ticket import EffectiveLayer, TicketFile, sparsity_summary, ticket_specs

    ns, seed, prune_dead = settings["n"], settings["seed"], settings["prune_dead"]
    L, dims = target.depth, target.dims
    halves = [(0, 1) if (i == 0 or not prune_dead) else (0,) for i in range(L)]
    has_bias = [c is not None for c in target.biases]
    m = [2 * n * dims[i] + (n if has_bias[i] else 0) for i, n in enumerate(ns)]
    eff = [EffectiveLayer(np.zeros((dims[i + 1], dims[i])), np.zeros((dims[i + 1], dims[i])),
                          np.zeros(dims[i + 1])) for i in range(L)]
    used = [np.zeros((2, dims[i], n), bool) for i, n in enumerate(ns)]
    bias_used = [np.zeros(n, bool) if has_bias[i] else None for i, n in enumerate(ns)]
    v_active = [0] * L
    errors = np.zeros(2)
    states = {}

    def take(ch, state):
        """Fold a chunk's state into the effective form, the used neurons and the errors; keep
        its masks (what later tasks need of it)."""
        states[ch] = _masks(state)
        e, i = eff[ch.layer], ch.layer
        e.pos[ch.r0:ch.r1], e.neg[ch.r0:ch.r1], e.bias[ch.r0:ch.r1] = (state["pos"], state["neg"],
                                                                       state["bias"])
        mask, bm = runtasks.unpack_masks(state, ns[i])
        used[i] |= mask.any(axis=1)
        v_active[i] += int(mask.sum())
        if bm is not None:
            bias_used[i] |= bm.any(axis=0)
            v_active[i] += int(bm.sum())
        np.maximum(errors, state["errors"], out=errors)

    for ch in chunks:
        state = store.load(ch, runtasks.state_shapes(ch.r1 - ch.r0, dims[ch.layer], ns[ch.layer],
                                                     has_bias[ch.layer]))
        if state is not None:
            take(ch, state)
    reused = len(states)
    stats.update(chunks_total=len(chunks), chunks_reused=reused, chunks_computed=0,
                 chunk_seconds=[], chunk_weights=[], chunks_corrupt=store.corrupt)
    if reused:
        log(f"resuming: {reused} of {len(chunks)} chunks already done")
    say("SubsetSum chunks", reused, len(chunks))
    meta = {"method": "pensia", "seed": seed, "n_per_layer": ns, "target_dims": dims,
            "target_has_bias": target.has_bias, "prune_dead": prune_dead,
            "target_fingerprint": fingerprint}
    shapes = [s for i in range(L) for s in (((m[i], dims[i]), has_bias[i]),
                                            ((dims[i + 1], m[i]), False))]

    for stale in folder.glob("ticket.safetensors.*.part"):   # left by a killed attempt
        stale.unlink()
    t0 = time.perf_counter()
    with TicketFile(folder / "ticket.safetensors", ticket_specs(shapes), meta) as f:
        def slots(i, *names):
            """Where workers write (and read) rows of ticket layer i; None: they send them."""
            return tuple(f.slot(f"{i}.{k}") if f"{i}.{k}" in f.where else None
                         for k in names) if pool.shared_fs else None

        def call_of(job):
            kind, x = job
            if kind == "widen":
                return runtasks.widen, (dims[x], ns[x], has_bias[x], seed, x,
                                        slots(4 * x, "weight_orig", "bias_orig"))
            c = target.biases[x.layer]
            return runtasks.build_chunk, (target.weights[x.layer][x.r0:x.r1],
                                          None if c is None else c[x.r0:x.r1], ns[x.layer], seed,
                                          x.layer, x.r0, x.r1, halves[x.layer], threads,
                                          states.get(x), slots(4 * x.layer + 2, "weight_orig",
                                                               "weight_mask"))

        jobs = [("widen", i) for i in range(L)] + [("chunk", ch) for ch in chunks]
        for (kind, x), out in pool.map(jobs, call_of):
            if kind == "widen":
                Uw, Ub, secs, where = out
                if Uw is not None:
                    f.put(f"{4 * x}.weight_orig", Uw)
                if Ub is not None:
                    f.put(f"{4 * x}.bias_orig", Ub)
                log(f"widen layer {x} drawn in {secs:.3f} s on {where}")
                continue
            state, rows, secs, where = out
            if rows is not None:
                f.put(f"{4 * x.layer + 2}.weight_orig", rows[0], x.r0)
                f.put(f"{4 * x.layer + 2}.weight_mask", rows[1], x.r0)
            if state is None:     # a chunk of an earlier attempt: its rows of G redrawn
                continue
            path = store.save(x, state)
            take(x, state)
            stats["chunks_computed"] += 1
            stats["chunk_seconds"].append(secs)
            stats["chunk_weights"].append((x.r1 - x.r0) * dims[x.layer])
            log(f"chunk {x.name} computed in {secs:.3f} s on {where}: {path.name}")
            say("SubsetSum chunks", len(states), len(chunks))
        stats["chunks_seconds_wall"] = time.perf_counter() - t0
        say("assembling the widen layers' masks", None, None)
        t1 = time.perf_counter()
        layers = []
        for i in range(L):
            f.set_true(f"{4 * i}.weight_mask", widen_mask_index(used[i]))   # the rest: zeros
            if bias_used[i] is not None:
                f.put(f"{4 * i}.bias_mask", widen_bias_mask(bias_used[i], m[i] - ns[i]))
            u_active = int(used[i].sum()) + (0 if bias_used[i] is None else int(bias_used[i].sum()))
            layers += [((m[i], dims[i]), m[i] * dims[i] + (m[i] if has_bias[i] else 0), u_active),
                       ((dims[i + 1], m[i]), dims[i + 1] * m[i], v_active[i])]
        f.sync()   # G is complete: on disk before the report's tasks run (not competing with them)
        sparsity = sparsity_summary(layers)
        stats["assemble_seconds"] = time.perf_counter() - t1
        widths = [dims[0]] + [w for i in range(L) for w in (m[i], dims[i + 1])]
        info = {"method": "pensia", "n_per_layer": ns,
                "neurons_per_target_weight": [2 * k for k in ns], "width_per_layer": widths,
                "max_weight_error": float(errors.max()),
                "subsetsum_seconds": stats["chunks_seconds_wall"], "size_search": [], "eps": None}
        t2 = time.perf_counter()
        shared = {"target": pool.share(target), "eff": pool.share(eff)}

        def literal(x):
            """The masked network, layer pair by layer pair, each pair's rows as tasks (groups
            of ``LITERAL_GROUP`` chunks)."""
            h = np.asarray(x, np.float64)
            for i in range(L):
                hx, sl = pool.share(h), slots(4 * i + 2, "weight_orig", "weight_mask")
                out = np.empty((len(h), dims[i + 1]))
                own = [ch for ch in chunks if ch.layer == i]
                groups = [own[k:k + LITERAL_GROUP] for k in range(0, len(own), LITERAL_GROUP)]
                for g, rows in pool.map(range(len(groups)), lambda g: (runtasks.literal_rows, (
                        hx, ns[i], seed, i, [(ch.r0, ch.r1, states[ch])
                                             for ch in groups[g]], used[i], bias_used[i], sl))):
                    for ch, r in zip(groups[g], rows):
                        out[:, ch.r0:ch.r1] = r
                h = np.maximum(out, 0.0) if i < L - 1 else out
            return h

        def ascend_all(x0, steps):
            from .certify import ASCENT_GROUP, ascend
            groups = list(range(0, len(x0), ASCENT_GROUP))
            xs = dict(pool.map(groups, lambda g: (ascend, (
                shared["target"], shared["eff"], domain, x0[g:g + ASCENT_GROUP], steps))))
            return np.concatenate([xs[g] for g in groups] or [x0])

        report = evaluate_parts(target, info, sparsity, widths, eff, literal, domain, ds,
                                seed=seed, ascend_all=ascend_all,
                                progress=lambda msg: say(msg, None, None), **evaluate_options)
        stats["evaluate_seconds"] = time.perf_counter() - t2
        say("writing the ticket", None, None)
        t3 = time.perf_counter()
    if compact:
        from .ticket import load_ticket
        load_ticket(folder / "ticket.safetensors").save_compact(
            folder / "ticket.compact.safetensors")
    write_json(folder / "sparsity_report.json", sparsity)
    stats["save_seconds"] = time.perf_counter() - t3
    return report


def _masks(state: dict) -> dict:
    """The masks of a chunk state (what tasks need of a chunk's answers)."""
    return {k: state[k] for k in ("mask", "bias_mask") if k in state}


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
    write_json(folder / "sparsity_report.json", con.ticket.sparsity_report())
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
