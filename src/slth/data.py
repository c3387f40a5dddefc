"""Datasets: the embedded digits data, and (Fashion-)MNIST from standard IDX files.

Every dataset comes back as float32 pixels scaled to [0, 1] exactly like torchvision's
``ToTensor`` (uint8 / 255; digits: value / 16), flattened to [N, d], with int64 labels.

* ``digits``: scikit-learn's 8x8 digits (1,797 images, d = 64). Fixed stratified split, 25% test
  (1,347 train / 450 test), ``random_state=0``.
* ``fashion-mnist``: IDX files; default folder ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``dataset-fashion-mnist``) when present. 60,000 train / 10,000 test, d = 784.
* ``mnist``: IDX files from ``--data-dir`` (or ``$SLTH_MNIST_DIR``). Same layout.

The four IDX files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally gzipped (``.gz``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SlthError

DATASETS = ("digits", "fashion-mnist", "mnist")
FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    """Flattened images in [0, 1]: x_* float32 [N, d], y_* int64 [N]; image_shape = (C, H, W)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int]
    n_classes: int = 10
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SlthError(f"cannot read IDX file {path}: {e}; re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SlthError(f"{path} is not an unsigned-byte IDX file; check the data folder")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SlthError(f"{path} is truncated ({data.size} of {int(np.prod(dims))} bytes)")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def load_idx_folder(name: str, folder: Path) -> Dataset:
    """Read the four standard IDX files of an MNIST-like dataset from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SlthError(f"{name} data folder {folder} does not exist; pass --data-dir with the "
                        "four IDX files")
    arrays = {}
    for key, stem in IDX_FILES.items():
        p = _find(folder, stem)
        if p is None:
            raise SlthError(f"{name}: {stem}[.gz] not found in {folder}; put the four IDX files "
                            "there or pass --data-dir")
        arrays[key] = _read_idx(p)
    xs = {k: (arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255.0)
          for k in ("x_train", "x_test")}
    h, w = arrays["x_train"].shape[1:3]
    return Dataset(name, xs["x_train"], arrays["y_train"].astype(np.int64), xs["x_test"],
                   arrays["y_test"].astype(np.int64), (1, int(h), int(w)), source=str(folder))


def load_digits_data() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return Dataset("digits", np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte,
                   (1, 8, 8), source="sklearn.datasets.load_digits")


def default_data_dir(name: str) -> Path | None:
    if name == "fashion-mnist":
        env = os.environ.get("SLTH_FASHION_MNIST_DIR")
        return Path(env) if env else FASHION_DEFAULT_DIR
    if name == "mnist":
        env = os.environ.get("SLTH_MNIST_DIR")
        return Path(env) if env else None
    return None


def fashion_available() -> bool:
    d = default_data_dir("fashion-mnist")
    return d is not None and all(_find(d, s) for s in IDX_FILES.values())


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load ``digits``, ``fashion-mnist`` or ``mnist`` (see the module docstring)."""
    if name not in DATASETS:
        raise SlthError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_data()
    folder = Path(data_dir) if data_dir else default_data_dir(name)
    if folder is None:
        raise SlthError(f"{name} cannot be downloaded here; pass --data-dir with the four IDX "
                        "files (train-images-idx3-ubyte[.gz], ...)")
    if name == "fashion-mnist" and not folder.is_dir() and data_dir is None:
        raise SlthError(f"Fashion-MNIST not found in {folder}; install it with "
                        "'apt-get install -y dataset-fashion-mnist' or pass --data-dir")
    return load_idx_folder(name, folder)
