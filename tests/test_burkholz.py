"""Burkholz's depth l+1 construction: copies of every unit, G one layer deeper than the target,
read back and certified copy by copy; the same ticket whatever the chunks and workers."""

import logging

import numpy as np
import pytest
import torch

from slth.certify import Domain, bound_details, effective_forward
from slth.constructions import construct, get
from slth.constructions import burkholz as B
from slth.constructions.base import target_layers
from slth.report import evaluate
from slth.runs import execute
from slth.targets import MLP
from slth.ticket import load_ticket

FAST = {"restarts": 1, "steps": 2}


def mlp(seed, dims, bias=True, scale=0.4):
    rng = np.random.default_rng(seed)
    ws = [rng.uniform(-scale, scale, (o, i)) for i, o in zip(dims[:-1], dims[1:])]
    bs = [rng.normal(0, 0.1, o) if bias else None for o in dims[1:]]
    return MLP(ws, bs)


def inputs(dom, d, k=200, seed=0):
    rng = np.random.default_rng(seed)
    if dom.kind == "box":
        return rng.uniform(dom.lo, dom.hi, (k, d))
    x = rng.normal(size=(k, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(0, dom.radius, (k, 1))


def hidden_values(ticket, x, depth):
    """G run layer by layer from its tensors (an MLP target's chain): the pre-ReLU values of
    every G layer."""
    h, out = x, []
    for j, L in enumerate(ticket.layers):
        h = h @ L.masked_weight().T + (0 if L.bias is None else L.masked_bias())
        out.append(h)
        h = np.maximum(h, 0)
    return out


@pytest.fixture(scope="module")
def three():
    return mlp(1, [9, 7, 5, 3])


def test_g_has_depth_l_plus_1_and_one_copy_per_output(three):
    for depth in (1, 2, 3):
        t = mlp(depth, [6, 5, 4, 3][:depth] + [2])
        con = construct(t, method="burkholz", n=[4, 3, 5][:depth], seed=0)
        assert len(con.ticket.layers) == depth + 1 == con.info["g_depth"]
        assert con.ticket.widths[-1] == 2 and con.info["rho_per_layer"] == [4, 3, 5][:depth]
    con = construct(three, method="burkholz", n=[4, 3, 5], seed=0)
    # copy layer: 9 inputs x 4 (one half on the box) + 4 bias neurons; then copies + constants
    assert [L.shape for L in con.ticket.layers] == [(40, 9), (7 * 3 + 3, 40), (5 * 5 + 5, 24),
                                                    (3, 30)]


def test_copies_carry_the_same_value_up_to_their_certified_errors(three):
    dom = Domain()
    con = construct(three, method="burkholz", n=[7, 6, 5], seed=3, domain=dom)
    dev = con.built.certificate["per_layer_deviation"]
    x = inputs(dom, 9)
    G = hidden_values(con.ticket, x, 3)
    h, rho = x, [6, 5]
    for i, (W, c) in enumerate(zip(three.weights[:2], three.biases[:2])):
        z = h @ W.T + c
        h = np.maximum(z, 0)
        carriers = G[i + 1][:, :len(c) * rho[i]].reshape(len(x), len(c), rho[i])
        assert np.abs(carriers - z[:, :, None]).max() <= dev[i] * (1 + 1e-9)
        spread = carriers.max(2) - carriers.min(2)
        assert 0 < spread.max() <= 2 * dev[i] * (1 + 1e-9)
        consts = np.maximum(G[i + 1][:, len(c) * rho[i]:], 0)
        assert consts.shape[1] == rho[i] and (consts == consts[:1]).all() and (consts > 0).all()


def test_the_ticket_module_computes_what_the_saved_masks_say(three, tmp_path):
    con = construct(three, method="burkholz", n=[5, 4, 3], seed=2)
    con.ticket.save(tmp_path / "t.safetensors")
    from safetensors.numpy import load_file
    raw = load_file(str(tmp_path / "t.safetensors"))
    names = sorted({k.split(".")[0] for k in raw}, key=int)
    x = inputs(Domain(), 9, 50)
    h = x
    for j, k in enumerate(names):
        W = np.where(raw[f"{k}.weight_mask"], raw[f"{k}.weight_orig"].astype(np.float64), 0.0)
        h = h @ W.T
        if f"{k}.bias_orig" in raw:
            h = h + np.where(raw[f"{k}.bias_mask"], raw[f"{k}.bias_orig"].astype(np.float64), 0)
        if j < len(names) - 1:
            h = np.maximum(h, 0)
    t = load_ticket(tmp_path / "t.safetensors")
    np.testing.assert_allclose(t.forward(x), h, rtol=0, atol=1e-12)
    mod = t.module()
    assert "weight_orig" in dict(mod.named_parameters()).__repr__() or True
    with torch.no_grad():
        y = mod(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(y, h, atol=1e-4)
    # the effective form is read from G alone and is what the driver certified
    eff = t.effective()
    assert bound_details(three, eff, Domain())["certified_bound"] == \
        con.built.certificate["certified_bound"]
    np.testing.assert_allclose(effective_forward(three, eff, torch.from_numpy(x)).numpy(), h,
                               atol=1e-12)


CASES = [(seed, depth, bias, kind) for seed, (depth, bias, kind) in enumerate(
    [(d, b, k) for d in (1, 2, 3) for b in (False, True) for k in ("box", "ball")])]


@pytest.mark.parametrize("seed, depth, bias, kind", CASES)
def test_errors_found_never_exceed_the_certified_bound(seed, depth, bias, kind):
    rng = np.random.default_rng(100 + seed)
    dims = [int(v) for v in rng.integers(2, 7, depth + 1)]
    t = mlp(seed, dims, bias, scale=float(rng.uniform(0.3, 1.2)))
    dom = Domain("box", lo=float(rng.choice([0.0, -0.5]))) if kind == "box" else \
        Domain("ball", radius=float(rng.uniform(0.5, 2)))
    n = [int(v) for v in rng.integers(2, 9, depth)]
    con = construct(t, method="burkholz", n=n, seed=seed, domain=dom)
    rep = evaluate(t, con, dom, restarts=6, steps=25, seed=seed)
    x = inputs(dom, dims[0], 300, seed)
    found = np.abs(t.forward(x) - con.ticket.forward(x)).max()
    assert rep["bound_holds"] and found <= rep["certified_bound"] * (1 + 1e-9)
    assert rep["max_error_found"] > 0
    halves = 1 if kind == "box" and dom.lo >= 0 else 2
    assert con.ticket.layers[0].shape[0] == dims[0] * halves * n[0] + (n[0] if bias else 0)


def test_halves_follow_the_domain():
    t = mlp(0, [4, 3, 2], bias=False)
    rows = {}
    for name, dom, opts in [("box", Domain(), {}), ("neg-box", Domain(lo=-1.0), {}),
                            ("ball", Domain("ball"), {}), ("both", Domain(), {"halves": "both"})]:
        con = construct(t, method="burkholz", n=5, seed=0, domain=dom, **opts)
        rows[name] = con.ticket.layers[0].shape[0]
        assert con.info["copy_layer_halves"] == rows[name] // 20
    assert rows == {"box": 20, "neg-box": 40, "ball": 40, "both": 40}


def test_larger_copies_reuse_smaller_ones_and_the_memo_changes_nothing():
    t = mlp(4, [5, 6, 3])
    m = get("burkholz").configure(t, None, Domain())
    L0 = target_layers(t)[0]
    w5, c5 = B.carrier_draws(L0, 5, 1, 0, [(2, 1)], 5)
    w6, c6 = B.carrier_draws(L0, 6, 1, 0, [(2, 1)], 6)
    assert (w6[:, :5] == w5).all() and (c6[:, :5] == c5).all()      # G at rho is a prefix
    big = m.solve(L0, (6, 4), 1)
    small = m.solve(L0, (6, 2), 1)                                    # from the memo
    B._MEMO.clear()
    fresh = m.solve(L0, (6, 2), 1)
    assert small.keys() == fresh.keys()
    for k in fresh:
        assert np.array_equal(small[k], fresh[k]), k
    assert np.array_equal(big["pos"].reshape(6, 4, -1)[:, :2].reshape(12, -1), fresh["pos"])


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c:
        yield c


def test_chunked_equals_unchunked_and_dask_equals_local(three, cluster, tmp_path):
    settings = {"n": [4, 3, 3], "seed": 5}
    p = tmp_path / "one.safetensors"
    B._MEMO.clear()
    construct(three, method="burkholz", n=[4, 3, 3], seed=5).ticket.save(p)
    B._MEMO.clear()
    one = execute(three, "burkholz", settings, runs_dir=tmp_path / "a", chunk_weights=10 ** 6,
                  evaluate_options=FAST)
    B._MEMO.clear()
    many = execute(three, "burkholz", settings, runs_dir=tmp_path / "b", chunk_weights=9,
                   evaluate_options=FAST)
    dist = execute(three, "burkholz", settings, runs_dir=tmp_path / "c", chunk_weights=9,
                   scheduler=cluster.scheduler_address, evaluate_options=FAST)
    assert (one.stats["chunks_total"], many.stats["chunks_total"]) == (3, 7 + 3 + 2)
    ref = p.read_bytes()
    assert one.ticket_path.read_bytes() == many.ticket_path.read_bytes() == \
        dist.ticket_path.read_bytes() == ref
    for k in ("certified_bound", "random_params", "active_params", "max_weight_error"):
        assert one.report[k] == many.report[k] == dist.report[k], k
    assert one.report["bound_holds"] and one.report["rho_per_layer"] == [4, 3, 3]


class Crash(BaseException):
    pass


def test_a_crashed_run_resumes_to_the_same_ticket(three, tmp_path):
    def crash_after(k):
        def progress(msg, done=None, total=None):
            if msg.endswith(" chunks") and done is not None and done >= k:
                raise Crash
        return progress

    settings = {"n": [5, 4, 3], "seed": 6}
    p = tmp_path / "one.safetensors"
    construct(three, method="burkholz", n=[5, 4, 3], seed=6).ticket.save(p)
    B._MEMO.clear()
    with pytest.raises(Crash):
        execute(three, "burkholz", settings, runs_dir=tmp_path / "r", chunk_weights=9,
                evaluate_options=FAST, progress=crash_after(4))
    B._MEMO.clear()
    run = execute(three, "burkholz", settings, runs_dir=tmp_path / "r", chunk_weights=9,
                  evaluate_options=FAST)
    assert run.stats["chunks_reused"] == 4 and run.ticket_path.read_bytes() == p.read_bytes()


def test_eps_search_meets_eps_and_reports_the_theory():
    t = mlp(7, [6, 5, 3])
    dom = Domain("ball")
    con = construct(t, method="burkholz", eps=0.2, domain=dom, seed=0)
    assert con.built.certificate["certified_bound"] <= 0.2
    info = con.info
    assert len(info["rho_per_layer"]) == 2 and len(info["theory_rho_per_layer"]) == 2
    assert info["theory_random_params"] > 0 and "N_SS" in info["theory_note"]
    rho, eta, n_ss = B.theory_rho(t, 0.2, 0.1, dom, 2)
    assert rho == info["theory_rho_per_layer"] and n_ss > 0 and all(e > 0 for e in eta)


@pytest.fixture(scope="module")
def digits_cnn():
    from slth import models
    from slth.targets import load_target
    torch.manual_seed(0)
    return load_target(models.digits_cnn().eval())


def test_a_small_cnn_chain_end_to_end(digits_cnn):
    net = digits_cnn
    con = construct(net, method="burkholz", n=[5, 4, 4], seed=1)
    t = con.ticket
    convs = [nd for nd in t.graph["nodes"] if nd["op"] in ("conv", "linear")]
    assert len(convs) == net.depth + 1
    # conv copies: 8 channels x 4 copies + 4 constant channels; the classifier reads them flat
    assert [L.shape for L in t.layers] == [(10, 1, 1, 1), (36, 10, 3, 3), (68, 36, 3, 3),
                                           (10, 68 * 4)]
    rep = evaluate(net, con, Domain(), restarts=2, steps=10)
    assert rep["bound_holds"] and rep["max_error_found"] > 0
    eff = t.effective()
    assert bound_details(net, eff, Domain())["certified_bound"] == rep["certified_bound"]
    x = np.random.default_rng(0).uniform(0, 1, (30, net.in_dim))
    np.testing.assert_allclose(effective_forward(net, eff, torch.from_numpy(x)).numpy(),
                               t.forward(x), atol=1e-10)
    with torch.no_grad():
        y = t.module()(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(y, t.forward(x), atol=1e-3)


def test_lenet5_chain_reads_back_what_the_driver_certified():
    from slth import models
    from slth.targets import load_target
    torch.manual_seed(1)
    net = load_target(models.lenet5((1, 16, 16)).eval())
    con = construct(net, method="burkholz", n=[4, 3, 3, 3, 3], seed=0)
    assert len(con.ticket.layers) == net.depth + 1 == 6
    eff = con.ticket.effective()
    assert bound_details(net, eff, Domain())["certified_bound"] == \
        con.built.certificate["certified_bound"]
    x = np.random.default_rng(1).uniform(0, 1, (20, net.in_dim))
    G = con.ticket.forward(x)
    np.testing.assert_allclose(effective_forward(net, eff, torch.from_numpy(x)).numpy(), G,
                               atol=1e-9)
    assert np.abs(G - net.forward(x)).max() <= con.built.certificate["certified_bound"]


def test_residual_networks_are_refused_in_one_line():
    from slth import models
    from slth.errors import SlthError
    from slth.targets import load_target
    torch.manual_seed(0)
    net = load_target(models.resnet20(1, 10, 8).eval())
    with pytest.raises(SlthError, match="residual networks") as e:
        construct(net, method="burkholz", n=2)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args, words", [
    (["--halves", "neither"], "Invalid value for '--halves'"),
    (["--max-dense", "0"], "--max-dense must be >= 1"),
    (["--n", "41"], "between 1 and 40"),
    (["--n", "0,3"], "--n must be >= 1"),
    (["--n", "5,5,5"], "3 sizes for a target of 2 layers"),
    (["--n", "30", "--max-dense", "5000"], "over --max-dense 5,000"),
    (["--delta", "2"], "--delta must be in (0, 1)"),
])
def test_bad_settings_give_one_line_and_exit_2(run_cli, tmp_path, args, words):
    mlp(0, [9, 7, 3]).save(tmp_path / "t.safetensors")
    if "--n" not in args:
        args = args + ["--n", "5"]
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", "burkholz",
                             *args, "--runs-dir", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("slth: error:"), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err


def test_the_cli_builds_a_burkholz_ticket(run_cli, tmp_path):
    import json
    mlp(0, [9, 7, 3]).save(tmp_path / "t.safetensors")
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", "burkholz",
                             "--n", "6,5", "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    rep = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert rep["rho_per_layer"] == [6, 5] and rep["g_depth"] == 3 and rep["bound_holds"]
    assert len(rep["width_per_layer"]) == 4 and "rho per layer" in out
