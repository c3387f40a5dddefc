"""Every construction on one target at one eps: one table, one plot.

Each method builds its ticket with ``eps`` (the smallest size whose certified bound on the domain
is <= eps) and is evaluated by ``slth.report.evaluate`` exactly like ``slth construct``. A method
whose G would not fit (malach beyond ``max_params``) is reported as refused, with the size it
would need; one that cannot reach eps within its size limit is reported with its message.
"Neurons per target weight" is, for every method alike, the hidden neurons G has beyond the
target's, divided by the target's parameters.
"""

from __future__ import annotations

import time

from ..certify import Domain
from ..constructions import get, settings_fields
from ..constructions.malach import TooLarge
from ..errors import SlthError
from ..pipeline import construct
from ..report import evaluate, target_dims
from ..targets import MLP

METHODS = ("pensia", "orseau", "orseau-uniform", "malach")
COLUMNS = ("random_params", "active_params", "density", "overparam_factor",
           "neurons_per_target_weight", "size", "certified_bound", "max_error_found",
           "ticket_accuracy", "agreement", "seconds")


def run(target: MLP, eps: float, domain: Domain, data=None, methods=METHODS, seed: int = 0,
        settings: dict | None = None, progress=None, on_ticket=None) -> dict:
    """Construct and evaluate every method; returns rows, Malach's ratios and the settings.

    settings: {setting name: value} applied to every method that has that setting (e.g.
    malach's max_params). on_ticket(method, construction, report) is called for each ticket."""
    say = progress or (lambda msg: None)
    rows = []
    for m in methods:
        fields = {f.name for f in settings_fields(m)}
        method = get(m, **{k: v for k, v in (settings or {}).items() if k in fields})
        t0 = time.perf_counter()
        try:
            con = construct(target, method, eps=eps, domain=domain, seed=seed,
                            progress=lambda msg, m=m: say(f"{m}: {msg}"))
        except TooLarge as e:
            rows.append({"method": m, "refused": str(e), "random_params": None,
                         "random_params_needed": e.params, "widths_needed": e.widths})
            continue
        except SlthError as e:  # eps out of reach within the method's size limit
            rows.append({"method": m, "refused": str(e), "random_params": None,
                         "random_params_needed": None})
            continue
        rep = evaluate(target, con, domain, data, seed=seed,
                       progress=lambda msg, m=m: say(f"{m}: {msg}"))
        if on_ticket:
            on_ticket(m, con, rep)
        rows.append({
            "method": m, **{k: rep.get(k) for k in COLUMNS if k in rep},
            "size": con.info[method.size.key], "size_kind": method.size.meaning,
            "neurons_per_target_weight": extra_neurons(con.built.layout, target),
            "theory_random_params": con.info.get("theory_random_params"),
            "seconds": time.perf_counter() - t0, "report": rep,
        })
    return {"eps": eps, "domain": domain.as_dict(), "seed": seed,
            "target_dims": target_dims(target),
            "target_params": target.n_params, "rows": rows, "malach_vs": malach_ratios(rows)}


def extra_neurons(layout, target) -> float:
    """Neurons (channels) of G's tensors standing between a target layer's input and its output
    (widen layers, copy layers), per target parameter."""
    last = {i: j for j, (i, _) in enumerate(layout.tensors)}
    extra = sum(t.shape[0] for j, (i, t) in enumerate(layout.tensors) if last[i] != j)
    return extra / max(1, target.n_params)


def malach_ratios(rows: list[dict]) -> dict:
    """How many times more random parameters Malach needs than each other method ("at least"
    when Malach was refused: then its need is the extrapolated size in the refusal)."""
    mal = next((r for r in rows if r["method"] == "malach"), None)
    if mal is None:
        return {}
    need = mal["random_params"] or mal.get("random_params_needed")
    if not need:
        return {}
    return {r["method"]: {"ratio": need / r["random_params"], "at_least": mal["random_params"] is None}
            for r in rows if r["method"] != "malach" and r.get("random_params")}


def markdown(res: dict) -> str:
    """The comparison table as Markdown."""
    head = ("method", "random params", "active params", "density", "G / target",
            "neurons per target weight", "size", "certified bound", "max error found",
            "accuracy", "agreement", "time")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        if r.get("refused"):
            lines.append(f"| {r['method']} | {refusal(r)} | " + " | ".join("-" for _ in head[2:]) + " |")
            continue
        acc = r.get("ticket_accuracy")
        agr = r.get("agreement")
        lines.append(" | ".join([
            f"| {r['method']}", f"{r['random_params']:,}", f"{r['active_params']:,}",
            f"{r['density']:.3%}", f"{r['overparam_factor']:.1f}×",
            f"{r['neurons_per_target_weight']:.2f}", f"{r['size']} ({r['size_kind']})",
            f"{r['certified_bound']:.3g}", f"{r['max_error_found']:.3g}",
            "-" if acc is None else f"{acc:.2%}", "-" if agr is None else f"{agr:.2%}",
            f"{r['seconds']:.1f} s"]) + " |")
    for m, v in res["malach_vs"].items():
        lines.append(f"\n{ratio_sentence(m, v)}")
    return "\n".join(lines) + "\n"


def ratio_sentence(method: str, v: dict) -> str:
    return (f"Malach needs {'at least ' if v['at_least'] else ''}{v['ratio']:,.3g}× the random "
            f"parameters of {method}.")


def refusal(r: dict, short: bool = False) -> str:
    need = r.get("random_params_needed")
    if need:
        return f"refused: needs {need:,}"
    return "out of reach" if short else "out of reach: " + r["refused"].split(";")[0]


def plot(res: dict, out_dir) -> str:
    """compare.png: random and active parameters per method (log), certified bound vs error found."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = res["rows"]
    names = [r["method"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax, axb) = plt.subplots(1, 2, figsize=(12, 4.5))
    rp = [r["random_params"] or r.get("random_params_needed") or np.nan for r in rows]
    ap = [r.get("active_params") or np.nan for r in rows]
    bars = ax.bar(x - 0.2, rp, 0.4, label="random params (G)")
    for b, r in zip(bars, rows):
        if r.get("refused"):
            b.set_hatch("//")
            b.set_alpha(0.4)
    ax.bar(x + 0.2, ap, 0.4, label="active params (ticket)")
    ax.axhline(res["target_params"], color="k", ls=":", lw=1, label="target params")
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set_title(f"eps = {res['eps']:g}, target {'-'.join(map(str, res['target_dims']))} "
                 "(hatched: refused, size it would need)", fontsize=9)
    ax.legend(fontsize=8)
    cb = [r.get("certified_bound") or np.nan for r in rows]
    fe = [r.get("max_error_found") or np.nan for r in rows]
    axb.bar(x - 0.2, cb, 0.4, label="certified bound")
    axb.bar(x + 0.2, fe, 0.4, label="largest error found")
    axb.axhline(res["eps"], color="r", ls="--", lw=1, label="eps")
    axb.set_yscale("log")
    axb.set_xticks(x, names)
    axb.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/compare.png", dpi=110)
    plt.close(fig)
    return "compare.png"
