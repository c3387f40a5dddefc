"""Target networks F: ReLU MLPs (:class:`MLP`) and general feed-forward networks
(:class:`slth.nets.Net`: convolutions, pooling, batch norm folded, residual adds).

:func:`load_target` reads a target from

* an ``nn.Module``: traced with ``torch.fx`` (:func:`slth.nets.net_from_module`); a plain chain of
  Linear layers with ReLU between them comes back as an :class:`MLP` (as before), anything else as
  a ``Net``; an operation slth cannot represent is refused with one line naming it and where it is.
  Pass ``input_shape=(C, H, W)`` for convolutional models (models that carry an ``input_shape``
  attribute, like those of :mod:`slth.models`, need none);
* a ``state_dict`` file saved with ``torch.save(model.state_dict())`` (loaded with
  ``weights_only=True``: a pickle that would run code is refused) or a ``.safetensors`` file: an
  MLP, layers in key order ``fc1.weight, fc1.bias, fc2.weight, ...`` (any prefix; weight
  [d_out, d_in], optional bias);
* a ``.safetensors`` file written by ``Net.save`` (the graph travels as JSON metadata): a ``Net``;
* a ``torch.export`` archive ``.pt2`` (checked before loading so that no code from the file runs;
  see :mod:`slth.nets`);
* a weights file plus ``model="path/to/file.py:factory"``: the user's file is imported (only then),
  ``factory()`` builds the module, the weights are loaded into it (``weights_only=True`` or
  safetensors), it is put in eval mode and traced.

Every MLP is also usable where a ``Net`` is expected (``nodes``, ``affine``, ``in_shape``,
``in_dim``, ``out_dim``, ``torch_forward``, ``summary``, ``as_net()``); its ``fingerprint`` is the
MLP one (weights only), unchanged.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SlthError


@dataclass
class MLP:
    """A ReLU MLP. weights[i]: float64 [d_i, d_{i-1}]; biases[i]: float64 [d_i] or None."""

    weights: list[np.ndarray]
    biases: list[np.ndarray | None]
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.names:
            self.names = [f"fc{i + 1}" for i in range(len(self.weights))]

    @property
    def dims(self) -> list[int]:
        """[d_0, d_1, ..., d_l]: input width, hidden widths, output width."""
        return [int(self.weights[0].shape[1])] + [int(w.shape[0]) for w in self.weights]

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in self.biases)

    @property
    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights) + sum(b.size for b in self.biases if b is not None))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: [N, d_0] -> [N, d_l] (float64)."""
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T
            if b is not None:
                h = h + b
            if i < self.depth - 1:
                h = np.maximum(h, 0.0)
        return h

    def to_module(self):
        """A plain ``nn.Sequential`` of Linear/ReLU (float32)."""
        import torch
        from torch import nn

        layers = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                if b is not None:
                    lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < self.depth - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def state_dict(self) -> dict:
        """{name.weight, name.bias} as float32 torch tensors, in layer order."""
        import torch

        out = {}
        for name, w, b in zip(self.names, self.weights, self.biases):
            out[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            if b is not None:
                out[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.safetensors`` file (or a ``torch.save`` state_dict for other suffixes)."""
        path = Path(path)
        sd = self.state_dict()
        tmp = path.with_name(path.name + ".part")
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(sd, str(tmp))
        else:
            import torch
            torch.save(sd, tmp)
        os.replace(tmp, path)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for w, b in zip(self.weights, self.biases):
            h.update(np.ascontiguousarray(w, dtype=np.float64).tobytes())
            if b is not None:
                h.update(np.ascontiguousarray(b, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    # ---- the read-only Net interface (slth.nets.Net): input, linear, relu, linear, ..., linear
    @property
    def nodes(self) -> list:
        from .nets import Node

        out = [Node("input", (), (self.dims[0],), name="input")]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i:
                out.append(Node("relu", (len(out) - 1,), (int(w.shape[1]),), name=f"relu{i}"))
            out.append(Node("linear", (len(out) - 1,), (int(w.shape[0]),), w, b,
                            name=self.names[i] if i < len(self.names) else f"fc{i + 1}"))
        return out

    @property
    def affine(self) -> list[int]:
        return [2 * i + 1 for i in range(self.depth)]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.dims[0],)

    @property
    def in_dim(self) -> int:
        return self.dims[0]

    @property
    def out_dim(self) -> int:
        return self.dims[-1]

    @property
    def name(self) -> str:
        return "-".join(map(str, self.dims))

    def as_net(self):
        """This MLP as a :class:`slth.nets.Net` (same nodes; note: Net.fingerprint differs from
        MLP.fingerprint, which covers the weights only)."""
        from .nets import Net

        return Net(self.nodes, self.name)

    def torch_forward(self, x):
        """Differentiable float64 forward (torch), x [N, d_0]."""
        return self.as_net().torch_forward(x)

    def summary(self) -> list[dict]:
        return self.as_net().summary()


def _check(mlp: MLP, origin: str) -> MLP:
    if not mlp.weights:
        raise SlthError(f"{origin}: no Linear weights found; expected keys like fc1.weight, fc2.weight")
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        if w.ndim != 2:
            raise SlthError(f"{origin}: layer {mlp.names[i]} has a {w.ndim}-D weight "
                            f"{list(w.shape)}; only Linear layers (2-D weights) are supported")
        if not np.all(np.isfinite(w)) or (b is not None and not np.all(np.isfinite(b))):
            raise SlthError(f"{origin}: layer {mlp.names[i]} has NaN or inf weights; "
                            "retrain or fix the target")
        if b is not None and b.shape != (w.shape[0],):
            raise SlthError(f"{origin}: {mlp.names[i]}.bias has shape {list(b.shape)}, "
                            f"expected [{w.shape[0]}]")
        if i > 0 and mlp.weights[i - 1].shape[0] != w.shape[1]:
            raise SlthError(f"{origin}: {mlp.names[i - 1]} outputs {mlp.weights[i - 1].shape[0]} "
                            f"values but {mlp.names[i]} expects {w.shape[1]} inputs; "
                            "layers must chain (keys in layer order)")
    return mlp


def from_state_dict(sd: dict, origin: str = "state_dict") -> MLP:
    """Build an MLP from {prefix.weight, prefix.bias} entries in layer order."""
    import torch

    weights, biases, names = [], [], []
    index: dict[str, int] = {}
    for key, val in sd.items():
        if not isinstance(val, (torch.Tensor, np.ndarray)):
            raise SlthError(f"{origin}: entry {key!r} is not a tensor; expected a state_dict")
        prefix, _, kind = key.rpartition(".")
        arr = val.detach().cpu().double().numpy() if isinstance(val, torch.Tensor) else np.asarray(val, np.float64)
        if kind not in ("weight", "bias"):
            raise SlthError(f"{origin}: unsupported entry {key!r}; only Linear weight/bias "
                            "entries are supported (no batch-norm, no conv)")
        if prefix not in index:
            index[prefix] = len(names)
            names.append(prefix)
            weights.append(None)
            biases.append(None)
        if kind == "weight":
            weights[index[prefix]] = arr
        else:
            biases[index[prefix]] = arr
    for i, w in enumerate(weights):
        if w is None:
            raise SlthError(f"{origin}: {names[i]}.bias has no matching {names[i]}.weight")
    return _check(MLP(weights, biases, names), origin)


def as_mlp(net) -> MLP | None:
    """The :class:`MLP` equal to ``net`` when it is a plain chain input [flatten] linear (relu
    linear)* with no folded batch norm; else None."""
    nodes = net.nodes
    k = 2 if len(nodes) > 1 and nodes[1].op == "flatten" else 1
    if len(nodes) <= k or len(nodes[0].shape) != 1 and k == 1:
        return None
    rest = nodes[k:]
    if len(rest) % 2 != 1:
        return None
    for j, nd in enumerate(rest):
        if nd.op != ("linear" if j % 2 == 0 else "relu") or nd.inputs != (k + j - 1,):
            return None
        if nd.folded:
            return None
    if k == 2 and nodes[1].inputs != (0,):
        return None
    lin = rest[::2]
    names = [nd.name or "fc" for nd in lin]
    if len(set(names)) != len(names):
        names = [f"fc{i + 1}" for i in range(len(lin))]
    return MLP([nd.weight for nd in lin], [nd.bias for nd in lin], names)


def from_module(module, input_shape=None) -> MLP:
    """An MLP from a module made of Linear layers with ReLU between them (traced with torch.fx);
    SlthError when the module is anything else (use :func:`load_target` for general networks)."""
    from .nets import net_from_module

    origin = type(module).__name__
    mlp = as_mlp(net_from_module(module, input_shape))
    if mlp is None:
        raise SlthError(f"{origin} is not an MLP of Linear layers with ReLU between them; load it "
                        "with load_target to get a network (Net)")
    return _check(mlp, origin)


def _read_state_dict(path: Path) -> dict:
    """A state_dict from ``.safetensors`` or a torch file read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SlthError(f"{path} is not a readable safetensors file ({e})") from None
    import pickle

    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SlthError(f"{path} is not a plain state_dict (it holds objects that would run code "
                        "on loading); save it with torch.save(model.state_dict())") from None
    except Exception as e:  # torch raises many types for garbage files
        raise SlthError(f"{path} is not a torch state_dict file ({type(e).__name__}); save it "
                        "with torch.save(model.state_dict()) or as .safetensors") from None
    if not isinstance(sd, dict):
        raise SlthError(f"{path} holds a {type(sd).__name__}, not a state_dict; save it with "
                        "torch.save(model.state_dict())")
    return sd


def _existing_file(src) -> Path:
    path = Path(src)
    if not path.exists():
        raise SlthError(f"target file {path} not found; train one with 'slth train' or give "
                        "a saved state_dict")
    if path.is_dir():
        raise SlthError(f"target {path} is a folder; give a .safetensors, .pt2 or state_dict file")
    return path


def _from_module(module, input_shape):
    from .nets import net_from_module

    net = net_from_module(module, input_shape)
    mlp = as_mlp(net)
    return _check(mlp, type(module).__name__) if mlp is not None else net


def _from_factory(src, model: str, input_shape):
    """Import the user's ``file.py``, call ``factory()``, load the weights file ``src`` into it."""
    import importlib.util
    import sys

    from torch import nn

    file, sep, fn = str(model).rpartition(":")
    if not sep or not file or not fn.isidentifier():
        raise SlthError(f"model {model!r} must be 'path/to/file.py:factory' (a function that "
                        "returns the nn.Module)")
    py = Path(file)
    if not py.is_file() or py.suffix != ".py":
        raise SlthError(f"model file {py} not found; give 'path/to/file.py:factory'")
    if src is None:
        raise SlthError("a model factory needs a weights file (.safetensors or a state_dict)")
    path = _existing_file(src)
    modname = f"slth_user_model_{abs(hash(str(py.resolve())))}"
    spec = importlib.util.spec_from_file_location(modname, py)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        sys.modules.pop(modname, None)
        raise SlthError(f"importing {py} failed ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}); fix the model file") from None
    factory = getattr(mod, fn, None)
    if not callable(factory):
        raise SlthError(f"{py} has no function {fn!r}; give 'path/to/file.py:factory'")
    try:
        net = factory()
    except Exception as e:
        raise SlthError(f"{py}:{fn}() failed ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}); fix the model file") from None
    if not isinstance(net, nn.Module):
        raise SlthError(f"{py}:{fn}() returned a {type(net).__name__}, not an nn.Module")
    sd = _read_state_dict(path)
    try:
        net.load_state_dict(sd, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        first = " ".join(str(e).split())[:200]
        raise SlthError(f"{path} does not fit {py}:{fn}() ({first}); save the weights with "
                        "torch.save(model.state_dict()) from the same model") from None
    net.eval()
    return _from_module(net, input_shape)


def load_target(src, *, input_shape=None, model: str | None = None):
    """A target (:class:`MLP` or :class:`slth.nets.Net`) from an ``nn.Module``, an ``MLP``/``Net``,
    a state_dict, or a path (``.safetensors``, ``.pt2``, torch state_dict); with
    ``model="file.py:factory"``, ``src`` is a weights file for that model (module docstring)."""
    from .nets import Net

    if model is not None:
        return _from_factory(src, model, input_shape)
    if isinstance(src, MLP):
        return _check(src, "MLP")
    if isinstance(src, Net):
        return src
    try:
        from torch import nn
        if isinstance(src, nn.Module):
            return _from_module(src, input_shape)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(src, dict):
        return from_state_dict(src)
    path = _existing_file(src)
    if path.suffix == ".pt2":
        from .nets import net_from_pt2

        net = net_from_pt2(path)
        mlp = as_mlp(net)
        return _check(mlp, str(path)) if mlp is not None else net
    if path.suffix == ".safetensors":
        from .nets import load_net_safetensors

        net = load_net_safetensors(path)
        if net is not None:
            return net
    return from_state_dict(_read_state_dict(path), str(path))


def save_target(target, path) -> None:
    """Write a target: MLP to ``.safetensors``/``.pt`` (state_dict) or ``.pt2``; Net to
    ``.safetensors`` (graph in the metadata) or ``.pt2``."""
    path = Path(path)
    if path.suffix == ".pt2":
        if isinstance(target, MLP):
            from .nets import export_module, write_pt2
            tmp = path.with_name(path.name + ".part")
            write_pt2(export_module(target.to_module(), target.in_shape), tmp)
            os.replace(tmp, path)
        else:
            target.save(path)
        return
    if isinstance(target, MLP):
        if path.suffix not in (".safetensors", ".pt", ".pth"):
            raise SlthError(f"cannot write a target as {path.name}; use .safetensors, .pt or .pt2")
        target.save(path)
        return
    if path.suffix != ".safetensors":
        raise SlthError(f"a {type(target).__name__} target is written as .safetensors (graph in "
                        f"the metadata) or .pt2, not {path.suffix or path.name}")
    target.save(path)


# --------------------------------------------------------------------------------------------
# training


DEFAULT_LR = {"mlp": 0.1, "resnet20": 0.1, "lenet5": 0.05, "digits-cnn": 0.1}


@dataclass
class TrainConfig:
    """Hyper-parameters of target training (defaults: Pensia et al.'s Experiment 1 recipe).

    ``model``: one of :data:`slth.models.MODELS` (``hidden``/``bias`` apply to ``mlp`` only);
    ``lr`` None means the model's default (:data:`DEFAULT_LR`).
    """

    hidden: tuple[int, ...] = (500,)
    bias: bool = False
    epochs: int = 10
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    model: str = "mlp"

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR.get(self.model, 0.1)


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> float:
    """Fraction of rows of x whose argmax of predict(x_batch) equals y."""
    correct = 0
    for i in range(0, len(x), batch):
        out = predict(x[i:i + batch])
        correct += int((np.asarray(out).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def train_target(data, cfg: TrainConfig, progress=None):
    """Train ``cfg.model`` on ``data`` (a Dataset). Returns (target, test accuracy in [0, 1]).

    The target is an :class:`MLP` for ``mlp`` and a :class:`slth.nets.Net` otherwise (batch norm
    trains in train mode, then the model is put in eval mode and traced, batch norm folded, the
    weights rounded to float32 so that float32 files hold them exactly). SGD with momentum, weight
    decay and a cosine schedule; seeded (initialisation and shuffling).
    """
    import torch
    from torch import nn

    from .models import MODELS, build

    if cfg.model not in MODELS:
        raise SlthError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    if cfg.epochs < 1:
        raise SlthError(f"epochs must be >= 1, got {cfg.epochs}")
    if any(h < 1 for h in cfg.hidden):
        raise SlthError(f"hidden widths must be >= 1, got {list(cfg.hidden)}")
    if not cfg.learning_rate > 0:
        raise SlthError(f"lr must be > 0, got {cfg.lr}")
    if cfg.batch_size < 1:
        raise SlthError(f"batch size must be >= 1, got {cfg.batch_size}")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    image = tuple(data.image_shape)
    if cfg.model == "mlp":
        model = build("mlp", (1, 1, data.dim), data.n_classes, cfg.hidden, cfg.bias)
        x = torch.from_numpy(data.x_train)
    else:
        if int(np.prod(image)) != data.dim:
            raise SlthError(f"{data.name}: image shape {list(image)} does not match {data.dim} "
                            "features")
        model = build(cfg.model, image, data.n_classes)
        x = torch.from_numpy(data.x_train).reshape(len(data.x_train), *image)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    lossf = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        model.train()
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            progress(epoch + 1, loss.item())
    model.eval()
    target = load_target(model)
    if isinstance(target, MLP):
        target.names = [f"fc{i + 1}" for i in range(target.depth)]
        acc = accuracy(target.forward, data.x_test, data.y_test)
        return target, acc
    from .nets import round_to_float32

    target = round_to_float32(target)
    target.name = cfg.model
    module = target.to_module().eval()

    def predict(xb):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))).numpy()

    acc = accuracy(predict, data.x_test, data.y_test, batch=1000)
    return target, acc


def cache_dir() -> Path:
    return Path(os.environ.get("SLTH_CACHE", Path.home() / ".cache" / "slth"))


def default_target(dataset: str = "fashion-mnist", hidden=(500,), bias: bool = False,
                   epochs: int = 10, seed: int = 0, progress=None) -> tuple[MLP, str]:
    """A trained target, cached under ``$SLTH_CACHE`` (default ``~/.cache/slth``).

    Returns (MLP, description). The description says how it was made (data, recipe, accuracy).
    """
    from .data import load_dataset

    cfg = TrainConfig(hidden=tuple(hidden), bias=bias, epochs=epochs, seed=seed)
    tag = f"{dataset}-{'-'.join(map(str, hidden))}-{'bias' if bias else 'nobias'}-e{epochs}-s{seed}"
    path = cache_dir() / "targets" / f"{tag}.safetensors"
    if path.exists():
        mlp = load_target(path)
        meta = path.with_suffix(".txt")
        desc = meta.read_text().strip() if meta.exists() else f"cached target {path}"
        return mlp, desc
    data = load_dataset(dataset)
    t0 = time.time()
    mlp, acc = train_target(data, cfg, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlp.save(path)
    desc = (f"{'-'.join(map(str, mlp.dims))} ReLU net trained on {dataset} ({epochs} epochs, "
            f"seed {seed}, test accuracy {acc:.2%}, {time.time() - t0:.0f} s), cached at {path}")
    path.with_suffix(".txt").write_text(desc + "\n")
    return mlp, desc


def synthetic_exp1_target(seed: int = 0) -> MLP:
    """A 784-500-10 bias-free net with a trained-like weight distribution (no data needed).

    Weights are Student-t (3 dof) scaled to Experiment 1's spread (std ~0.035 / ~0.12) and
    clipped to its published range [-0.464, 0.541].
    """
    rng = np.random.default_rng(seed)
    w1 = np.clip(rng.standard_t(3, (500, 784)) * 0.035 / np.sqrt(3), -0.464, 0.541)
    w2 = np.clip(rng.standard_t(3, (10, 500)) * 0.12 / np.sqrt(3), -0.464, 0.541)
    return MLP([w1, w2], [None, None], ["fc1", "fc2"])
