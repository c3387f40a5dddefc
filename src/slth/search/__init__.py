"""Finding tickets by training: edge-popup supermask layers, Pensia et al.'s structures, export.

* ``supermask``: ``SupermaskLinear``, ``SupermaskConv2d``, ``SupermaskCopies`` (frozen random
  weights, learned scores, exact top-k by |score|, straight-through gradient).
* ``models``: ``build(model, structure, ...)`` for FC2 / FC4 / LeNet5 and the redundant, wide,
  dense and trained structures; ``from_ticket(ticket)`` to search any constructed G.
* ``train``: ``fit`` (Pensia et al.'s recipe), ``predict``, ``accuracy``.
* ``export``: ``to_sequential`` (prune-style module, bit-for-bit), ``to_ticket``,
  ``save_module`` / ``load_module``.
"""

from .export import load_module, save_module, to_sequential, to_ticket
from .models import MODELS, SCOPES, SEARCHED, STRUCTURES, SearchNet, build, from_ticket
from .supermask import (INITS, SupermaskConv2d, SupermaskCopies, SupermaskLinear, n_keep,
                        topk_mask)
from .train import SearchConfig, accuracy, fit, predict

__all__ = ["INITS", "MODELS", "SCOPES", "SEARCHED", "STRUCTURES", "SearchConfig", "SearchNet",
           "SupermaskConv2d", "SupermaskCopies", "SupermaskLinear", "accuracy", "build", "fit",
           "from_ticket", "load_module", "n_keep", "predict", "save_module", "to_sequential",
           "to_ticket", "topk_mask"]
