"""Planted tickets: does edge-popup find a ticket that is known to be there?

A construction (``slth construct``) gives a random network G, a mask (the planted ticket) and a
certified bound on its error to the target F. We run edge-popup on that same G - same frozen
weights, fresh random scores, the planted mask never shown - and measure, for every density and
number of epochs:

* test accuracy, and agreement with F (same predicted class);
* error to F on the test inputs: ``error_mean`` = mean over inputs of max_k |F(x)_k - G'(x)_k|,
  ``error_max`` = the largest over inputs;
* precision (kept weights that are planted ones / kept) and recall (planted weights kept /
  planted), over all weights and biases of G and per layer. A random mask has expected
  precision = the planted density and recall = its own density: that is chance.

The search runs on G rescaled to Kaiming scale (``from_ticket(rescale=True)``: same masks, same
argmax), with edge-popup's usual recipe. The default loss is cross-entropy on the labels;
``loss="mse"`` fits F's outputs instead (the planted ticket is a near-optimum of that loss).
Every figure is measured on G itself (original weights, found mask, float64).
"""

from __future__ import annotations

import time

import numpy as np

from ..search.models import from_ticket
from ..search.export import to_ticket
from ..search.supermask import check_density
from ..search.train import SearchConfig, fit


def _masks(ticket) -> list[np.ndarray]:
    """Per layer: the weight mask and bias mask flattened together (bool)."""
    out = []
    for L in ticket.layers:
        parts = [L.mask.reshape(-1)]
        if L.bias_mask is not None:
            parts.append(L.bias_mask.reshape(-1))
        out.append(np.concatenate(parts).astype(bool))
    return out


def precision_recall(found, planted) -> dict:
    """Overlap of two tickets over the same G: totals and per layer."""
    fm, pm = _masks(found), _masks(planted)
    layers = []
    tp = kept = plant = 0
    for f, p in zip(fm, pm):
        t = int((f & p).sum())
        layers.append({"kept": int(f.sum()), "planted": int(p.sum()), "both": t,
                       "precision": t / max(1, int(f.sum())), "recall": t / max(1, int(p.sum()))})
        tp, kept, plant = tp + t, kept + int(f.sum()), plant + int(p.sum())
    return {"precision": tp / max(1, kept), "recall": tp / max(1, plant), "kept": kept,
            "planted": plant, "both": tp, "layers": layers}


def output_errors(out: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict:
    err = np.abs(out.astype(np.float64) - ref).max(1)
    return {"accuracy": float((out.argmax(1) == y).mean()),
            "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
            "error_mean": float(err.mean()), "error_max": float(err.max())}


def plant(ticket, target, data, densities, epochs_list, *, scope: str = "global",
          loss: str = "ce", seed: int = 0, lr: float | None = None, batch_size: int = 64,
          certified_bound: float | None = None, progress=None) -> dict:
    """Search the G of ``ticket`` (a planted ticket for ``target``, an MLP) on ``data`` at every
    density x epochs; returns {"planted": {...}, "runs": [...], "settings": {...}}."""
    densities = [check_density(d, "every density of --density-grid") for d in densities]
    f_test = target.forward(data.x_test)
    planted_out = ticket.forward(data.x_test)
    planted = {"density": ticket.density, "active_params": ticket.active_params,
               "params": ticket.random_params, "widths": ticket.widths,
               "certified_bound": certified_bound,
               "target_accuracy": float((f_test.argmax(1) == data.y_test).mean()),
               **output_errors(planted_out, f_test, data.y_test)}
    f_train = target.forward(data.x_train) if loss == "mse" else None
    runs = []
    total = len(densities) * len(epochs_list)
    for i, d in enumerate(densities):
        for j, e in enumerate(epochs_list):
            n = i * len(epochs_list) + j
            if progress:
                progress(f"density {d:g}, {e} epochs", n, total)
            net = from_ticket(ticket, density=d, scope=scope, seed=seed)
            # the search net computes G(x) / output_scale (see from_ticket): so does the teacher
            y_train = (data.y_train if f_train is None else
                       (f_train / net.info["output_scale"]).astype(np.float32))
            cfg = SearchConfig(epochs=e, lr=lr, batch_size=batch_size, seed=seed, loss=loss)
            t0 = time.perf_counter()
            hist = fit(net, data.x_train, y_train, cfg, x_test=data.x_test, y_test=data.y_test)
            found = to_ticket(net)
            pr = precision_recall(found, ticket)
            runs.append({"density": d, "sparsity": 1 - d, "epochs": e,
                         "kept": pr["kept"], "precision": pr["precision"], "recall": pr["recall"],
                         "chance_precision": planted["density"],
                         **output_errors(found.forward(data.x_test), f_test, data.y_test),
                         "final_train_loss": hist["train_loss"][-1],
                         "seconds": time.perf_counter() - t0, "layers": pr["layers"]})
    if progress:
        progress("done", total, total)
    return {"settings": {"scope": scope, "loss": loss, "seed": seed, "lr": lr,
                         "batch_size": batch_size, "densities": densities,
                         "epochs": list(epochs_list)},
            "planted": planted, "runs": runs}
