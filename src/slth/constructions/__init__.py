"""Constructions: one module per paper, each a registered ``Method`` (``base.py``).

``pensia`` (SubsetSum), ``orseau`` (golden-ratio digits over hyperbolic weights; variant
``orseau-uniform``), ``malach`` (pairs). ``get(name, **settings)`` returns a method;
``construct(target, method=..., n=... or eps=..., **settings)`` builds its ticket in memory through
the one driver (``slth.pipeline``) and returns a ``Construction``.
"""

from __future__ import annotations

from ._common import Construction
from .base import (Method, TargetLayer, Tensor, get, method_class, names, register,
                   settings_fields, unregister)


def construct(target, method: str = "pensia", **kw) -> Construction:
    """Build a ticket for ``target`` with the named method (``slth.pipeline.construct``)."""
    from ..pipeline import construct as build_in_memory
    return build_in_memory(target, method, **kw)


def __getattr__(name):
    if name == "METHODS":
        return tuple(names())
    raise AttributeError(name)


__all__ = ["Construction", "Method", "TargetLayer", "Tensor", "construct", "get", "method_class",
           "names", "register", "settings_fields", "unregister"]
