"""Target networks F: ReLU MLPs ``F(x) = W_l relu(... relu(W_1 x + c_1) ...) + c_l``.

A target comes from an ``nn.Module`` (Linear layers, ReLU between them), from a ``state_dict``
file saved with ``torch.save(model.state_dict())`` (loaded with ``weights_only=True``: a pickle
that would run code is refused), or from a ``.safetensors`` file. Layers are taken in key order:
``fc1.weight, fc1.bias, fc2.weight, ...`` (any prefix; weight [d_out, d_in], optional bias).
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


def from_module(module) -> MLP:
    """Accept a module made of Linear layers with ReLU (and Flatten/Identity) between them."""
    from torch import nn

    weights, biases, names = [], [], []
    for name, m in module.named_modules():
        if m is module and not isinstance(m, nn.Linear):
            continue
        if isinstance(m, nn.Linear):
            weights.append(m.weight.detach().cpu().double().numpy())
            biases.append(None if m.bias is None else m.bias.detach().cpu().double().numpy())
            names.append(name or "fc")
        elif isinstance(m, (nn.ReLU, nn.Flatten, nn.Identity, nn.Sequential, nn.ModuleList)):
            continue
        elif len(list(m.children())) == 0:
            raise SlthError(f"module layer {name!r} ({type(m).__name__}) is not supported; "
                            "targets are MLPs of Linear layers with ReLU between them")
    return _check(MLP(weights, biases, names), type(module).__name__)


def load_target(src) -> MLP:
    """An MLP from an ``nn.Module``, an ``MLP``, or a path (``.safetensors`` or torch state_dict)."""
    if isinstance(src, MLP):
        return _check(src, "MLP")
    try:
        from torch import nn
        if isinstance(src, nn.Module):
            return from_module(src)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(src, dict):
        return from_state_dict(src)
    path = Path(src)
    if not path.exists():
        raise SlthError(f"target file {path} not found; train one with 'slth train' or give "
                        "a saved state_dict")
    if path.is_dir():
        raise SlthError(f"target {path} is a folder; give a .safetensors or state_dict file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SlthError(f"{path} is not a readable safetensors file ({e})") from None
        return from_state_dict(sd, str(path))
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
    return from_state_dict(sd, str(path))


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainConfig:
    """Hyper-parameters of target training (defaults: Pensia et al.'s Experiment 1 recipe)."""

    hidden: tuple[int, ...] = (500,)
    bias: bool = False
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> float:
    """Fraction of rows of x whose argmax of predict(x_batch) equals y."""
    correct = 0
    for i in range(0, len(x), batch):
        out = predict(x[i:i + batch])
        correct += int((np.asarray(out).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def train_target(data, cfg: TrainConfig, progress=None) -> tuple[MLP, float]:
    """Train a ReLU MLP on ``data`` (a Dataset). Returns (MLP, test accuracy in [0, 1]).

    SGD with momentum, weight decay and a cosine schedule; seeded (initialisation and shuffling).
    """
    import torch
    from torch import nn

    if cfg.epochs < 1:
        raise SlthError(f"epochs must be >= 1, got {cfg.epochs}")
    if any(h < 1 for h in cfg.hidden):
        raise SlthError(f"hidden widths must be >= 1, got {list(cfg.hidden)}")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dims = [data.dim, *cfg.hidden, data.n_classes]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=cfg.bias))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
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
    mlp = from_module(model)
    mlp.names = [f"fc{i + 1}" for i in range(mlp.depth)]
    acc = accuracy(mlp.forward, data.x_test, data.y_test)
    return mlp, acc


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
