"""Training loop of the search (and of the dense trained baseline): Pensia et al.'s recipe.

SGD with momentum 0.9, weight decay 5e-4 on the trainable tensors (the scores; the weights for
``trained``), batch 64, cosine learning-rate schedule stepped per batch, lr 0.1 for FC models and
0.01 for LeNet5. Loss: cross-entropy on the labels (``ce``) or the squared error to a teacher's
outputs [N, C] after the best non-negative rescaling of the batch's outputs, relative to the
teacher's square (``mse``, see ``scaled_mse``). Every random draw (shuffling) comes from ``seed``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SlthError

LOSSES = ("ce", "mse")


@dataclass
class SearchConfig:
    """Hyper-parameters. lr None: 0.1 (FC models) or 0.01 (LeNet5), as in Pensia et al."""

    epochs: int = 10
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    loss: str = "ce"

    def check(self) -> "SearchConfig":
        if self.epochs < 1:
            raise SlthError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise SlthError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise SlthError(f"learning rate must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise SlthError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def default_lr(model: str) -> float:
    return 0.01 if model == "lenet5" else 0.1


def predict(net, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Outputs of ``net`` on x [N, d] -> float32 [N, C], masks computed once."""
    net.eval()
    outs = []
    ctx = net.fixed_masks() if hasattr(net, "fixed_masks") else _null()
    with torch.no_grad(), ctx:
        for i in range(0, len(x), batch):
            outs.append(net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax output equals the label y (int)."""
    return float((predict(net, x).argmax(1) == y).mean()) if len(x) else 0.0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def scaled_mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """min over a scale s >= 0 of ||s out - t||^2 / ||t||^2 on the batch (s = <out, t>+ / ||out||^2).

    Relative and scale-free: a random mask's outputs can be orders of magnitude larger or
    smaller than the teacher's, and a plain MSE is then lowest for outputs near 0, where the
    search stalls (measured: relative MSE stuck at 1.0). With the best scale factored out only
    the shape of the outputs is fitted; a planted ticket is still an optimum (s = 1, loss ~ 0).
    """
    tt = t.pow(2).sum().clamp_min(1e-30)
    oo = out.pow(2).sum().clamp_min(1e-30)
    s = (out * t).sum().clamp_min(0.0) / oo
    return (s * out - t).pow(2).sum() / tt


def fit(net, x_train: np.ndarray, y_train: np.ndarray, cfg: SearchConfig, *,
        x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
        progress=None) -> dict:
    """Train ``net``'s trainable tensors on (x_train [N, d] float32, y_train: int labels [N] for
    "ce", float outputs [N, C] for "mse"). If test data is given, its accuracy is measured after
    every epoch. progress(epochs_done, steps_done, loss) is called after every step.

    Returns {"train_loss": [per epoch], "test_accuracy": [per epoch], "seconds", "steps",
    "samples_per_s"}.
    """
    cfg.check()
    lr = cfg.lr if cfg.lr is not None else default_lr(getattr(net, "info", {}).get("model", ""))
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise SlthError("the network has nothing to train (no scores, no trainable weights)")
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = len(x_train)
    per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * per_epoch)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x = torch.from_numpy(np.ascontiguousarray(x_train))
    y = torch.from_numpy(np.ascontiguousarray(y_train))
    if cfg.loss == "mse":
        lossf = scaled_mse
    else:
        lossf = F.cross_entropy
    hist = {"train_loss": [], "test_accuracy": []}
    steps = 0
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(cfg.epochs):
        net.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            lv = loss.item()
            total += lv * len(idx)
            if progress:
                progress(epoch, steps, lv)
        train_s += time.perf_counter() - te
        hist["train_loss"].append(total / n)
        if x_test is not None and y_test is not None:
            hist["test_accuracy"].append(accuracy(net, x_test, y_test))
    hist["seconds"] = time.perf_counter() - t0
    hist["steps"] = steps
    hist["samples_per_s"] = cfg.epochs * n / max(train_s, 1e-9)
    hist["lr"] = lr
    return hist
