"""The one driver every construction goes through.

    plan chunks -> solve (this process or Dask) -> write G and masks -> effective form -> certify

``build`` runs it for any registered method (``slth.constructions``): ``constructions.construct``
builds a ticket in memory, ``slth.runs.execute`` in a resumable run folder; ``slth.report``
evaluates the result. A target layer is cut into chunks of output rows (``plan``); a chunk is
solved by ``method.solve`` on its own (``tasks.chunk_task``), so the ticket depends neither on the
chunking nor on the workers nor on the order chunks finish. ``Solver`` keeps every chunk state it
has seen (by layer and size), so the ``--eps`` search (``search_sizes``, shared by all methods)
never solves a (layer, size) twice, and writing G reuses the states of the sizes it chose. The
client holds the target-sized effective form, never G: chunk tasks write G's rows into the
ticket file themselves (local workers) or hand them back (the client writes them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .certify import Domain, bound_details
from .constructions.base import Method, TargetLayer, Tensor, target_layers
from .distributed import Pool
from .errors import SlthError
from .report import target_dims
from .tasks import PARTS, chunk_task, layer_task
from .ticket import EffectiveLayer, MemoryTicket, TicketFile, sparsity_summary, ticket_specs

CHUNK_WEIGHTS = 65_536   # target weights per chunk: ~0.3 s at n = 8, ~9 s at n = 21 on one core


# ----------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class Chunk:
    """Output rows r0:r1 of target layer ``layer`` (at ``size``, named only in ``--eps`` runs,
    which try several sizes)."""

    layer: int
    r0: int
    r1: int
    size: int | None = None

    @property
    def name(self) -> str:
        base = f"L{self.layer}-{self.r0:07d}-{self.r1:07d}"
        if self.size is None:
            return base
        return f"{base}-n" + ("x".join(map(str, self.size)) if isinstance(self.size, tuple)
                              else str(self.size))


def rows_per_chunk(dims: list[int], chunk_weights: int = CHUNK_WEIGHTS) -> list[int]:
    """Per layer of widths ``dims`` ([d_0, ..., d_l], or (d_out, d_in) pairs), the output rows of
    one chunk: each layer is cut into equal chunks of at most about ``chunk_weights`` target
    weights (at least one row)."""
    pairs = (dims if dims and isinstance(dims[0], (tuple, list))
             else [(o, i) for i, o in zip(dims[:-1], dims[1:])])
    out = []
    for d_out, d_in in pairs:
        k = -(-d_in * d_out // max(1, chunk_weights))     # number of chunks
        out.append(-(-d_out // k))
    return out


def plan_chunks(dims: list[int], rows: list[int]) -> list[Chunk]:
    """The chunks of layers with output widths ``dims[1:]``, ``rows[i]`` output rows each."""
    return [Chunk(i, r, min(d_out, r + rows[i])) for i, d_out in enumerate(dims[1:])
            for r in range(0, d_out, rows[i])]


def layer_shapes(layers: list[TargetLayer]) -> list[tuple[int, int]]:
    return [(L.d_out, L.d_in) for L in layers]


# ----------------------------------------------------------------------------- solving
class Solver:
    """Chunk states of one target, method and seed, solved on ``pool``, kept by (layer, size).

    store: where finished chunks are saved and found again (``runs.ChunkStore``) or None.
    rows: output rows per chunk, per layer. named: chunk names carry their size (--eps runs)."""

    def __init__(self, method: Method, layers: list[TargetLayer], seed: int, pool: Pool,
                 rows: list[int], store=None, log=None, say=None, threads: int | None = None,
                 named: bool = False):
        self.method, self.layers, self.seed, self.pool = method, layers, seed, pool
        self.rows, self.store, self.named = rows, store, named
        self.log = log or (lambda msg: None)
        self.say = say or (lambda msg, done=None, total=None: None)
        self.threads = threads if pool.client is None else 1
        self.states: dict[tuple[int, int], dict[Chunk, dict]] = {}
        self.plans: dict[tuple[int, int], dict | None] = {}
        self._eff: dict[tuple[int, int], tuple] = {}
        self.stats = {"chunks_total": 0, "chunks_reused": 0, "chunks_computed": 0,
                      "chunks_corrupt": 0, "chunk_seconds": [], "chunk_weights": []}

    @property
    def label(self) -> str:
        return f"{self.method.work} chunks"

    def chunks(self, i: int, size: int) -> list[Chunk]:
        L = self.layers[i]
        s = size if self.named else None
        return [Chunk(i, r, min(L.d_out, r + self.rows[i]), s)
                for r in range(0, L.d_out, self.rows[i])]

    def plan(self, i: int, size: int):
        if (i, size) not in self.plans:
            self.plans[(i, size)] = self.method.plan(self.layers[i], size, self.seed)
        return self.plans[(i, size)]

    def known(self, i: int, size: int) -> dict[Chunk, dict]:
        """States of (layer, size) solved so far, including those found in the store."""
        if (i, size) not in self.states:
            found = {}
            if self.store is not None:
                expect = self.method.state_shapes
                for ch in self.chunks(i, size):
                    shapes = expect(self.layers[i].take(ch.r0, ch.r1), size,
                                    plan=self.plan(i, size))
                    st = self.store.load(ch, shapes)
                    if st is not None:
                        found[ch] = st
                self.stats["chunks_corrupt"] = self.store.corrupt
            self.states[(i, size)] = found
            self.stats["chunks_reused"] += len(found)
            self.stats["chunks_total"] += len(self.chunks(i, size))
        return self.states[(i, size)]

    def job(self, ch: Chunk, size: int, write: bool = False, slots=None):
        """(function, args) of the chunk's task."""
        i = ch.layer
        return chunk_task, (self.method, self.layers[i].take(ch.r0, ch.r1), size, self.seed,
                            self.plan(i, size), self.threads, self.known(i, size).get(ch),
                            write, slots)

    def took(self, ch: Chunk, size: int, state: dict | None, secs: float, where: str) -> None:
        """Record a chunk's answer (a new state: saved to the store)."""
        if state is None:
            return
        self.states[(ch.layer, size)][ch] = state
        self.stats["chunks_computed"] += 1
        self.stats["chunk_seconds"].append(secs)
        self.stats["chunk_weights"].append((ch.r1 - ch.r0) * self.layers[ch.layer].d_in)
        saved = f": {self.store.save(ch, state).name}" if self.store is not None else ""
        self.log(f"chunk {ch.name} computed in {secs:.3f} s on {where}{saved}")

    def ensure(self, pairs: list[tuple[int, int]]) -> None:
        """Solve every missing chunk of these (layer, size) pairs, all in one pool map."""
        todo = [(ch, k) for i, k in dict.fromkeys(pairs) for ch in self.chunks(i, k)
                if ch not in self.known(i, k)]
        if not todo:
            return
        total = sum(len(self.chunks(i, k)) for i, k in dict.fromkeys(pairs))
        done = total - len(todo)
        self.say(self.label, done, total)
        for (ch, k), (state, _, _, secs, where) in self.pool.map(todo, lambda j: self.job(*j)):
            self.took(ch, k, state, secs, where)
            done += 1
            self.say(self.label, done, total)

    def effective(self, i: int, size: int) -> EffectiveLayer:
        """Layer i's effective form at ``size`` (its chunks solved if needed)."""
        return self.assembled(i, size)[0]

    def reduced(self, i: int, size: int) -> dict:
        """Layer i's chunk states reduced: ``used*`` OR, ``max*`` maximum, ``sum*`` sum."""
        return self.assembled(i, size)[1]

    def assembled(self, i: int, size: int):
        if (i, size) not in self._eff:
            self.ensure([(i, size)])
            states = self.known(i, size)
            L = self.layers[i]
            ch0, first = next(iter(states.items()))
            keys = self.method.effective_keys
            q = len(first[keys[0]]) // (ch0.r1 - ch0.r0)      # carriers per output row
            arrays = {k: np.zeros((L.d_out * q, *first[k].shape[1:])) for k in keys}
            red: dict = {}
            for ch, st in states.items():
                for k in keys:
                    arrays[k][ch.r0 * q:ch.r1 * q] = st[k]
                for k, v in st.items():
                    if k.startswith("used"):
                        red[k] = v if k not in red else red[k] | v
                    elif k.startswith("max"):
                        red[k] = v if k not in red else np.maximum(red[k], v)
                    elif k.startswith("sum"):
                        red[k] = v if k not in red else red[k] + v
            eff = self.method.effective_of(L, size, arrays)
            self._eff[(i, size)] = (eff, red)
        return self._eff[(i, size)]


# ----------------------------------------------------------------------------- sizes
def search_sizes(solver: Solver, target, eps: float, domain: Domain,
                 log: list | None = None, max_size: int | None = None) -> list[int]:
    """Per layer, the smallest size whose certified bound on ``domain`` is <= eps: the smallest
    uniform size (predicted from the bound's distance to eps, then bracketed), then each layer
    lowered on its own, largest layers first (one size below first, then bisection). Errors shrink as a size grows (every method draws
    G so that a smaller G is a prefix of a larger one); ``method.size.growth`` says how:
    ``"log"`` (about one bit per unit: step by log2(bound / eps)) or ``"power"`` (error ~ 1/size:
    scale by bound / eps). Every (layer, size) is solved at most once (``Solver``).
    ``max_size``: a lower ceiling than the method's (studies bound their time with it)."""
    method, L = solver.method, target.depth
    lo, hi = method.size_range(target)
    hi = hi if max_size is None else max(lo, min(hi, max_size))
    log = [] if log is None else log

    def bound(ns) -> float:
        keys = method.layer_sizes(ns)
        solver.ensure(list(enumerate(keys)))
        b = bound_details(target, [solver.effective(i, k) for i, k in enumerate(keys)],
                          domain)["certified_bound"]
        log.append({method.size.key: list(ns), "certified_bound": b})
        return b

    def ok(ns) -> bool:
        return bound(ns) <= eps

    log_growth = method.size.growth == "log"

    def jump(k: int, b: float) -> int:
        if log_growth:
            return k + max(1, math.ceil(math.log2(b / eps)))
        if method.size.growth == "double":   # near eps, a quarter more instead of double
            return 2 * k if b > 8 * eps else max(k + 1, math.ceil(1.25 * k))
        return max(k + 1, math.ceil(k * min(b / eps, 64.0) * 1.05))

    k = min(hi, max(lo, method.size.start))
    b = bound([k] * L)
    bad, good = lo - 1, None
    while b > eps:
        bad = k
        if k >= hi:
            method.unreachable(target, eps, [hi] * L, b)
            raise SlthError(f"{method.name}: eps={eps:g} is not reachable with sizes <= {hi} "
                            f"(certified bound there: {b:.3g}); ask for a larger --eps or a "
                            "smaller domain")
        k = min(hi, jump(k, b))
        b = bound([k] * L)
    good = k
    while good - bad > 1:             # bisect (log growth: mostly one step below)
        mid = good - 1 if log_growth and good - bad <= 4 else (good + bad) // 2
        if ok([mid] * L):
            good = mid
        else:
            bad = mid
    ns = [good] * L
    order = sorted(range(L), key=lambda i: -solver.layers[i].W.size)
    for i in order:                   # largest layers first: where a smaller size saves most
        hi_i, bad_i = ns[i], lo - 1
        first = True
        while hi_i - bad_i > 1:
            # one below first: where it fails (often, for the layers that set the bound) the
            # layer is done after one try instead of a bisection from the bottom
            mid = hi_i - 1 if log_growth or first else (hi_i + bad_i) // 2
            first = False
            trial = list(ns)
            trial[i] = mid
            if ok(trial):
                hi_i = mid
            else:
                bad_i = mid
        ns[i] = hi_i
    return ns


def smallest(ok: Callable[[int], bool], start: int, hi: int, lo: int = 1,
             grow: float = 2.0, rel_tol: float = 0.0) -> int | None:
    """Smallest s in [lo, hi] with ok(s): growing by ``grow`` from ``start``, then bisection
    until the bracket is <= rel_tol * s (0: exact). None when even ok(hi) fails."""
    s = max(lo, min(start, hi))
    bad, good = lo - 1, s
    if not ok(s):
        while True:
            bad = s
            if s >= hi:
                return None
            s = min(hi, max(s + 1, math.ceil(grow * s)))
            if ok(s):
                good = s
                break
    while good - bad > max(1.0, rel_tol * good):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


# ----------------------------------------------------------------------------- G
@dataclass
class Layout:
    """G's parameter tensors in order: (target layer, Tensor), their state-dict prefixes, and the
    graph of G (None: a Linear/ReLU chain, as for MLP targets)."""

    tensors: list[tuple[int, Tensor]]
    names: list[str]
    graph: list | None = None

    def specs(self) -> dict:
        return ticket_specs([(t.shape, t.bias) for _, t in self.tensors], self.names)

    def of(self, i: int, role: str) -> tuple[str, Tensor]:
        for name, (j, t) in zip(self.names, self.tensors):
            if j == i and t.role == role:
                return name, t
        raise KeyError((i, role))

    @property
    def widths(self) -> list[int]:
        first = self.tensors[0][1].shape
        return [int(np.prod(first[1:]))] + [t.shape[0] for _, t in self.tensors]


def layout_of(target, method: Method, layers: list[TargetLayer], sizes: list[int],
              plans: list) -> Layout:
    """G's layout: each target layer's tensors (``method.tensors``) in order, and G's graph
    (``method.graph``; None: a Linear/ReLU chain)."""
    from .ticket import Ticket

    tensors = [(i, t) for i, (L, k) in enumerate(zip(layers, sizes))
               for t in method.tensors(L, k, plan=plans[i])]
    graph = method.graph(target, layers, tensors)
    if graph is None:
        return Layout(tensors, [str(2 * j) for j in range(len(tensors))])
    return Layout(tensors, Ticket.names_of(graph), graph)


def write_ticket(sink, solver: Solver, sizes: list[int], layout: Layout, shared_fs: bool,
                 stats: dict) -> list[tuple]:
    """Write G and its masks into ``sink`` (a ``TicketFile`` or ``MemoryTicket``): whole-layer
    tensors and every chunk's rows as tasks, then the whole-layer masks from the chunks' union.
    Returns each tensor's (shape, params, active) for the sparsity report."""
    method, pool = solver.method, solver.pool
    active = {name: 0 for name in layout.names}

    direct = shared_fs and isinstance(sink, TicketFile)   # tasks write into the file

    def slots(name: str) -> dict:
        return {p: sink.slot(f"{name}.{p}") if f"{name}.{p}" in sink.where else None
                for p in PARTS}

    def chunk_slots(i: int, ch: Chunk):
        return {t.role: (ch.r0 * t.per_row, slots(name))
                for name, (j, t) in zip(layout.names, layout.tensors)
                if j == i and t.per_row} if direct else None

    whole = sorted({i for i, t in layout.tensors if not t.per_row or t.extra_rows})
    jobs = [("layer", i) for i in whole] + [("chunk", (ch, k)) for i, k in enumerate(sizes)
                                           for ch in solver.chunks(i, k)]
    for i, k in enumerate(sizes):
        solver.known(i, k)
    total = sum(len(solver.chunks(i, k)) for i, k in enumerate(sizes))
    done = sum(len(solver.known(i, k)) for i, k in enumerate(sizes))
    solver.say(solver.label, done, total)

    def call_of(job):
        kind, x = job
        if kind == "layer":
            sl = ({t.role: slots(n) for n, (j, t) in zip(layout.names, layout.tensors)
                   if j == x and (not t.per_row or t.extra_rows)} if direct else None)
            return layer_task, (method, solver.layers[x], sizes[x], solver.seed,
                                solver.plan(x, sizes[x]), sl)
        ch, k = x
        return solver.job(ch, k, write=True, slots=chunk_slots(ch.layer, ch))

    t0 = time.perf_counter()
    for (kind, x), out in pool.map(jobs, call_of):
        if kind == "layer":
            blocks, secs, where = out
            for role, r0, W, b in blocks or ():
                name, _ = layout.of(x, role)
                sink.put(f"{name}.weight_orig", W, r0)
                if b is not None:
                    sink.put(f"{name}.bias_orig", b, r0)
            solver.log(f"layer {x}: whole-layer tensors drawn in {secs:.3f} s on {where}")
            continue
        ch, k = x
        state, rows, act, secs, where = out
        for role, n_act in act.items():
            active[layout.of(ch.layer, role)[0]] += n_act
        for role, r in (rows or {}).items():
            name, t = layout.of(ch.layer, role)
            for part, arr in zip(PARTS, (r.weight, r.mask, r.bias, r.bias_mask)):
                if arr is not None:
                    sink.put(f"{name}.{part}", arr, ch.r0 * t.per_row)
        if state is not None:
            solver.took(ch, k, state, secs, where)
            done += 1
            solver.say(solver.label, done, total)
    stats["chunks_seconds_wall"] = time.perf_counter() - t0
    for i in whole:
        for role, (index, bias_index) in method.layer_masks(
                solver.layers[i], sizes[i], solver.reduced(i, sizes[i]),
                plan=solver.plan(i, sizes[i])).items():
            name, _ = layout.of(i, role)
            sink.set_true(f"{name}.weight_mask", index)
            active[name] += len(index[0])
            if bias_index is not None:
                sink.set_true(f"{name}.bias_mask", bias_index)
                active[name] += len(bias_index[0])
    return [(t.shape, t.params, active[name]) for name, (_, t) in zip(layout.names,
                                                                      layout.tensors)]


# ----------------------------------------------------------------------------- build
def target_meta(target) -> dict:
    """What a ticket records of its target."""
    return {"target_dims": target_dims(target), "target_has_bias": target.has_bias,
            "target_fingerprint": target.fingerprint()}



@dataclass
class Built:
    """What ``build`` made: the sizes, G's layout, the effective form and its certificate, the
    sparsity report, and the construction's report entries (``info``)."""

    sizes: list[int]
    layout: Layout
    effective: list[EffectiveLayer]
    certificate: dict
    sparsity: dict
    info: dict
    stats: dict = field(default_factory=dict)


def resolve_sizes(solver: Solver, target, n, eps, domain: Domain, search_log: list,
                  max_size: int | None = None) -> list[int]:
    """The sizes to build: ``n`` checked, or for ``eps`` the method's own sizing or the search."""
    method = solver.method
    if n is not None:
        return method.check_sizes(target, n)
    fixed = method.sizes_for(target, eps)
    return list(fixed) if fixed is not None else search_sizes(solver, target, eps, domain,
                                                               search_log, max_size)


def build(target, method: Method, *, n=None, eps: float | None = None, seed: int = 0,
          domain: Domain | None = None, pool: Pool | None = None, sink_of: Callable | None = None,
          store=None, chunk_rows: list[int] | None = None, chunk_weights: int = CHUNK_WEIGHTS,
          threads: int | None = None, log=None, say=None, meta: dict | None = None,
          then: Callable | None = None, max_size: int | None = None) -> Built:
    """Build ``method``'s ticket for ``target``: sizes (``n`` or the ``eps`` search), G written into
    ``sink_of(specs, meta)`` (default: a ``MemoryTicket``), the effective form certified on
    ``domain``. ``then(sink, built)`` runs before the sink is closed (e.g. the report).
    ``max_size``: the eps search's ceiling, below the method's own (studies)."""
    t0 = time.perf_counter()
    if (n is None) == (eps is None):
        raise SlthError(f"give exactly one of --n ({method.size.meaning}) or --eps (target "
                        "error bound)")
    if eps is not None and not eps > 0:
        raise SlthError(f"eps must be > 0, got {eps}")
    domain = domain or Domain()
    pool = pool or Pool()
    method = method.configure(target, eps, domain)
    layers = target_layers(target)
    rows = chunk_rows or rows_per_chunk(layer_shapes(layers), chunk_weights)
    solver = Solver(method, layers, seed, pool, rows, store, log, say, threads,
                    named=eps is not None)
    search: list = []
    sizes = resolve_sizes(solver, target, n, eps, domain, search, max_size)
    keys = method.layer_sizes(sizes)
    solve_s = time.perf_counter() - t0
    plans = [solver.plan(i, k) for i, k in enumerate(keys)]
    layout = layout_of(target, method, layers, keys, plans)
    head = {"method": method.name, "seed": seed, method.size.key: sizes, **method.describe(),
            **(meta if meta is not None else target_meta(target))}
    stats = solver.stats
    with (sink_of or MemoryTicket)(layout.specs(), head, layout.graph) as sink:
        (say or (lambda *a: None))("writing G and its masks", None, None)
        t1 = time.perf_counter()
        per_tensor = write_ticket(sink, solver, keys, layout, pool.shared_fs, stats)
        sink.sync()
        stats["assemble_seconds"] = time.perf_counter() - t1
        eff = [solver.effective(i, k) for i, k in enumerate(keys)]
        cert = bound_details(target, eff, domain)
        reduced = [solver.reduced(i, k) for i, k in enumerate(keys)]
        errs = np.max([r.get("max_errors", np.zeros(1)) for r in reduced], axis=0)
        info = {"method": method.name, method.size.key: sizes,
                "width_per_layer": layout.widths,
                "max_weight_error": float(np.max(errs)),
                "solve_seconds": solve_s,
                "size_search": search, "eps": eps, **method.describe(),
                **method.info(target, sizes, reduced), **method.plan_info(target, keys, plans)}
        info.update(method.theory(target, eps if eps is not None else cert["certified_bound"]))
        built = Built(sizes, layout, eff, cert, sparsity_summary(per_tensor), info, stats)
        built.sink = sink
        if then is not None:
            then(sink, built)
    return built


def construct(target, method: str | Method = "pensia", *, n=None, eps: float | None = None,
              domain: Domain | None = None, seed: int = 0, threads: int | None = None,
              progress=None, max_size: int | None = None, **settings):
    """Build a ticket for ``target`` in memory with the named method (settings as keywords):
    ``n`` (size, one int or one per layer) or ``eps`` (the smallest sizes whose certified bound
    on ``domain`` is <= eps). Returns a ``Construction`` (ticket and report entries)."""
    from .constructions import get
    from .constructions._common import Construction

    m = method if isinstance(method, Method) else get(method, **settings)
    say = (lambda msg, done=None, total=None: progress(msg)) if progress else None
    built = build(target, m, n=n, eps=eps, seed=seed, domain=domain, threads=threads, say=say,
                  max_size=max_size)
    return Construction(built.sink.ticket(built.layout.names), built.info,
                        built)


def effective_at(target, method: Method, sizes: list[int], seed: int,
                 threads: int | None = None) -> list[EffectiveLayer]:
    """The effective form of ``method``'s ticket at these sizes, without writing G (each layer
    solved in one chunk in this process): what size searches certify."""
    layers = target_layers(target)
    solver = Solver(method, layers, seed, Pool(), [L.d_out for L in layers], threads=threads)
    keys = method.layer_sizes(sizes)
    solver.ensure(list(enumerate(keys)))
    return [solver.effective(i, k) for i, k in enumerate(keys)]
