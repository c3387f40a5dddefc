"""``slth demo``: the whole idea in a few minutes, on the embedded digits data.

Steps (each a call into the library; the demo adds no method of its own):

1. train a 64-16-10 bias-free ReLU target on digits, rescaled to max |w| = 1/sqrt(d_in) per layer
   (Malach's assumption; a bias-free classifier keeps its predictions);
2. build its ticket with every construction at one certified eps (``experiments.compare``):
   sizes, densities, certified bound next to the largest error found;
3. a small width-vs-eps study on a random 8-8-8 target within the theorems' assumptions
   (``experiments.width``), the theory's sizes beside the measured ones;
4. a convolutional target: a small CNN trained on digits and its Pensia ticket (G a random
   CNN: 1x1 "widen" convolutions and "combine" convolutions with the target's geometry),
   certified on the box like the MLPs;
5. a short edge-popup sweep on FC2 (``experiments.exp2``): accuracy against density for Pensia's
   redundant structures, the wide random net and the dense trained baseline;
6. a planted-ticket check (``experiments.plant``, mse loss): edge-popup on the G of the Pensia
   ticket, fitting the target's outputs, and how much of the planted mask it recovers;
7. ``report.html`` (self-contained: inline CSS, PNGs as base64) and ``summary.json``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..certify import Domain
from ..data import load_dataset
from ..htmlreport import HtmlReport
from ..jsonio import write_json
from ..targets import TrainConfig, train_target
from . import compare as C
from . import exp2 as E2
from . import width as W
from .plant import plant


@dataclass
class DemoSettings:
    """Everything the demo's outputs depend on."""

    seed: int = 0
    hidden: int = 16
    epochs: int = 30
    eps: float = 1e-2
    methods: list[str] = field(default_factory=lambda: list(C.METHODS))
    width_eps: list[float] = field(default_factory=lambda: [10 ** (-k / 2) for k in range(2, 9)])
    width_seeds: int = 5
    search_epochs: int = 5
    search_densities: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    plant_epochs: int = 10
    cnn_epochs: int = 10
    cnn_eps: float = 0.05
    workers: int = 2

    @classmethod
    def quick(cls, seed: int = 0) -> "DemoSettings":
        """A smaller demo (about a third of the time) for tests and slow machines."""
        return cls(seed=seed, epochs=15, methods=["pensia", "orseau", "malach"],
                   width_eps=[1e-1, 10 ** -1.5, 1e-2, 10 ** -2.5], width_seeds=2,
                   search_epochs=3, search_densities=[0.05, 0.25, 0.5], plant_epochs=3,
                   cnn_epochs=4, workers=1)


STEPS = ("training the target", "constructions", "width vs eps", "convolutional target",
         "edge-popup search", "planted ticket", "report")


def run(out: Path, s: DemoSettings, progress=None) -> dict:
    """Run every step into the (existing, empty) folder ``out``; returns ``summary.json``'s dict.

    progress(step_index, message) is called as work proceeds.
    """
    say = progress or (lambda i, msg: None)
    t_start = time.perf_counter()
    secs: dict[str, float] = {}
    data = load_dataset("digits")

    # 1. target
    t0 = time.perf_counter()
    say(0, STEPS[0])
    cfg = TrainConfig(hidden=(s.hidden,), bias=False, epochs=s.epochs, seed=s.seed)
    mlp, acc = train_target(data, cfg, progress=lambda e, loss: say(0, f"training: epoch {e}/{s.epochs}"))
    target = W.malach_scaled(mlp)
    target.save(out / "target.safetensors")
    secs["target"] = time.perf_counter() - t0

    # 2. every construction at one eps, certified
    t0 = time.perf_counter()
    kept = {}  # the Pensia ticket and its report: saved, and planted below

    def keep(method, con, rep):
        if method == "pensia":
            con.ticket.save(out / "pensia-ticket.safetensors")
            kept.update(ticket=con.ticket, report=rep)

    cmp = C.run(target, s.eps, Domain("box"), data, s.methods, s.seed,
                progress=lambda msg: say(1, msg), on_ticket=keep)
    C.plot(cmp, out)
    ticket = kept["ticket"]
    secs["constructions"] = time.perf_counter() - t0

    # 3. width vs eps against the theory
    t0 = time.perf_counter()
    ws = W.Settings(methods=[m for m in ("pensia", "orseau", "malach") if m in s.methods],
                    eps_grid=s.width_eps, seeds=s.width_seeds, trained=False, sweep_d=[],
                    sweep_depth=[], workers=s.workers, target_seed=s.seed)
    wres = W.run(ws, progress=lambda i, n, msg: say(2, f"{msg} ({i}/{n})"))
    W.plot({**wres, "d": {}, "depth": {}}, out)  # no width/depth sweeps here
    secs["width"] = time.perf_counter() - t0

    # 4. a convolutional target and its ticket
    t0 = time.perf_counter()
    cnn = cnn_ticket(data, s, out, progress=lambda msg: say(3, msg))
    secs["cnn"] = time.perf_counter() - t0

    # 5. edge-popup on FC2: redundant vs wide vs dense trained
    t0 = time.perf_counter()
    st = E2.Exp2Settings(data="digits", epochs=s.search_epochs, seed=s.seed)
    sres = E2.sweep(data, st, ["fc2"], s.search_densities, out / "search",
                    progress=lambda key, i, n, k, m: say(4, f"{key} ({i + 1}/{n})"))
    secs["search"] = time.perf_counter() - t0

    # 6. planted ticket: search the Pensia ticket's own G
    t0 = time.perf_counter()
    grid = sorted({min(1.0, round(f * ticket.density, 6)) for f in (0.5, 1, 2)})
    pres = plant(ticket, target, data, grid, [s.plant_epochs], seed=s.seed, loss="mse",
                 certified_bound=kept["report"]["certified_bound"],
                 progress=lambda msg, i, n: say(5, f"planted: {msg}"))
    secs["plant"] = time.perf_counter() - t0

    say(6, STEPS[6])
    summary = _summary(s, target, acc, cmp, ws, wres, cnn, sres, pres, secs)
    summary["seconds"]["total"] = time.perf_counter() - t_start
    html_report(summary, out).save(out / "report.html")
    write_json(out / "summary.json", summary, indent=1)
    return summary


def _summary(s: DemoSettings, target, acc, cmp, ws, wres, cnn, sres, pres, secs) -> dict:
    """``summary.json``'s dict from each step's results."""
    return {
        "settings": asdict(s),
        "target": {"dims": target.dims, "params": target.n_params, "accuracy": acc,
                   "file": "target.safetensors"},
        "constructions": [_construction_row(r) for r in cmp["rows"]],
        "malach_vs": cmp["malach_vs"],
        "width": {"target": wres["targets"]["assumption"]["description"],
                  "seeds": ws.seeds, "delta": ws.delta,
                  "methods": {m: {"eps": r["eps"], "size": r["size"], "theory_size": r["theory_size"],
                                  "fit_log": r["fit"]["log"], "fit_power": r["fit"]["power"]}
                              for m, r in wres["eps"]["assumption"].items()}},
        "cnn": cnn,
        "search": sres["summary"],
        "search_runs": [{k: r[k] for k in ("structure", "density", "remaining_params", "accuracy")}
                        for r in sres["runs"].values()],
        "plant": {"planted": {k: pres["planted"][k] for k in
                              ("density", "active_params", "params", "accuracy", "certified_bound")},
                  "runs": [{k: r[k] for k in ("density", "epochs", "precision", "recall",
                                              "chance_precision", "accuracy", "agreement",
                                              "error_mean")} for r in pres["runs"]]},
        "seconds": secs,
    }


def cnn_ticket(data, s: DemoSettings, out: Path, progress=None) -> dict:
    """Train the digits CNN, build its Pensia ticket at certified eps ``s.cnn_eps`` (box) and
    measure it; the target and ticket files go to ``out``."""
    from ..pipeline import construct
    from ..report import evaluate

    say = progress or (lambda msg: None)
    say("training a CNN on digits")
    cfg = TrainConfig(model="digits-cnn", epochs=s.cnn_epochs, seed=s.seed)
    net, acc = train_target(data, cfg, progress=lambda e, loss: say(f"CNN epoch {e}/{s.cnn_epochs}"))
    net.save(out / "cnn-target.safetensors")
    t0 = time.perf_counter()
    con = construct(net, "pensia", eps=s.cnn_eps, domain=Domain("box"), seed=s.seed,
                    progress=lambda msg: say(f"CNN ticket: {msg}"))
    rep = evaluate(net, con, Domain("box"), data, seed=s.seed, progress=say)
    con.ticket.save(out / "cnn-ticket.safetensors")
    keys = ("random_params", "active_params", "density", "overparam_factor", "certified_bound",
            "max_error_found", "bound_tightness", "target_accuracy", "ticket_accuracy",
            "agreement", "n_per_layer")
    return {"layers": [{"op": n["op"], "name": n["name"], "shape": n["shape"],
                        "params": n["params"]} for n in net.summary() if n["op"] != "input"],
            "params": net.n_params, "accuracy": acc, "eps": s.cnn_eps,
            "g_layers": [{"shape": list(L.shape), "density": L.n_active / max(1, L.n_params)}
                         for L in con.ticket.layers],
            "seconds": time.perf_counter() - t0, **{k: rep.get(k) for k in keys}}


def _construction_row(r: dict) -> dict:
    if r.get("refused"):
        return {"method": r["method"], "refused": r["refused"],
                "random_params_needed": r.get("random_params_needed")}
    rep = r["report"]
    keys = ("random_params", "active_params", "density", "sparsity", "overparam_factor",
            "certified_bound", "empirical_max_error", "adversarial_max_error", "max_error_found",
            "bound_tightness", "target_accuracy", "ticket_accuracy", "agreement")
    theory = rep.get("theory_n_per_layer") or rep.get("theory_samples_per_layer")
    return {"method": r["method"], "size": r["size"], "size_kind": r["size_kind"],
            "theory_size": theory, "seconds": r["seconds"],
            "neurons_per_target_weight": r["neurons_per_target_weight"],
            **{k: rep.get(k) for k in keys}}


def _pct(v):
    return None if v is None else f"{100 * v:.2f}%"


def _size(v):
    if v is None:
        return None
    return ",".join(f"{x:,}" if isinstance(x, (int, np.integer)) else f"{x:,.0f}" for x in v) \
        if isinstance(v, (list, tuple)) else v


def _cnn_section(rep: HtmlReport, c: dict) -> None:
    """Section 4 of the report: the convolutional target and its ticket."""
    rep.heading("4. A convolutional target")
    rep.paragraph(f"The same idea on a CNN trained on the digits ({c['params']:,} weights, test "
                  f"accuracy {c['accuracy']:.2%}): G replaces every convolution by a random 1×1 "
                  "'widen' convolution (a block of 2n channels per input channel) and a random "
                  "'combine' convolution with the target's kernel, stride and padding; pooling "
                  "and flatten are copied. Each kernel entry is a SubsetSum over products of "
                  "G's weights. The bound is certified on the box [0,1]^64 through the "
                  "convolutions and pooling.")
    rep.table(["target layer", "op", "output shape", "weights"],
              [[L["name"], L["op"], "×".join(map(str, L["shape"])), L["params"]]
               for L in c["layers"]])
    rep.table(["certified ε", "n per layer", "random params (G)", "active params", "density",
               "certified bound", "largest error found", "ticket accuracy", "agreement",
               "time (s)"],
              [[c["eps"], _size(c["n_per_layer"]), c["random_params"], c["active_params"],
                _pct(c["density"]), c["certified_bound"], c["max_error_found"],
                _pct(c["ticket_accuracy"]), _pct(c["agreement"]), c["seconds"]]])


def html_report(sm: dict, out: Path) -> HtmlReport:
    """The demo's report.html from its summary and the PNGs already written to ``out``."""
    s = sm["settings"]
    t = sm["target"]
    rep = HtmlReport("slth demo: strong lottery tickets on the digits data")
    rep.paragraph(
        "A strong lottery ticket is a subnetwork of a randomly initialised network G that "
        "computes (almost) the same function as a trained target network F, without any weight "
        "of G being trained: only a mask is chosen. This page shows the three constructions of "
        "Malach et al., Pensia et al. and Orseau et al. (2020) building such tickets with a "
        "certified output error, how their size grows as the error shrinks, and what edge-popup "
        "(a training-based search) finds.")
    rep.paragraph(f"Seed {s['seed']}; total time {sm['seconds']['total']:.0f} s; "
                  f"Python {platform.python_version()} on {platform.machine()}.", note=True)

    rep.heading("1. The target")
    rep.paragraph(f"A {'-'.join(map(str, t['dims']))} bias-free ReLU network with "
                  f"{t['params']:,} weights, trained for {s['epochs']} epochs on scikit-learn's "
                  f"8×8 digits (pixels scaled to [0, 1]); test accuracy {t['accuracy']:.2%}. Each "
                  "layer is rescaled to max |w| = 1/√d_in (Malach's assumption; the predicted "
                  "class does not change).")

    _constructions_section(rep, sm, out)
    _width_section(rep, sm["width"], out)
    _cnn_section(rep, sm["cnn"])
    _search_sections(rep, sm, out)

    rep.heading("Time")
    rep.table(["step", "seconds"], [[k, v] for k, v in sm["seconds"].items()])
    rep.paragraph("Reproduce: slth demo --seed " + str(s["seed"]) + ". Files next to this page: "
                  "target.safetensors, pensia-ticket.safetensors, cnn-target.safetensors, "
                  "cnn-ticket.safetensors (load with slth.load_ticket / "
                  "slth.targets.load_target), summary.json, compare.png, eps.png, search/.",
                  note=True)
    return rep


def _constructions_section(rep: HtmlReport, sm: dict, out: Path) -> None:
    """Section 2: every construction at the demo's eps."""
    s = sm["settings"]
    rep.heading(f"2. Every construction at certified error ε = {s['eps']:g}")
    rep.paragraph("Each method picks the smallest size whose certified bound on "
                  "max over x in [0,1]^64 of ‖F(x) − ticket(x)‖∞ is ≤ ε. The bound is rigorous "
                  "(interval/affine propagation through the actual weights); the largest error "
                  "found on the test set and by projected gradient ascent is shown beside it. "
                  "Density = fraction of G's weights the ticket keeps.")
    cols = ["method", "size (measured)", "size (theory)", "random params (G)", "active params",
            "density", "G / target", "certified bound", "largest error found", "tightness",
            "ticket accuracy", "agreement with F", "time (s)"]
    rows = []
    for r in sm["constructions"]:
        if r.get("refused"):
            rows.append([r["method"], "refused: " + r["refused"].split(";")[0]] + [None] * 11)
            continue
        rows.append([r["method"], _size(r["size"]), _size(r["theory_size"]), r["random_params"],
                     r["active_params"], _pct(r["density"]), f"{r['overparam_factor']:,.0f}×",
                     r["certified_bound"], r["max_error_found"], r["bound_tightness"],
                     _pct(r["ticket_accuracy"]), _pct(r["agreement"]), r["seconds"]])
    rep.table(cols, rows, caption="size: block size n per half (pensia, orseau) or gadget size K "
                                  "(malach), per layer; theory: the size the paper's theorem asks for")
    for m, v in sm["malach_vs"].items():
        rep.paragraph(C.ratio_sentence(m, v))
    rep.image(out / "compare.png", "Left: random parameters of G and active parameters of the "
                                   "ticket (log scale). Right: certified bound vs largest error "
                                   "found, with ε in red.")


def _width_section(rep: HtmlReport, w: dict, out: Path) -> None:
    """Section 3: size against eps beside the theorems."""
    rep.heading("3. How wide must G be? Size against ε, beside the theorems")
    rep.paragraph(f"Target: {w['target']}. For each ε, the smallest size that meets ε "
                  f"(certified) for a fraction ≥ {1 - w['delta']:g} of {w['seeds']} seeds. "
                  "Pensia's and Orseau's theorems predict size = O(log(1/ε)); Malach's is "
                  "polynomial in 1/ε. Dashed: the size the theorems ask for.")
    rows = []
    for m, r in w["methods"].items():
        fl, fp = r["fit_log"], r["fit_power"]
        rows.append([m, ", ".join("–" if k is None else f"{k:,}" for k in r["size"]),
                     ", ".join("–" if k is None else f"{k:,.0f}" for k in r["theory_size"]),
                     fl and f"{fl['a']:.1f} + {fl['C']:.2f}·log2(1/ε)", fl and fl["r2"],
                     fp and f"(1/ε)^{fp['p']:.2f}", fp and fp["r2"]])
    eps_txt = ", ".join(f"{e:.2g}" for e in next(iter(w["methods"].values()))["eps"])
    rep.table(["method", f"measured size at ε = {eps_txt}", "theory size", "log fit", "R²",
               "power fit", "R²"], rows)
    rep.image(out / "eps.png", "Size (left) and G's first hidden width (right) against ε; "
                               "dotted black: Pensia's lower bound d·log2(1/ε).")


def _search_sections(rep: HtmlReport, sm: dict, out: Path) -> None:
    """Sections 5 and 6: edge-popup on FC2, and on the planted Pensia ticket's G."""
    s = sm["settings"]
    rep.heading("5. Finding tickets by training: edge-popup on FC2")
    rep.paragraph(f"Edge-popup learns a score per frozen random weight and keeps the top "
                  f"fraction (the density) of each layer; {s['search_epochs']} epochs. Pensia's "
                  "redundant structures against a wide random net with as many weights, and the "
                  "dense FC2 trained normally.")
    runs = sorted(sm["search_runs"], key=lambda r: (r["structure"], r["density"] or 1))
    rep.table(["structure", "density", "remaining weights", "test accuracy"],
              [[r["structure"], "trained (dense)" if r["density"] is None else r["density"],
                r["remaining_params"], _pct(r["accuracy"])] for r in runs])
    rep.image(out / "search" / "fc2.png", "Test accuracy against remaining FC weights.")

    p = sm["plant"]
    rep.heading("6. Does edge-popup find a ticket that is known to be there?")
    rep.paragraph(f"The Pensia ticket of section 2 is planted in its G ({p['planted']['params']:,} "
                  f"weights, {p['planted']['active_params']:,} kept, density "
                  f"{p['planted']['density']:.2%}, accuracy {p['planted']['accuracy']:.2%}). "
                  "Edge-popup searches that same G from fresh scores, never shown the mask, "
                  "fitting the target's outputs (up to a scale). "
                  "Precision: kept weights that are planted ones; recall: planted weights kept. "
                  "Chance precision = the planted density.")
    rep.table(["density", "epochs", "precision", "recall", "chance precision", "accuracy",
               "agreement with F", "mean output error"],
              [[r["density"], r["epochs"], r["precision"], r["recall"], r["chance_precision"],
                _pct(r["accuracy"]), _pct(r["agreement"]), r["error_mean"]] for r in p["runs"]])
