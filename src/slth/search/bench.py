"""Training throughput of our supermask layers vs hidden-networks' sort-based ``GetSubnet``.

Both networks are built from the same seed (identical weights, scores and structure); the
reference differs only in how each layer makes its mask: ``selector = "sort"`` (clone, full
sort, scatter - hidden-networks' code path) instead of our top-k. They train on the same batches
in alternating rounds of ``steps`` SGD steps (forward, backward, optimizer step), so both see
the same machine conditions. The gradients are the same computation, so while both keep the
same masks their losses agree bit for bit: ``max_loss_diff`` over the first round checks it.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SlthError
from .models import build
from .train import default_lr


def _steps(net, opt, x, y, batches) -> tuple[float, list[float]]:
    net.train()
    losses = []
    t0 = time.perf_counter()
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - t0, losses


def bench_supermask(data, model: str = "fc2", structure: str = "wide", density: float = 0.5,
                    steps: int = 20, rounds: int = 3, batch_size: int = 64, seed: int = 0,
                    progress=None) -> dict:
    """Samples/s of training with our layers and with the sort-based reference; see module doc."""
    if structure == "trained":
        raise SlthError("structure 'trained' has no supermask; pick a searched structure")
    if steps < 1 or rounds < 1:
        raise SlthError(f"--steps and --rounds must be >= 1, got {steps} and {rounds}")
    nets = {}
    for impl in ("ours", "sort"):
        net = build(model, structure, data.image_shape, data.n_classes, density=density,
                    scope="layer", seed=seed)
        if impl == "sort":
            for m in net.supermasks():
                m.selector = "sort"
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad],
                              lr=default_lr(model), momentum=0.9, weight_decay=5e-4)
        nets[impl] = (net, opt)
    with torch.no_grad():
        same_masks = all(torch.equal(a.compute_masks()[0], _sort_mask(b)) for a, b in
                         zip(nets["ours"][0].supermasks(), nets["sort"][0].supermasks()))
    x = torch.from_numpy(np.ascontiguousarray(data.x_train))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train))
    gen = torch.Generator().manual_seed(seed)
    times = {"ours": [], "sort": []}
    losses = {}
    warm = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(2)]
    for impl, (net, opt) in nets.items():
        _steps(net, opt, x, y, warm)
    for r in range(rounds):
        batches = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(steps)]
        for impl, (net, opt) in nets.items():
            if progress:
                progress(f"round {r + 1}/{rounds}: {impl}", 2 * r + (impl == "sort"), 2 * rounds)
            t, ls = _steps(net, opt, x, y, batches)
            times[impl].append(t)
            losses.setdefault(impl, ls)
    sps = {k: steps * batch_size / statistics.median(v) for k, v in times.items()}
    net = nets["ours"][0]
    return {"model": model, "structure": structure, "density": density, "data": data.name,
            "widths": net.info["widths"], "searched_params": net.searched_params,
            "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "threads": torch.get_num_threads(),
            "samples_per_s": sps, "speedup": sps["ours"] / sps["sort"],
            "round_seconds": times, "same_initial_masks": bool(same_masks),
            "max_loss_diff_first_round": float(max(abs(a - b) for a, b in zip(losses["ours"], losses["sort"])))}


def _sort_mask(layer) -> torch.Tensor:
    from .supermask import SortGetSubnet
    return SortGetSubnet.apply(layer.scores.abs(), layer.density)
