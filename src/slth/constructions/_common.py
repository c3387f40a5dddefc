"""Pieces shared by the constructions: seeded streams, float32 rounding, the result they return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for (seed, *key). Streams never depend on sizes chosen
    elsewhere, so growing one dimension of G leaves the other draws unchanged."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *map(int, key)])))


def f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 (G is stored in float32) and return as float64 for exact arithmetic."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@dataclass
class Construction:
    """A ticket built in memory and what was measured while building it.

    info holds at least: method, the size per layer (``n_per_layer`` or ``samples_per_layer``),
    the theory's sizes (``theory_*``), width_per_layer (G's widths), max_weight_error (largest
    |effective - target| entry). built: the driver's ``Built`` (effective form, certificate)."""

    ticket: object
    info: dict = field(default_factory=dict)
    built: object = None
