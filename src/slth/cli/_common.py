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


def parse_size(eps: float | None, n_text: str | None) -> dict:
    """``{"eps": E}`` or ``{"n": N or [N, ...]}`` from --eps / --n, validated."""
    if (eps is None) == (n_text is None):
        raise SlthError("give exactly one of --eps (error bound) or --n (size)")
    if eps is not None:
        if not eps > 0:
            raise SlthError(f"--eps must be > 0, got {eps}")
        return {"eps": eps}
    ns = parse_int_list(n_text, "--n")
    if any(k < 1 for k in ns):
        raise SlthError(f"--n must be >= 1, got {n_text}")
    return {"n": ns[0] if len(ns) == 1 else ns}


def size_options(f):
    f = click.option("--n", "n_text", default=None,
                     help="Size instead of --eps: pensia/orseau block size per half, malach "
                          "gadget size K, ...; one value or one per layer (e.g. 21 or 21,16).")(f)
    f = click.option("--eps", type=float, default=None,
                     help="Certified error to reach: the smallest size whose bound meets it.")(f)
    return f


def runs_dir_option(f):
    return click.option("--runs-dir", type=click.Path(path_type=Path),
                        default=lambda: Path(os.environ.get("SLTH_RUNS_DIR", "runs")),
                        show_default="runs (or $SLTH_RUNS_DIR)",
                        help="Where run folders live.")(f)


# ----------------------------------------------------------------------------- method options
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_option_fields() -> dict[str, dict]:
    """Every method setting that is a CLI option: {field name: {"field": one Field,
    "methods": [names]}}; a name shared by several methods is one option."""
    from ..constructions import names, settings_fields

    out: dict[str, dict] = {}
    for m in names():
        for f in settings_fields(m):
            if f.metadata.get("cli", True):
                out.setdefault(f.name, {"field": f, "methods": []})["methods"].append(m)
    return out


def method_params() -> list[click.Option]:
    """click options for every method setting (default None: the method's own default)."""
    params = []
    for name, info in method_option_fields().items():
        f = info["field"]
        md, default = f.metadata, f.default
        shown = md.get("show", default)
        help_ = md.get("help") or None
        if help_ and shown is not None:
            help_ += f" [default: {shown}]"
        if isinstance(default, bool):
            params.append(click.Option([f"{_flag(name)}/--no-{name.replace('_', '-')}"],
                                       default=None, help=help_))
            continue
        if md.get("choices"):
            kind = click.Choice(list(md["choices"]))
        elif md.get("parse") is not None:
            kind = str
        elif isinstance(default, int):
            kind = int
        elif isinstance(default, float) or "float" in str(f.type):
            kind = float
        else:
            kind = str
        params.append(click.Option([_flag(name)], type=kind, default=None, help=help_))
    return params


def method_settings(method: str, given: dict, strict: bool = True) -> dict:
    """The settings of ``method`` from the method options the user gave (None: not given).
    strict: an option ``method`` does not have is an error (else it is skipped)."""
    from ..constructions import settings_fields

    fields = {f.name: f for f in settings_fields(method)}
    out = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in fields:
            if strict:
                owners = method_option_fields().get(name, {}).get("methods", [])
                raise SlthError(f"{_flag(name)} is an option of {', '.join(owners)}, not of "
                                f"{method}; drop it or pick --method {owners[0] if owners else ''}")
            continue
        parse = fields[name].metadata.get("parse")
        out[name] = parse(value) if parse is not None else value
    return out


class MethodCommand(click.Command):
    """A command whose ``--method`` choices and method-specific options come from the
    constructions' registry when it runs (a method registered later is picked up)."""

    def get_params(self, ctx):
        from ..constructions import names

        params = [p for p in super().get_params(ctx)]
        for p in params:
            if p.name == "method" and isinstance(p.type, click.Choice):
                p.type = click.Choice(names())
        help_name = self.get_help_option(ctx).name if self.get_help_option(ctx) else None
        help_opt = [p for p in params if p.name == help_name]
        rest = [p for p in params if p.name != help_name]
        own = {p.name for p in rest}
        return rest + [p for p in method_params() if p.name not in own] + help_opt

    def invoke(self, ctx):
        fields = method_option_fields()
        ctx.params["method_options"] = {k: ctx.params.pop(k) for k in list(ctx.params)
                                        if k in fields}
        return super().invoke(ctx)


def target_options(f):
    """--model FILE.py:FACTORY and --input-shape C,H,W: how to read a target that is not a
    self-describing file (``slth.targets.load_target``)."""
    f = click.option("--input-shape", default=None, metavar="C,H,W",
                     help="Input shape for tracing a --model (default: the --data images').")(f)
    f = click.option("--model", "model_spec", default=None, metavar="FILE.py:FACTORY",
                     help="TARGET is a weights file for the network FACTORY() in your Python "
                          "file (the file is run; the weights are loaded with "
                          "weights_only=True or from safetensors).")(f)
    return f


def load_cli_target(path, model_spec: str | None, input_shape: str | None,
                    data_name: str | None):
    """The target a command names: a file, or weights for --model traced at --input-shape (or
    the data's image shape)."""
    from ..targets import load_target

    shape = None
    if input_shape is not None:
        shape = tuple(parse_int_list(input_shape, "--input-shape"))
    elif model_spec is not None and data_name is not None:
        from ..data import load_dataset
        shape = load_dataset(data_name).image_shape if data_name == "digits" else (1, 28, 28)
    return load_target(path, input_shape=shape, model=model_spec)
