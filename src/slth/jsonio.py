"""JSON in slth's files: numpy values and paths written as plain JSON, files replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def jsonable(obj):
    """``obj`` with numpy scalars and arrays, tuples and paths turned into plain JSON values
    (dict keys into strings); anything else is left for ``json`` to accept or refuse."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    """Write ``data`` as JSON to a temporary file, then rename it into place: a kill never leaves
    half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(jsonable(data), indent=indent) + "\n")
    os.replace(tmp, path)
