"""Pensia's construction: the ticket computes what its masks say, and the bound holds."""

import numpy as np
import pytest
import torch

from slth.certify import Domain, bound_details
from slth.constructions import construct
from slth.constructions.pensia import solve_layer
from slth.report import evaluate
from slth.targets import MLP
from slth.ticket import load_ticket


def random_target(rng, dims, bias, scale=0.5):
    ws = [rng.normal(0, scale / np.sqrt(dims[i]), (dims[i + 1], dims[i])) for i in range(len(dims) - 1)]
    bs = [rng.normal(0, 0.1, dims[i + 1]) if bias else None for i in range(len(dims) - 1)]
    return MLP(ws, bs)


def hand_forward(ticket, x):
    """The masked network written out by hand: h <- relu((W * M) h + b * m)."""
    h = x
    for i, L in enumerate(ticket.layers):
        h = h @ (L.weight.astype(np.float64) * L.mask).T
        if L.bias is not None:
            h = h + L.bias.astype(np.float64) * L.bias_mask
        if i < len(ticket.layers) - 1:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("bias", [False, True])
def test_ticket_module_computes_exactly_what_the_masks_say(bias):
    rng = np.random.default_rng(0)
    tgt = random_target(rng, [5, 7, 3], bias)
    t = construct(tgt, method="pensia", n=5, seed=3).ticket
    x = rng.uniform(-1, 1, (40, 5))
    ref = hand_forward(t, x)
    np.testing.assert_allclose(t.forward(x), ref, rtol=1e-12, atol=1e-12)
    m = t.module()
    # prune-style parameters, usable without slth
    names = dict(m.named_buffers()) | dict(m.named_parameters())
    assert "0.weight_orig" in names and "0.weight_mask" in names
    assert isinstance(m, torch.nn.Sequential)
    out = m(torch.from_numpy(x).float()).detach().double().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_effective_form_is_read_from_the_ticket_not_the_bookkeeping():
    rng = np.random.default_rng(1)
    tgt = random_target(rng, [4, 6, 2], True)
    con = construct(tgt, method="pensia", n=7, seed=0)
    eff = con.ticket.effective()
    sols = [solve_layer(W, c, 7, 0, i) for i, (W, c) in enumerate(zip(tgt.weights, tgt.biases))]
    for e, s in zip(eff, sols):
        np.testing.assert_allclose(e.pos, s.sums[0], atol=1e-12)
        np.testing.assert_allclose(e.neg, s.sums[1], atol=1e-12)
        np.testing.assert_allclose(e.bias, s.bias_sums, atol=1e-12)
    # the effective form reproduces the ticket's function
    x = rng.uniform(-1, 1, (30, 4))
    from slth.certify import effective_forward
    y = effective_forward(tgt.dims, eff, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, con.ticket.forward(x), atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_found_errors_never_exceed_the_certified_bound(seed):
    rng = np.random.default_rng(100 + seed)
    depth = 2 + seed % 2
    dims = [int(rng.integers(2, 7)) for _ in range(depth + 1)]
    tgt = random_target(rng, dims, bias=bool(seed % 3 == 0), scale=1.5)
    dom = Domain("ball", radius=float(rng.uniform(0.5, 3))) if seed % 2 else Domain("box")
    con = construct(tgt, method="pensia", n=int(rng.integers(3, 9)), seed=seed)

    class D:  # "test data": points of the domain
        x_test = (rng.uniform(0, 1, (200, dims[0])) if dom.kind == "box"
                  else rng.normal(size=(200, dims[0])) * dom.radius / (2 * np.sqrt(dims[0])))
        y_test = np.zeros(200, dtype=np.int64)

    rep = evaluate(tgt, con, dom, D, seed=seed, restarts=8, steps=60)
    assert rep["test_inputs_in_domain"] > 0
    assert rep["empirical_max_error"] <= rep["certified_bound"]
    assert rep["adversarial_max_error"] <= rep["certified_bound"]
    assert rep["bound_holds"]


def test_bound_holds_on_a_target_far_outside_the_theorems_assumptions():
    rng = np.random.default_rng(7)
    tgt = random_target(rng, [30, 20, 4], bias=True, scale=4.0)  # spectral norms well above 1
    dom = Domain("box")
    con = construct(tgt, method="pensia", n=10, seed=1)

    class D:
        x_test = rng.uniform(0, 1, (500, 30))
        y_test = np.zeros(500, dtype=np.int64)

    rep = evaluate(tgt, con, dom, D, restarts=8, steps=80)
    assert rep["empirical_max_error"] <= rep["certified_bound"]
    assert rep["adversarial_max_error"] <= rep["certified_bound"]


@pytest.mark.parametrize("kind", ["box", "ball"])
def test_eps_mode_meets_the_requested_bound_with_the_smallest_sizes(kind):
    rng = np.random.default_rng(2)
    tgt = random_target(rng, [6, 8, 3], bias=False)
    dom = Domain(kind)
    eps = 1e-3
    con = construct(tgt, method="pensia", eps=eps, domain=dom, seed=0)
    rep = evaluate(tgt, con, dom, None, restarts=4, steps=30)
    assert rep["certified_bound"] <= eps
    ns = con.info["n_per_layer"]
    for i in range(len(ns)):  # one less in any layer breaks the bound
        smaller = list(ns)
        smaller[i] -= 1
        if smaller[i] == 0:
            continue
        effs = [construct(tgt, method="pensia", n=smaller, seed=0).ticket.effective()]
        assert bound_details(tgt, effs[0], dom)["certified_bound"] > eps


def test_larger_blocks_never_increase_weight_errors():
    rng = np.random.default_rng(3)
    W = rng.normal(0, 0.3, (4, 5))
    prev = None
    for n in range(2, 12):
        s = solve_layer(W, None, n, seed=0, layer=0)
        err = np.abs(s.sums[0] - W)
        if prev is not None:
            assert (err <= prev + 1e-15).all()
        prev = err


def test_same_seed_gives_byte_identical_ticket_files(tmp_path):
    rng = np.random.default_rng(4)
    tgt = random_target(rng, [5, 4, 3], bias=True)
    for k in (1, 2):
        construct(tgt, method="pensia", n=6, seed=9).ticket.save(tmp_path / f"t{k}.safetensors")
    assert (tmp_path / "t1.safetensors").read_bytes() == (tmp_path / "t2.safetensors").read_bytes()
    construct(tgt, method="pensia", n=6, seed=10).ticket.save(tmp_path / "t3.safetensors")
    assert (tmp_path / "t1.safetensors").read_bytes() != (tmp_path / "t3.safetensors").read_bytes()


def test_save_load_round_trips_full_and_compact(tmp_path):
    rng = np.random.default_rng(5)
    tgt = random_target(rng, [5, 4, 3], bias=True)
    t = construct(tgt, method="pensia", n=6, seed=2).ticket
    t.save(tmp_path / "t.safetensors")
    t.save_compact(tmp_path / "c.safetensors")
    a = load_ticket(tmp_path / "t.safetensors")
    c = load_ticket(tmp_path / "c.safetensors")
    assert a.meta["method"] == "pensia" and a.random_params == t.random_params
    for L, M in zip(t.layers, a.layers):
        np.testing.assert_array_equal(L.weight, M.weight)
        np.testing.assert_array_equal(L.mask, M.mask)
    x = rng.uniform(-1, 1, (20, 5))
    np.testing.assert_array_equal(a.forward(x), t.forward(x))
    np.testing.assert_allclose(c.forward(x), t.forward(x), atol=1e-12)
    assert c.active_params == t.active_params
    assert (tmp_path / "c.safetensors").stat().st_size < (tmp_path / "t.safetensors").stat().st_size


def test_the_saved_file_loads_into_plain_pytorch(tmp_path):
    from safetensors.torch import load_file
    from torch.nn.utils import prune

    rng = np.random.default_rng(6)
    tgt = random_target(rng, [3, 4, 2], bias=False)
    t = construct(tgt, method="pensia", n=4, seed=0).ticket
    t.save(tmp_path / "t.safetensors")
    sd = load_file(tmp_path / "t.safetensors")
    # rebuild with nothing but torch: Linear/ReLU, prune.identity, load_state_dict
    mods = []
    for i, L in enumerate(t.layers):
        lin = torch.nn.Linear(L.shape[1], L.shape[0], bias=False)
        prune.identity(lin, "weight")
        mods += [lin] + ([torch.nn.ReLU()] if i < len(t.layers) - 1 else [])
    net = torch.nn.Sequential(*mods)
    net.load_state_dict(sd)
    x = rng.uniform(-1, 1, (10, 3))
    np.testing.assert_allclose(net(torch.from_numpy(x).float()).detach().numpy(), t.forward(x),
                               atol=1e-5)


def test_density_and_sparsity_are_reported_explicitly():
    rng = np.random.default_rng(8)
    tgt = random_target(rng, [4, 3, 2], bias=False)
    # coverage off: the plain layout of the paper (coverage grows some blocks beyond n)
    t = construct(tgt, method="pensia", n=5, seed=0, coverage=False).ticket
    rep = t.sparsity_report()
    assert rep["density"] == pytest.approx(t.active_params / t.random_params)
    assert rep["sparsity"] == pytest.approx(1 - rep["density"])
    assert sum(L["active"] for L in rep["layers"]) == t.active_params
    # G of depth 2l, widths: d0 -> 2 n d0 -> d1 -> 2 n d1 -> d2
    assert t.widths == [4, 40, 3, 30, 2]


@pytest.mark.parametrize("bias", [False, True])
def test_ticket_files_are_the_bytes_safetensors_itself_writes(tmp_path, bias):
    """Tickets are written piece by piece (rows as they are computed); the file must be exactly
    what safetensors.save_file writes for the same tensors and metadata."""
    from safetensors.torch import save_file

    from slth.ticket import _metadata

    rng = np.random.default_rng(1)
    t = construct(random_target(rng, [6, 9, 4, 2], bias), method="pensia", n=4, seed=2).ticket
    t.save(tmp_path / "ours.safetensors")
    tensors = {}
    for i, L in enumerate(t.layers):
        tensors[f"{2 * i}.weight_orig"] = torch.from_numpy(L.weight)
        tensors[f"{2 * i}.weight_mask"] = torch.from_numpy(L.mask)
        if L.bias is not None:
            tensors[f"{2 * i}.bias_orig"] = torch.from_numpy(L.bias)
            tensors[f"{2 * i}.bias_mask"] = torch.from_numpy(L.bias_mask)
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata=_metadata(t.meta))
    assert (tmp_path / "ours.safetensors").read_bytes() == \
        (tmp_path / "theirs.safetensors").read_bytes()
    assert not list(tmp_path.glob("*.part"))


def test_widen_layer_drawn_in_blocks_is_the_one_piece_draw():
    """Workers write G's widen layer a block of rows at a time (bounded memory); the blocks must
    be exactly the rows of the layer drawn at once."""
    from slth.constructions.pensia import draw_in, widen_weight_rows, widen_weights

    a, beta = draw_in(6, 5, True, 4, 1)
    Uw, Ub = widen_weights(a, beta, 4, 1)
    blocks = list(widen_weight_rows(a, True, 4, 1, block=7))
    assert [r0 for r0, _ in blocks] == list(range(0, len(Uw), 7))
    assert np.array_equal(np.concatenate([b for _, b in blocks]), Uw)
    assert Uw.shape == (2 * 5 * 6 + 5, 6) and Ub.shape == (65,) and np.all(Ub[60:] == beta.astype(np.float32))


def test_coverage_covers_a_weight_its_base_block_cannot_reach_and_the_bound_drops():
    rng = np.random.default_rng(0)
    W1 = rng.uniform(-0.3, 0.3, (6, 5))
    W1[2, 3] = 3.0      # out of reach of n = 6 products of two Uniform draws (sum <= 6 * 1 * 1 / 2)
    tgt = MLP([W1, rng.uniform(-0.3, 0.3, (2, 6))], [None, None])
    plain = construct(tgt, method="pensia", n=6, seed=1, coverage=False, domain=Domain("box"))
    cov = construct(tgt, method="pensia", n=6, seed=1, domain=Domain("box"))
    c = cov.info["coverage"]
    assert c["uncovered_before"] >= 1 and c["uncovered_after"] == 0
    assert c["extra_random_params"] == cov.ticket.random_params - plain.ticket.random_params > 0
    assert plain.info["max_weight_error"] > 0.5 > cov.info["max_weight_error"]
    bound = lambda con: con.built.certificate["certified_bound"]
    assert bound(cov) < bound(plain) / 4
