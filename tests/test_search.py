"""Edge-popup supermask layers, structures, exports and the ``slth search`` command."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slth.search import (SupermaskConv2d, SupermaskCopies, SupermaskLinear, SearchConfig, build,
                         fit, from_ticket, load_module, n_keep, save_module, to_sequential,
                         to_ticket, topk_mask)
from slth.search.export import arch_of
from slth.search.models import wide_width, base_dims
from slth.search.supermask import SortGetSubnet, TopK

IMG = (1, 4, 4)  # 16 inputs: tiny models for fast tests


def _x(n=32, d=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, d), dtype=np.float32))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), density=st.floats(1e-3, 1.0), ties=st.booleans(), seed=st.integers(0, 9))
def test_topk_keeps_exactly_the_requested_count_even_with_ties(n, density, ties, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 3, (n,), generator=g).float() if ties else torch.rand(n, generator=g)
    k = n_keep(n, density)
    m = topk_mask(s, k)
    assert int(m.sum()) == k == max(1, min(n, round(density * n)))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    if k < n:  # every kept score >= every dropped score
        assert s[m > 0].min() >= s[m == 0].max()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8192, 40000), density=st.floats(1e-3, 1.0), drift=st.floats(0, 0.05),
       ties=st.booleans(), seed=st.integers(0, 9))
def test_warm_started_topk_stays_exact_as_scores_drift(n, density, drift, ties, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g)
    sel, k = TopK(), n_keep(n, density)
    for _ in range(6):
        if ties:
            a = (a * 50).round() / 50
        m = sel(a, k)
        assert int(m.sum()) == k
        if k < n:
            assert a[m > 0].min() >= a[m == 0].max()
        a = (a + drift * torch.randn(n, generator=g)).abs()


@pytest.mark.parametrize("structure", ["redundant-linear", "redundant-relu", "wide", "dense"])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.013, 1.0])
def test_layer_scope_keeps_the_density_in_every_tensor(structure, density):
    net = build("fc4", structure, IMG, 10, density=density, hidden=12, bias=True, seed=1)
    with net.fixed_masks():
        for m in net.supermasks():
            for (t, _), mask in zip(m.prunable(), m.masks()):
                assert int(mask.sum()) == n_keep(t.numel(), density)
    assert net.kept_params == sum(n_keep(t.numel(), density)
                                  for m in net.supermasks() for t, _ in m.prunable())


@pytest.mark.parametrize("density", [0.5, 0.07, 0.9])
def test_global_scope_keeps_the_density_over_all_tensors(density):
    net = build("fc2", "redundant-relu", IMG, 10, density=density, scope="global", hidden=20,
                bias=True, seed=2)
    with torch.no_grad():  # move scores apart so layers differ
        for i, m in enumerate(net.supermasks()):
            m.scores.mul_(1 + i)
    masks = net.compute_masks()
    kept = sum(int(k.sum()) for ms in masks for k in ms)
    assert kept == n_keep(net.searched_params, density)
    scores = [s.abs() for m in net.supermasks() for _, s in m.prunable()]
    flat_k = torch.cat([k.reshape(-1) for ms in masks for k in ms])
    flat_s = torch.cat([s.reshape(-1) for s in scores])
    assert flat_s[flat_k > 0].min() >= flat_s[flat_k == 0].max()


def _layers():
    g = torch.Generator().manual_seed(0)
    return [(SupermaskLinear(16, 8, 0.3, bias=True, gen=g), _x()),
            (SupermaskConv2d(2, 3, 3, padding=1, density=0.3, bias=True, gen=g), _x(8, 2 * 25).view(8, 2, 5, 5)),
            (SupermaskCopies(16, 3, 0.3, gen=g), _x())]


@pytest.mark.parametrize("i", range(3))
def test_gradients_reach_the_scores_and_never_the_frozen_weights(i):
    layer, x = _layers()[i]
    frozen = [t.clone() for t, _ in layer.prunable()]
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()
    assert {n for n, _ in layer.named_parameters()} <= {"scores", "bias_scores"}
    for (t, s), before in zip(layer.prunable(), frozen):
        assert not t.requires_grad and t.grad is None
        assert torch.equal(t, before)
        assert s.grad is not None and s.grad.abs().sum() > 0


def test_straight_through_gradient_is_grad_times_weight_times_sign():
    layer, x = _layers()[0]
    (m, _) = layer.compute_masks()
    w_eff = (layer.weight * m).requires_grad_(True)
    torch.nn.functional.linear(x, w_eff, layer.bias * layer.compute_masks()[1]).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    expected = w_eff.grad * layer.weight * layer.scores.detach().sign()
    assert torch.allclose(layer.scores.grad, expected, rtol=1e-6, atol=1e-7)


def test_sort_based_reference_trains_identically_while_masks_agree():
    def run(selector):
        net = build("fc2", "dense", IMG, 10, density=0.5, hidden=10, seed=3)
        for m in net.supermasks():
            m.selector = selector
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for step in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(_x(seed=step)), torch.arange(32) % 10)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [m.scores.detach().clone() for m in net.supermasks()]

    (la, sa), (lb, sb) = run("topk"), run("sort")
    assert la == lb
    assert all(torch.equal(a, b) for a, b in zip(sa, sb))
    s = torch.rand(7, 9)
    assert torch.equal(SortGetSubnet.apply(s, 0.5), topk_mask(s, 63 - int(0.5 * 63)))


def test_wide_baseline_matches_the_papers_widths():
    assert wide_width(base_dims("fc2", (1, 28, 28), 10), 5) == 2508
    assert wide_width(base_dims("fc4", (1, 28, 28), 10), 5) == 1314
    assert wide_width(base_dims("lenet5", (1, 28, 28), 10), 5) == 378
    assert base_dims("lenet5", (1, 8, 8), 10) == [256, 120, 84, 10]


CASES = [(m, s) for m in ("fc2", "fc4", "lenet5")
         for s in ("redundant-linear", "redundant-relu", "wide", "dense", "trained")]


@pytest.mark.parametrize("model,structure", CASES)
def test_exported_module_reproduces_the_search_outputs_exactly(model, structure, tmp_path):
    img = (1, 8, 8) if model == "lenet5" else IMG
    net = build(model, structure, img, 10, density=0.3, hidden=12, bias=structure == "dense",
                prune_convs=structure == "wide", seed=4)
    x = _x(16, int(np.prod(img)))
    fit(net, x.numpy(), (torch.arange(16) % 10).numpy(), SearchConfig(epochs=1, batch_size=8))
    net.eval()
    with torch.no_grad(), net.fixed_masks():
        ref = net(x)
    seq = to_sequential(net)
    with torch.no_grad():
        assert torch.equal(seq(x), ref)
    assert any(n.endswith("weight_mask") for n, _ in seq.named_buffers()) or structure == "trained"
    save_module(seq, arch_of(net), tmp_path / "m.safetensors", {"model": model})
    back, meta = load_module(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(back(x), ref)
    assert meta == {"model": model}
    if model != "lenet5":
        ticket = to_ticket(net)
        with torch.no_grad():
            out = ticket.module()(x)
        if structure == "redundant-linear":  # V u = V relu(u) - V relu(-u): equal up to rounding
            assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(out, ref)
        assert np.allclose(ticket.forward(x.numpy()), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_any_constructed_G_can_be_searched_and_exports_its_original_weights(tmp_path):
    from slth.constructions import construct
    from slth.targets import MLP
    from slth.ticket import load_ticket

    rng = np.random.default_rng(0)
    target = MLP([rng.uniform(-0.5, 0.5, (6, 16)), rng.uniform(-0.5, 0.5, (10, 6))],
                 [rng.uniform(-0.2, 0.2, 6), None])
    planted = construct(target, method="pensia", n=3, seed=0).ticket
    net = from_ticket(planted, density=0.2, seed=1)
    x = _x()
    fit(net, x.numpy(), (torch.arange(32) % 10).numpy(), SearchConfig(epochs=2, batch_size=8))
    found = to_ticket(net)
    for L, P in zip(found.layers, planted.layers):
        assert np.array_equal(L.weight, P.weight) and L.mask.shape == P.mask.shape
    assert found.active_params == round(0.2 * planted.random_params)
    with torch.no_grad(), net.fixed_masks():
        scaled = net(x).double().numpy()
    assert np.allclose(found.forward(x.numpy()), scaled * net.info["output_scale"], rtol=1e-4, atol=1e-4)
    found.save(tmp_path / "t.safetensors")
    assert load_ticket(tmp_path / "t.safetensors").active_params == found.active_params


def test_same_seed_and_settings_give_identical_results():
    def run():
        net = build("fc2", "redundant-relu", IMG, 10, density=0.4, hidden=10, seed=5)
        h = fit(net, _x(40).numpy(), (np.arange(40) % 10), SearchConfig(epochs=2, batch_size=8, seed=5),
                x_test=_x(20, seed=1).numpy(), y_test=np.arange(20) % 10)
        return h["train_loss"], [m.scores.detach().clone() for m in net.supermasks()]

    (la, sa), (lb, sb) = run(), run()
    assert la == lb and all(torch.equal(a, b) for a, b in zip(sa, sb))


# ------------------------------------------------------------------------------------- CLI
def test_search_cli_writes_result_module_and_ticket(run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("search", "--model", "fc2", "--structure", "redundant-relu",
                                "--density", "0.25", "--hidden", "16", "--epochs", "1",
                                "--data", "digits", "--out", out)
    assert code == 0, err
    res = json.loads((out / "result.json").read_text())
    assert res["kept_params"] == sum(n_keep(n, 0.25) for n in (64 * 5, 64 * 5 * 16, 16 * 5, 16 * 5 * 10))
    assert res["density"] == 0.25 and res["sparsity"] == 0.75
    assert 0 <= res["accuracy"] <= 1 and len(res["test_accuracy"]) == 1
    from slth.data import load_dataset
    from slth.ticket import load_ticket

    x = torch.from_numpy(load_dataset("digits").x_test)
    seq, meta = load_module(out / "module.safetensors")
    with torch.no_grad():
        acc = float((seq(x).argmax(1).numpy() == load_dataset("digits").y_test).mean())
    assert acc == pytest.approx(res["accuracy"]) and meta["kept_params"] == res["kept_params"]
    assert load_ticket(out).meta["structure"] == "redundant-relu"
    assert "test accuracy" in stdout


@pytest.mark.parametrize("args,msg", [
    (["--density", "0"], "density"),
    (["--density", "1.5"], "density"),
    (["--density", "-0.1"], "density"),
    (["--model", "resnet"], "resnet"),
    (["--structure", "tall"], "tall"),
    (["--data", "cifar"], "cifar"),
    (["--data", "mnist", "--data-dir", "NOPE"], "mnist"),
    (["--epochs", "0"], "epochs"),
    (["--ticket", "NOPE"], "not found"),
])
def test_search_cli_refuses_bad_input_with_one_line_and_no_output(run_cli, tmp_path, args, msg):
    args = [a.replace("NOPE", str(tmp_path / "nope")) for a in args]
    code, out, err = run_cli("search", "--hidden", "8", "--epochs", "1", *args, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("slth: error:") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_bench_supermask_runs_both_implementations_on_the_same_structure(run_cli, tmp_path):
    code, out, err = run_cli("bench", "supermask", "--data", "digits", "--structure", "dense",
                             "--steps", "2", "--rounds", "1", "--json", tmp_path / "b.json")
    assert code == 0, err
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["same_initial_masks"] and res["max_loss_diff_first_round"] == 0.0
    assert res["samples_per_s"]["ours"] > 0 and res["samples_per_s"]["sort"] > 0


def test_mse_loss_ignores_the_output_scale_and_vanishes_at_the_teacher():
    import torch
    from slth.search.train import scaled_mse

    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 10, generator=g)
    out = t + 0.3 * torch.randn(64, 10, generator=g)
    base = float(scaled_mse(out, t))
    assert 0 < base < 1
    for c in (1e-3, 7.0, 118.0):  # a random mask's outputs may be far larger or smaller
        assert abs(float(scaled_mse(c * out, t)) - base) < 1e-5
    assert float(scaled_mse(t, t)) < 1e-12
    assert abs(float(scaled_mse(torch.zeros_like(t), t)) - 1.0) < 1e-6  # shrinking to 0 is no optimum
