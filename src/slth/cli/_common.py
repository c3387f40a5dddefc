"""Shared CLI helpers: console, progress bars, atomic output folders, resource figures."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import click

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..errors import SlthError

# Wide tables when the output is a file or a pipe (rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar (written to stderr, so stdout stays clean for tables)."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=transient)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike):
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on error it is
    removed, so a failed command never leaves a half-written ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlthError(f"--out {out} exists and is not a folder; choose another path")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlthError(f"cannot create {parent}: {e.strerror}; choose a writable --out") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def parse_float_list(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SlthError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise SlthError(f"{what} is empty; give comma-separated numbers")
    return vals


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SlthError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise SlthError(f"{what} is empty; give comma-separated integers")
    return vals


def fail(msg: str) -> None:
    raise SlthError(msg)


def stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def data_options(f):
    f = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder with the IDX files (fashion-mnist defaults to "
                          "/usr/share/datasets/fashion-mnist).")(f)
    return f


def domain_options(f):
    f = click.option("--radius", type=float, default=1.0, show_default=True,
                     help="Radius R of the ball domain.")(f)
    f = click.option("--domain", type=click.Choice(["box", "ball"]), default="box",
                     show_default=True, help="Certified input set: box [0,1]^d (images) or the "
                                             "ball ||x|| <= R of the theorems.")(f)
    return f
