"""The construction protocol: what one paper's construction declares, and the registry.

A construction turns every affine layer of the target F into a few layers of a random network G
and chooses a mask over them. The driver (``slth.pipeline``) does everything else - chunks, run
folders, resuming, Dask, writing G, certification, reports, the size search for ``--eps`` - so a
method is one class in one module:

* ``Settings``: a frozen dataclass of its options. ``__post_init__`` validates them (one-line
  ``SlthError`` naming the flag and the fix); each field's ``metadata`` (``option(...)``) gives
  its help text, which becomes a ``slth construct`` flag.
* ``size``: a ``Size`` (what the size of a layer means, its report key, its range).
* ``tensors(layer, size)``: G's parameter tensors for one target layer, in G's order (``Tensor``:
  shape, bias, and how its rows are written: per chunk of output rows, or for the whole layer).
* ``solve(layer, size, seed)``: one chunk of output rows of one target layer (``layer`` holds
  only those rows). Returns the chunk's *state*, a dict of numpy arrays: its masks, its rows of
  the effective form (``pos``, ``neg``, ``bias``) and what the driver reduces over chunks (keys
  ``used*``: OR; ``max*``: maximum; ``sum*``: sum). It depends only on (rows, size, seed,
  settings): any split into chunks, any worker and any order give the same ticket.
* ``chunk_rows(layer, size, seed, state)``: G's rows for that chunk, for every tensor written per
  chunk: {role: ``Rows``} (weights drawn again from their seeded streams, masks from the state).
* ``layer_rows(layer, size, seed, block)`` and ``layer_masks(layer, size, used)``: tensors drawn
  for a whole layer at once (e.g. Pensia's widen layer), in blocks of rows, and their masks from
  the OR of the chunks' ``used*`` arrays. Methods without such tensors need neither.
* ``theory(target, eps)``: the theorem's sizes beside ours (``theory_*`` keys of the report).

Optional: ``configure(target, eps)`` (settings that depend on the target, e.g. Orseau's weight
range per layer), ``state_shapes`` (checked when a chunk file is read back), ``info`` (the
method's own report entries from the reduced states).

``register(name)`` makes a method available by name to ``slth construct``, run folders, Dask,
``slth compare`` and ``slth study width``; ``register(name, **overrides)`` registers a variant
with other default settings (``orseau-uniform``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from ..errors import SlthError


# ----------------------------------------------------------------------------- target layers
@dataclass(frozen=True)
class TargetLayer:
    """One affine layer of the target in matrix form, or a chunk of its output rows.

    W: float64 [rows, D] (a conv kernel [O, C, kh, kw] is W.reshape(O, C * kh * kw)); c: [rows]
    or None. Column j of W reads input channel j // group (group = 1 for a Linear layer on a
    vector, kh * kw for a convolution, H * W for a Linear layer reading a flattened map).
    index: the layer's position among the target's affine layers (it keys G's random streams);
    r0: the first output row held here (absolute); d_out: rows of the whole layer.
    """

    index: int
    W: np.ndarray
    c: np.ndarray | None
    d_out: int
    r0: int = 0
    group: int = 1
    kind: str = "linear"          # "linear", "conv", or "flat" (a Linear reading a flattened map)
    geometry: dict = field(default_factory=dict)   # conv: kernel, stride, padding, dilation, in_hw

    @property
    def rows(self) -> range:
        return range(self.r0, self.r0 + self.W.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W.shape[1])

    @property
    def channels(self) -> int:
        return self.d_in // self.group

    @property
    def has_bias(self) -> bool:
        return self.c is not None

    def take(self, r0: int, r1: int) -> "TargetLayer":
        """Rows r0:r1 (absolute) of this layer, with copies of their weights."""
        a, b = r0 - self.r0, r1 - self.r0
        return dataclasses.replace(self, W=np.array(self.W[a:b]), r0=r0,
                                   c=None if self.c is None else np.array(self.c[a:b]))


def target_layers(target) -> list[TargetLayer]:
    """The target's affine layers in matrix form: an ``MLP``'s Linear layers; a ``Net``'s
    convolutions (kind "conv"), Linear layers reading a flattened feature map ("flat") and
    Linear layers on vectors ("linear")."""
    from ..targets import MLP

    if isinstance(target, MLP):
        return [TargetLayer(i, W, c, W.shape[0]) for i, (W, c) in enumerate(zip(target.weights,
                                                                               target.biases))]
    nodes, out = target.nodes, []
    for k, i in enumerate(target.affine):
        nd, src = nodes[i], nodes[nodes[i].inputs[0]]
        O = nd.weight.shape[0]
        if nd.op == "conv":
            C, H, W = src.shape
            a = nd.attrs
            out.append(TargetLayer(k, nd.weight.reshape(O, -1), nd.bias, O, 0,
                                   int(np.prod(nd.weight.shape[2:])), "conv",
                                   {"kernel": tuple(nd.weight.shape[2:]), "stride": a["stride"],
                                    "padding": a["padding"], "dilation": a["dilation"],
                                    "in_hw": (H, W)}))
        elif src.op == "flatten" and len(nodes[src.inputs[0]].shape) == 3:
            C, H, W = nodes[src.inputs[0]].shape
            out.append(TargetLayer(k, nd.weight, nd.bias, O, 0, H * W, "flat",
                                   {"in_chw": (C, H, W)}))
        else:
            out.append(TargetLayer(k, nd.weight, nd.bias, O))
    return out


# ----------------------------------------------------------------------------- G's tensors
@dataclass(frozen=True)
class Tensor:
    """One parameter tensor of G. shape: weight shape ([out, in] linear, [out, in, kh, kw] conv);
    per_row: rows written per target output row by each chunk (0: drawn for the whole layer;
    ``extra_rows`` more after the chunked rows are drawn for the whole layer too)."""

    role: str
    shape: tuple
    bias: bool = False
    per_row: int = 0
    op: str = "linear"
    attrs: dict = field(default_factory=dict, hash=False)
    extra_rows: int = 0     # rows after the chunked ones, drawn for the whole layer

    @property
    def params(self) -> int:
        return int(np.prod(self.shape)) + (self.shape[0] if self.bias else 0)


@dataclass
class Rows:
    """Rows of one tensor of G: weight float32 [rows, ...], mask bool (same shape), and with
    biases bias float32 [rows], bias_mask bool [rows]."""

    weight: np.ndarray
    mask: np.ndarray
    bias: np.ndarray | None = None
    bias_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Size:
    """What a construction's size is: ``name`` in messages, ``key`` in reports (one per layer),
    its range [lo, hi] and where the ``--eps`` search starts."""

    name: str = "n"
    key: str = "n_per_layer"
    lo: int = 1
    hi: int = 40
    start: int = 8
    meaning: str = "block size per half"
    growth: str = "log"    # how the --eps search steps: "log" (errors ~ 2^-size: step by
                           # log2(bound / eps)), "double" (double, then bisect), "power"
                           # (errors ~ 1/size: scale by bound / eps, then bisect)


# ----------------------------------------------------------------------------- settings
def option(default: Any, help: str, choices: tuple | None = None, **kw):
    """A settings field with its CLI help (and choices): ``gamma: float = option(PHI, "...")``."""
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


@dataclass(frozen=True)
class NoSettings:
    """A method without options."""


def check(cond: bool, message: str) -> None:
    """Raise ``SlthError(message)`` unless ``cond``: settings validation in one line."""
    if not cond:
        raise SlthError(message)


# ----------------------------------------------------------------------------- the protocol
class Method:
    """Base class of the constructions (see the module docstring). An instance holds validated
    settings; it is small and picklable, so tasks carry it to Dask workers."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    size: ClassVar[Size] = Size()
    work: ClassVar[str] = "SubsetSum"      # what a chunk does, for progress messages

    def __init__(self, settings=None, **kw):
        if settings is None:
            names = {f.name for f in dataclasses.fields(self.Settings)}
            bad = sorted(set(kw) - names)
            if bad:
                raise SlthError(f"{self.name}: unknown setting(s) {', '.join(bad)}; "
                                f"known: {', '.join(sorted(names)) or 'none'}")
            settings = self.Settings(**kw)
        self.settings = settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ---- what every method implements
    def tensors(self, layer: TargetLayer, size: int) -> list[Tensor]:
        raise NotImplementedError

    def solve(self, layer: TargetLayer, size: int, seed: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def chunk_rows(self, layer: TargetLayer, size: int, seed: int, state: dict) -> dict[str, Rows]:
        raise NotImplementedError

    def theory(self, target, eps: float) -> dict:
        return {}

    # ---- optional
    def configure(self, target, eps: float | None, domain=None) -> "Method":
        """This method with its target-dependent settings resolved (default: unchanged); may
        refuse a target it cannot serve."""
        return self

    def plan(self, layer: TargetLayer, size: int, seed: int) -> dict | None:
        """A layer's plan at ``size`` (JSON-able, e.g. per-channel block sizes), computed once
        from the whole layer before its chunks are solved; passed to every hook as ``plan``."""
        return None

    def sizes_for(self, target, eps: float) -> list[int] | None:
        """Sizes for ``eps`` without searching (e.g. the theorem's), or None: search."""
        return None

    def unreachable(self, target, eps: float, sizes: list[int], bound: float) -> None:
        """Called when even the largest sizes miss eps; may raise a more telling error."""

    def layer_rows(self, layer: TargetLayer, size: int, seed: int, block: int | None = None,
                   plan=None) -> Iterator[tuple[str, int, np.ndarray, np.ndarray | None]]:
        """Whole-layer tensors (and whole-layer rows): yields (role, first row, weight rows,
        bias rows or None)."""
        return iter(())

    def layer_masks(self, layer: TargetLayer, size: int, used: dict, plan=None) -> dict:
        """Kept entries of the whole-layer tensors, from the OR of the chunks' ``used*`` arrays:
        {role: (index of kept weights, index of kept biases or None)} (numpy fancy indices)."""
        return {}

    def layer_sizes(self, sizes: list[int]) -> list:
        """The size each layer's hooks receive (default: its own); a method whose layers depend
        on their neighbours' sizes returns tuples (e.g. Burkholz: copies in and out)."""
        return list(sizes)

    effective_keys: ClassVar[tuple] = ("pos", "neg", "bias")

    def effective_of(self, layer: TargetLayer, size: int, arrays: dict):
        """A layer's effective form from its chunks' ``effective_keys`` arrays (rows of all
        chunks in order): by default pos/neg/bias (``ticket.effective.EffectiveLayer``)."""
        from ..ticket.effective import EffectiveLayer
        return EffectiveLayer(arrays["pos"], arrays["neg"], arrays["bias"])

    def graph(self, target, layers: list[TargetLayer], tensors: list) -> dict | None:
        """G's graph (``slth.ticket.graph``), or None for a Linear/ReLU chain (an MLP target):
        by default each affine op of the target replaced by its tensors (``layout.pair_graph``)."""
        from ..targets import MLP
        if isinstance(target, MLP):
            return None
        from .layout import pair_graph
        return pair_graph(target, layers, tensors)

    def state_shapes(self, layer: TargetLayer, size: int) -> dict | None:
        """Shapes of a chunk's state arrays (checked when a chunk file is read), or None."""
        return None

    def plan_info(self, target, sizes: list[int], plans: list) -> dict:
        """The method's report entries about its layers' plans (e.g. Pensia's coverage)."""
        return {}

    def info(self, target, sizes: list[int], reduced: list[dict]) -> dict:
        """The method's own report entries, from each layer's reduced chunk states."""
        return {}

    def options(self) -> dict:
        """The user's settings as a plain dict (hashed into a run folder's name)."""
        return {f.name: getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)
                if f.metadata.get("cli", True)}

    def describe(self) -> dict:
        """What the ticket's metadata and the report record of the settings."""
        return self.options()

    def size_range(self, target) -> tuple[int, int]:
        return self.size.lo, self.size.hi

    def check_sizes(self, target, sizes) -> list[int]:
        """``sizes`` (one int or one per layer) as a validated list."""
        L = target.depth
        ns = [int(sizes)] * L if np.ndim(sizes) == 0 else [int(k) for k in sizes]
        if len(ns) != L:
            raise SlthError(f"--n gave {len(ns)} sizes for a target of {L} layers")
        lo, hi = self.size_range(target)
        if any(not lo <= k <= hi for k in ns):
            raise SlthError(f"{self.name}: sizes ({self.size.meaning}) must be between {lo} and "
                            f"{hi}, got {ns}")
        return ns

    def g_params(self, target, sizes: list[int]) -> int:
        """Random parameters of G at these sizes."""
        return sum(t.params for L, k in zip(target_layers(target), self.layer_sizes(sizes))
                   for t in self.tensors(L, k))


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, tuple[type, dict]] = {}


def register(name: str, cls: type | None = None, **overrides):
    """Register ``cls`` (a ``Method`` subclass) under ``name``, with default-setting overrides.
    Usable as a class decorator: ``@register("pensia")``."""
    def deco(c):
        _REGISTRY[name] = (c, overrides)
        if not c.name:
            c.name = name
        return c
    return deco(cls) if cls is not None else deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Registered method names, built-in ones first."""
    _load_builtins()
    return list(_REGISTRY)


def method_class(name: str) -> tuple[type, dict]:
    _load_builtins()
    if name not in _REGISTRY:
        raise SlthError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get(name: str, **settings) -> Method:
    """A method by name, with settings (validated; defaults for the rest)."""
    cls, overrides = method_class(name)
    m = cls(**{**overrides, **settings})
    m.name = name
    return m


def settings_fields(name: str) -> list[dataclasses.Field]:
    cls, _ = method_class(name)
    return list(dataclasses.fields(cls.Settings))


_BUILTINS = ("pensia", "orseau", "malach", "burkholz")


def _load_builtins():
    if all(b in _REGISTRY for b in _BUILTINS):
        return
    from importlib import import_module
    for b in _BUILTINS:
        import_module(f".{b}", __package__)


