"""``slth train``: train a target network (MLP, LeNet5, ResNet-20, a small CNN for digits)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import SlthError
from . import app
from ._common import console, data_options, parse_int_list, progress_bar

MODEL_CHOICES = ["mlp", "lenet5", "resnet20", "digits-cnn"]


@app.command("train")
@click.option("--model", "model_name", type=click.Choice(MODEL_CHOICES), default="mlp",
              show_default=True, help="Architecture (CNNs are saved with their graph).")
@click.option("--data", "data_name", type=click.Choice(["digits", "fashion-mnist", "mnist"]),
              default="digits", show_default=True, help="Training data.")
@data_options
@click.option("--hidden", default="500", show_default=True,
              help="Hidden widths of the MLP, comma-separated (e.g. 500 or 500,500).")
@click.option("--bias/--no-bias", default=False, show_default=True,
              help="MLP linear layers with biases (CNNs always have them).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=None,
              help="SGD learning rate (cosine schedule); default 0.1 for mlp/resnet20/digits-cnn, "
                   "0.01 for lenet5.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch CPU threads (0: torch's default).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where to write the target: .safetensors (CNNs: graph in the metadata), "
                   ".pt2 (torch.export), or a torch state_dict .pt (MLP only).")
def train_cmd(model_name, data_name, data_dir, hidden, bias, epochs, lr, batch_size, seed, threads,
              out):
    """Train a target network and report its test accuracy."""
    from ..data import load_dataset
    from ..targets import MLP, TrainConfig, save_target, train_target

    widths = parse_int_list(hidden, "--hidden")
    if any(h < 1 for h in widths):
        raise SlthError(f"--hidden widths must be >= 1, got {hidden}")
    if epochs < 1:
        raise SlthError(f"--epochs must be >= 1, got {epochs}")
    if lr is not None and not lr > 0:
        raise SlthError(f"--lr must be > 0, got {lr}")
    if batch_size < 1:
        raise SlthError(f"--batch-size must be >= 1, got {batch_size}")
    if threads < 0:
        raise SlthError(f"--threads must be >= 0, got {threads}")
    allowed = (".safetensors", ".pt", ".pth", ".pt2") if model_name == "mlp" else (".safetensors", ".pt2")
    if out.suffix not in allowed:
        raise SlthError(f"--out for --model {model_name} must end in {' or '.join(allowed)}"
                        f"{' (the graph travels with the weights)' if model_name != 'mlp' else ''}, "
                        f"got {out.name}")
    if threads:
        import torch
        torch.set_num_threads(threads)
    data = load_dataset(data_name, data_dir)
    cfg = TrainConfig(hidden=tuple(widths), bias=bias, epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed, model=model_name)
    t0 = time.perf_counter()
    stamps = []

    def progress(epoch, loss, bar, task):
        stamps.append(time.perf_counter())
        bar.update(task, completed=epoch)

    with progress_bar() as bar:
        task = bar.add_task(f"training {model_name} on {data_name}", total=epochs)
        target, acc = train_target(data, cfg, progress=lambda e, l: progress(e, l, bar, task))
    total = time.perf_counter() - t0
    per_epoch = (stamps[-1] - t0) / len(stamps) if stamps else float("nan")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_target(target, out)
    if isinstance(target, MLP):
        desc = f"{'-'.join(map(str, target.dims))} ReLU net"
    else:
        folded = sum(1 for n in target.nodes if n.folded)
        bn = f", {folded} batch norms folded" if folded else ""
        desc = f"{model_name} ({target.depth} conv/linear layers{bn})"
    console.print(f"{desc}, {target.n_params:,} parameters, test accuracy [bold]{acc:.2%}[/] on "
                  f"{data_name} ({epochs} epochs, lr {cfg.learning_rate:g}, {total:.0f} s, "
                  f"{per_epoch:.1f} s/epoch); wrote {out} (fingerprint {target.fingerprint()})")
