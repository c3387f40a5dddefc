"""Evaluate a constructed ticket: certified bound, errors actually found, accuracy, sizes.

``evaluate`` returns the ``report.json`` dictionary of ``slth construct``. Every figure is
measured on the ticket itself (G's weights and masks, float64), never on a copy of the target.

Speed: the test set is run through the ticket's effective form (``Ticket.effective()``, read from
G and the masks): the same masked network with its sums reassociated, so exact in real
arithmetic. ``literal_check_max_diff`` records how far that is, on a sample of test points, from
running the masked layers one by one; the reported maximum errors (test data and gradient
ascent) are recomputed with the literal layer-by-layer network.
"""

from __future__ import annotations

import time
import numpy as np

from .certify import (Domain, ascend_in_groups, bound_details, effective_forward,
                      search_starts)
from .constructions import Construction
from .targets import MLP


def target_dims(target) -> list:
    """An MLP's widths [d_0, ..., d_l]; a Net's input shape and each affine op's output shape."""
    if isinstance(target, MLP):
        return target.dims
    return [list(target.in_shape)] + [list(target.nodes[i].shape) for i in target.affine]


def evaluate(target: MLP, con: Construction, domain: Domain, data=None, *, seed: int = 0,
             restarts: int = 32, steps: int = 100, starts_from_data: int = 32,
             literal_check: int = 500,
             progress=None) -> dict:
    """Certify ``con.ticket`` against ``target`` on ``domain`` and measure it.

    data: a ``Dataset`` (its test split is used) or None. Returns a JSON-able dict.
    """
    (progress or (lambda msg: None))("certifying")
    t = con.ticket
    fwd = t.fast_module()

    def literal(x):
        """The masked network itself, layer by layer (float64)."""
        import torch
        with torch.no_grad():
            return np.concatenate([fwd(torch.as_tensor(x[i:i + 500], dtype=torch.float64)).numpy()
                                   for i in range(0, len(x), 500)]) if len(x) else np.zeros((0, target.out_dim))

    return evaluate_parts(target, con.info, t.sparsity_report(), t.widths, t.effective(), literal,
                          domain, data, seed=seed, restarts=restarts, steps=steps,
                          starts_from_data=starts_from_data, literal_check=literal_check,
                          progress=progress)


def evaluate_parts(target: MLP, info: dict, sparsity: dict, widths: list[int], eff, literal,
                   domain: Domain, data=None, *, seed: int = 0, restarts: int = 32,
                   steps: int = 100, starts_from_data: int = 32, literal_check: int = 500,
                   ascend_all=None, certificate: dict | None = None, progress=None) -> dict:
    """``evaluate`` from a ticket's parts, for tickets never held in memory whole: its
    ``sparsity_report``, widths, effective form ``eff`` and ``literal(x [N, d]) -> [N, d_out]``
    (the masked network run layer by layer). ascend_all(x0 [M, d], steps) -> [M, d] runs the
    gradient ascent (default: ``certify.ascend`` here, in groups of ``ASCENT_GROUP``).
    certificate: ``bound_details`` of ``eff`` on ``domain`` if already computed. The theory's
    sizes come from ``info`` (the construction computed them)."""
    say = progress or (lambda msg: None)
    bound_det = certificate or bound_details(target, eff, domain)
    bound = bound_det["certified_bound"]
    rep = _header(target, info, sparsity, widths, domain, seed)
    rep["certified_bound"] = bound
    rep["per_layer_deviation_bound"] = bound_det["per_layer_deviation"]
    rep["unstable_units"] = bound_det["unstable_units"]

    starts, checks = None, []
    if data is not None:
        say("evaluating on the test data")
        xt, yt = data.x_test.astype(np.float64), data.y_test
        dtype = "float64" if isinstance(target, MLP) else "float32"
        F, G = bulk_outputs(target, eff, xt, dtype)
        rep["bulk_dtype"] = dtype
        # the folded evaluation must agree with the literal masked network
        n_lit = literal_check if isinstance(target, MLP) else min(literal_check, 100)
        idx = np.random.default_rng(seed).choice(len(xt), size=min(n_lit, len(xt)), replace=False)
        err = np.abs(F - G).max(1)
        inside = domain.contains(xt)
        # the largest errors are reported as computed by the literal network
        top = np.argsort(-np.where(inside, err, -1.0))[:64]
        top = top[inside[top]]
        checks = [xt[idx], xt[top]]
        rep["test_inputs"] = int(len(xt))
        rep["test_inputs_in_domain"] = int(inside.sum())
        rep["empirical_max_error_all_test"] = float(err.max())
        rep["target_accuracy"] = float((F.argmax(1) == yt).mean())
        rep["ticket_accuracy"] = float((G.argmax(1) == yt).mean())
        rep["agreement"] = float((F.argmax(1) == G.argmax(1)).mean())
        starts = xt[np.argsort(-err)[:starts_from_data]]
    else:
        rep.update({"empirical_max_error": None, "target_accuracy": None,
                    "ticket_accuracy": None, "agreement": None})
    say("gradient ascent on the error")
    t0 = time.perf_counter()
    x0 = search_starts(target.in_dim, domain, starts, restarts, seed)
    xs = (ascend_all(x0, steps) if ascend_all is not None
          else ascend_in_groups(target, eff, domain, x0, steps))
    rep["ascent_seconds"] = time.perf_counter() - t0
    lit = literal(np.concatenate(checks + [xs]))      # one pass over G for every check
    rep["adversarial_max_error"] = (float(np.abs(target.forward(xs) - lit[-len(xs):]).max())
                                    if len(xs) else 0.0)
    rep["adversarial_seconds"] = time.perf_counter() - t0
    if checks:
        n_idx, n_top = len(idx), len(top)
        rep["literal_check_points"] = int(n_idx)
        G_idx = G[idx] if dtype == "float64" else bulk_outputs(target, eff, xt[idx], "float64")[1]
        rep["literal_check_max_diff"] = (float(np.abs(lit[:n_idx] - G_idx).max()) if n_idx
                                         else 0.0)
        F_top = F[top] if dtype == "float64" else target.forward(xt[top])
        rep["empirical_max_error"] = (float(np.abs(F_top - lit[n_idx:n_idx + n_top]).max())
                                      if n_top else None)
    found = max(rep["adversarial_max_error"], rep.get("empirical_max_error") or 0.0)
    rep["max_error_found"] = found
    rep["bound_tightness"] = bound / found if found > 0 else None
    rep["bound_holds"] = bool(found <= bound)
    return rep


def _header(target, info: dict, sparsity: dict, widths: list[int], domain: Domain,
            seed: int) -> dict:
    """The report's first entries: the method, the sizes of F and G, then the method's info."""
    rep = {
        "method": info.get("method"),
        "eps": info.get("eps"),
        "domain": domain.as_dict(),
        "seed": seed,
        "target_dims": target_dims(target),
        "target_params": target.n_params,
        "random_params": sparsity["params"],
        "active_params": sparsity["active"],
        "density": sparsity["density"],
        "sparsity": sparsity["sparsity"],
        "overparam_factor": sparsity["params"] / target.n_params,
        "active_factor": sparsity["active"] / target.n_params,
        "width_per_layer": widths,
    }
    for k, v in info.items():
        rep.setdefault(k, v)
    return rep


def bulk_outputs(target, eff, x: np.ndarray, dtype: str = "float64", batch: int = 1000):
    """F(x) and the ticket's output through its effective form, [N, d_out] each, in batches
    (``dtype`` "float32" for large convolutional targets: the largest errors are then recomputed
    in float64 by the caller)."""
    import torch

    tdt = torch.float64 if dtype == "float64" else torch.float32
    F, G = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch]), dtype=tdt)
            if dtype == "float64":
                F.append(target.forward(x[i:i + batch]))
            else:
                F.append(_f32_target(target)(xb).double().numpy())
            G.append(effective_forward(target, eff, xb).double().numpy())
    empty = np.zeros((0, target.out_dim))
    return (np.concatenate(F) if F else empty), (np.concatenate(G) if G else empty)


def _f32_target(target):
    if not hasattr(target, "_f32_module"):
        target._f32_module = target.to_module().eval()
    return target._f32_module
