"""Export a searched network in the standard formats of constructed tickets.

* ``to_sequential(net)``: an ``nn.Sequential`` whose Linear / Conv2d layers carry prune-style
  ``weight_orig`` / ``weight_mask`` (and ``bias_orig`` / ``bias_mask``), exactly as
  ``torch.nn.utils.prune`` makes them; frozen convolutions are plain ``Conv2d`` layers, and a
  redundant layer's copies become a Linear [r d_in, d_in] whose only possible entries are the
  copies (all other entries 0 and masked). It runs with nothing of ours and gives bit-for-bit
  the search network's outputs. Works for every model, LeNet5 included. (A net searched over a
  ticket's G with ``rescale`` exports G's original weights: outputs are the search net's times
  ``info["output_scale"]``, equal up to rounding.)
* ``to_ticket(net)``: a ``slth.ticket.Ticket`` (FC models only: a Ticket is Linear layers with a
  ReLU after each but the last). The linear variant of the redundant layer has no ReLU between
  the copies U and the next layer V; it is written with the identity
  ``V u = V relu(u) - V relu(-u)`` as U' = [U; -U] (ReLU) and V' = [V, -V], equal in exact
  arithmetic (float32 outputs agree to rounding, not bit for bit). A Ticket counts every entry
  of a copies layer's [r d_in, d_in] matrix as a parameter of G, so its ``density`` is lower
  than the search density; ``meta`` keeps the search's own counts.
* ``save_module`` / ``load_module``: the Sequential as one ``.safetensors`` file. Tensor names
  are the Sequential's state_dict names (``{i}.weight_orig`` float32, ``{i}.weight_mask`` bool,
  ``{i}.weight`` for frozen layers); the header's metadata key ``slth`` holds JSON with
  ``format`` ("slth-search-module"), ``arch`` (one dict per layer, enough to rebuild it) and
  ``meta``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import SlthError
from ..jsonio import jsonable
from ..ticket import Layer, Ticket
from .supermask import SupermaskConv2d, SupermaskCopies, SupermaskLinear

FORMAT = "slth-search-module"


def _masked_copy(layer: nn.Module, weight, mask, bias=None, bias_mask=None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    if mask is not None:
        prune.custom_from_mask(layer, "weight", mask.bool())
    if bias is not None and bias_mask is not None:
        prune.custom_from_mask(layer, "bias", bias_mask.bool())
    return layer


def arch_of(net) -> list[dict]:
    """One dict per layer of ``net.body`` describing its exported counterpart."""
    arch = []
    for m in net.body:
        if isinstance(m, SupermaskCopies):
            arch.append({"type": "Linear", "in": m.in_features, "out": m.in_features * m.r,
                         "bias": False, "pruned": True})
        elif isinstance(m, (SupermaskLinear, nn.Linear)):
            arch.append({"type": "Linear", "in": m.in_features, "out": m.out_features,
                         "bias": m.bias is not None, "pruned": isinstance(m, SupermaskLinear)})
        elif isinstance(m, (SupermaskConv2d, nn.Conv2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            p = m.padding if isinstance(m.padding, int) else m.padding[0]
            arch.append({"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": k,
                         "stride": s, "padding": p, "bias": m.bias is not None,
                         "pruned": isinstance(m, SupermaskConv2d)})
        elif isinstance(m, nn.ReLU):
            arch.append({"type": "ReLU"})
        elif isinstance(m, nn.MaxPool2d):
            arch.append({"type": "MaxPool2d", "kernel": m.kernel_size})
        elif isinstance(m, nn.Flatten):
            arch.append({"type": "Flatten"})
        elif isinstance(m, nn.Unflatten):
            arch.append({"type": "Unflatten", "shape": list(m.unflattened_size)})
        else:  # pragma: no cover - build() makes none
            raise SlthError(f"cannot export layer {type(m).__name__}")
    return arch


def _empty(spec: dict) -> nn.Module:
    t = spec["type"]
    if t == "Linear":
        return nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    if t == "Conv2d":
        return nn.Conv2d(spec["in"], spec["out"], spec["kernel"], spec["stride"], spec["padding"],
                         bias=spec["bias"])
    if t == "ReLU":
        return nn.ReLU()
    if t == "MaxPool2d":
        return nn.MaxPool2d(spec["kernel"])
    if t == "Flatten":
        return nn.Flatten()
    if t == "Unflatten":
        return nn.Unflatten(1, tuple(spec["shape"]))
    raise SlthError(f"unknown layer type {t!r} in the module file; was it written by slth?")


def to_sequential(net) -> nn.Sequential:
    """The prune-style ``nn.Sequential`` equivalent of ``net`` (see the module docstring). For a
    net from ``from_ticket``: the ticket's G (original weights) with the found masks."""
    if getattr(net, "source_ticket", None) is not None:
        return to_ticket(net).module()
    mods = []
    with net.fixed_masks():
        for spec, m in zip(arch_of(net), net.body):
            new = _empty(spec)
            if isinstance(m, SupermaskCopies):
                (mask,) = m.masks()
                new = _masked_copy(new, m.dense(m.weight), m.dense(mask))
            elif isinstance(m, (SupermaskLinear, SupermaskConv2d)):
                ms = m.masks()
                new = _masked_copy(new, m.weight, ms[0], m.bias, ms[1] if len(ms) > 1 else None)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                new = _masked_copy(new, m.weight.detach(), None,
                                   None if m.bias is None else m.bias.detach())
                if isinstance(m, nn.Conv2d):
                    new.weight.requires_grad_(False)
            mods.append(new)
    return nn.Sequential(*mods)


def to_ticket(net, meta: dict | None = None) -> Ticket:
    """The searched network as a ``Ticket`` (FC models; see the module docstring). For a net
    from ``from_ticket``: the source ticket's G (original weights) with the found masks."""
    src = getattr(net, "source_ticket", None)
    if src is not None:
        with net.fixed_masks():
            found = [m.masks() for m in net.supermasks()]
        return Ticket([Layer(L.weight, ms[0].numpy() > 0, L.bias,
                             None if L.bias is None else ms[1].numpy() > 0)
                       for L, ms in zip(src.layers, found)], dict(meta or {}))
    ops = []  # ("lin", weight, mask, bias, bias_mask) as numpy, or ("relu",)
    with net.fixed_masks():
        for m in net.body:
            if isinstance(m, SupermaskCopies):
                (mask,) = m.masks()
                ops.append(("lin", m.dense(m.weight).numpy(), m.dense(mask).numpy() > 0, None, None))
            elif isinstance(m, SupermaskLinear):
                ms = m.masks()
                ops.append(("lin", m.weight.numpy().copy(), ms[0].numpy() > 0,
                            None if m.bias is None else m.bias.numpy().copy(),
                            None if m.bias is None else ms[1].numpy() > 0))
            elif isinstance(m, nn.Linear):
                w = m.weight.detach().numpy().copy()
                b = None if m.bias is None else m.bias.detach().numpy().copy()
                ops.append(("lin", w, np.ones(w.shape, bool), b, None if b is None else np.ones(b.shape, bool)))
            elif isinstance(m, nn.ReLU):
                ops.append(("relu",))
            else:
                raise SlthError("only FC models export as a Ticket (Linear layers with ReLU "
                                "between them); use module.safetensors for conv models")
    layers: list[Layer] = []
    i = 0
    while i < len(ops):
        _, w, mk, b, bm = ops[i]
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if nxt is not None and nxt[0] == "lin":  # linear variant: U then V with no ReLU
            _, v, vm, vb, vbm = nxt
            layers.append(Layer(np.concatenate([w, -w]), np.concatenate([mk, mk])))
            layers.append(Layer(np.concatenate([v, -v], 1), np.concatenate([vm, vm], 1), vb, vbm))
            i += 3 if i + 2 < len(ops) else 2
        else:
            layers.append(Layer(w, mk, b, bm))
            i += 2
    return Ticket([Layer(np.ascontiguousarray(L.weight, np.float32), L.mask,
                         None if L.bias is None else np.ascontiguousarray(L.bias, np.float32),
                         L.bias_mask) for L in layers], dict(meta or {}))


def save_module(seq: nn.Sequential, arch: list[dict], path: str | os.PathLike,
                meta: dict | None = None) -> None:
    """Write ``seq`` (from ``to_sequential``) as safetensors; see the module docstring."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in seq.state_dict().items():
        v = v.detach()
        tensors[k] = v.bool().contiguous() if k.endswith("_mask") else v.float().contiguous()
    head = {"format": FORMAT, "version": "1", "arch": arch, "meta": meta or {}}
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"slth": json.dumps(jsonable(head), sort_keys=True)})
    os.replace(tmp, path)


def load_module(path: str | os.PathLike) -> tuple[nn.Sequential, dict]:
    """Read a file written by ``save_module``; returns (the prune-style Sequential, meta)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "module.safetensors"
    if not path.exists():
        raise SlthError(f"module file {path} not found; run 'slth search' first")
    try:
        with safe_open(str(path), framework="pt") as f:
            head = json.loads((f.metadata() or {}).get("slth", "{}"))
            t = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise SlthError(f"{path} is not a readable slth module file ({e})") from None
    if head.get("format") != FORMAT:
        raise SlthError(f"{path} is not an slth search module (no '{FORMAT}' metadata)")
    mods = []
    for i, spec in enumerate(head["arch"]):
        m = _empty(spec)
        if spec["type"] in ("Linear", "Conv2d"):
            w = t.get(f"{i}.weight_orig", t.get(f"{i}.weight"))
            b = t.get(f"{i}.bias_orig", t.get(f"{i}.bias"))
            m = _masked_copy(m, w, t.get(f"{i}.weight_mask"), b, t.get(f"{i}.bias_mask"))
        mods.append(m)
    return nn.Sequential(*mods), head.get("meta", {})
