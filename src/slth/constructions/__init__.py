"""Constructions: one module per paper. Each plans G's widths, samples G, and chooses the mask.

``construct(target, method=..., **settings)`` dispatches to ``<method>.construct`` and returns a
``Construction`` (the ticket and what was measured while building it).
"""

from __future__ import annotations

from importlib import import_module

from ..errors import SlthError
from ._common import Construction

METHODS = ("pensia", "malach", "orseau")


def construct(target, method: str = "pensia", **settings) -> Construction:
    """Build a ticket for ``target`` (an ``MLP``) with the named construction."""
    if method not in METHODS:
        raise SlthError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        mod = import_module(f".{method}", __name__)
    except ModuleNotFoundError:
        raise SlthError(f"method {method!r} is not available in this version") from None
    return mod.construct(target, **settings)


__all__ = ["Construction", "METHODS", "construct"]
