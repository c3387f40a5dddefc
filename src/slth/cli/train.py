"""``slth train``: train a target network."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import SlthError
from . import app
from ._common import console, data_options, parse_int_list, progress_bar


@app.command("train")
@click.option("--data", "data_name", type=click.Choice(["digits", "fashion-mnist", "mnist"]),
              default="digits", show_default=True, help="Training data.")
@data_options
@click.option("--hidden", default="500", show_default=True,
              help="Hidden widths, comma-separated (e.g. 500 or 500,500).")
@click.option("--bias/--no-bias", default=False, show_default=True, help="Linear layers with biases.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="SGD learning rate (cosine schedule).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where to write the target (.safetensors, or a torch state_dict for .pt).")
def train_cmd(data_name, data_dir, hidden, bias, epochs, lr, batch_size, seed, out):
    """Train a ReLU MLP target and report its test accuracy."""
    from ..data import load_dataset
    from ..targets import TrainConfig, train_target

    widths = parse_int_list(hidden, "--hidden")
    if any(h < 1 for h in widths):
        raise SlthError(f"--hidden widths must be >= 1, got {hidden}")
    if epochs < 1:
        raise SlthError(f"--epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise SlthError(f"--lr must be > 0, got {lr}")
    if batch_size < 1:
        raise SlthError(f"--batch-size must be >= 1, got {batch_size}")
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise SlthError(f"--out must end in .safetensors or .pt, got {out.name}")
    data = load_dataset(data_name, data_dir)
    cfg = TrainConfig(hidden=tuple(widths), bias=bias, epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed)
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"training on {data_name}", total=epochs)
        mlp, acc = train_target(data, cfg, progress=lambda e, l: bar.update(task, completed=e))
    out.parent.mkdir(parents=True, exist_ok=True)
    mlp.save(out)
    console.print(f"{'-'.join(map(str, mlp.dims))} ReLU net, {mlp.n_params:,} parameters, "
                  f"test accuracy [bold]{acc:.2%}[/] on {data_name} "
                  f"({time.perf_counter() - t0:.0f} s); wrote {out}")
