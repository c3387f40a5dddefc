"""Malach's construction: the two-neuron pairing, the certified bound, and its refusals."""

import numpy as np
import pytest

from slth.certify import Domain, bound_details
from slth.constructions import construct
from slth.constructions.malach import TooLarge, gadget_draws, match_probability, solve_layer
from slth.errors import SlthError
from slth.report import evaluate
from slth.targets import MLP


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_target(rng, dims, bias=False):
    ws = [rng.uniform(-1, 1, (dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1)]
    bs = [rng.uniform(-0.5, 0.5, dims[i + 1]) if bias else None for i in range(len(dims) - 1)]
    return MLP(ws, bs)


def test_every_weight_is_a_pair_of_neurons_with_opposite_out_signs():
    rng = np.random.default_rng(0)
    tgt = small_target(rng, [4, 3, 2], bias=True)
    K = 300
    t = construct(tgt, method="malach", n=K, seed=1).ticket
    for p in (0, 2):
        U, V = t.layers[p], t.layers[p + 1]
        W = tgt.weights[p // 2]
        d_out, d_in = W.shape
        assert U.shape == (d_out * K, d_in)
        assert (U.mask.sum(1) + U.bias_mask <= 1).all()       # one input or only the bias
        rows, cols = np.nonzero(U.mask)
        for r, i in zip(rows, cols):
            k = r // K
            assert V.mask[:, r].tolist() == [j == k for j in range(d_out)]  # its own output only
        for k in range(d_out):
            for i in range(d_in):
                r = [r for r, c in zip(rows, cols) if c == i and r // K == k]
                assert len(r) == 2                                # j1(i), j2(i)
                a, A = U.weight[r, i], V.weight[k, r]
                assert (np.sign(a) == [1, -1]).all() or (np.sign(a) == [-1, 1]).all()
                assert np.sign(A[0]) != np.sign(A[1])             # sign(A_j1) != sign(A_j2)
                # each computes one half of w x = relu(w x) - relu(-w x)
                for aa, AA in zip(a, A):
                    assert abs(AA * abs(aa) - (W[k, i] if aa > 0 else -W[k, i])) < 0.1


def test_the_ticket_computes_what_the_pairs_chose():
    rng = np.random.default_rng(1)
    tgt = small_target(rng, [3, 4, 2], bias=True)
    con = construct(tgt, method="malach", n=100, seed=2)
    for i, e in enumerate(con.ticket.effective()):
        s = solve_layer(tgt.weights[i], tgt.biases[i], 100, 2, i).effective()
        np.testing.assert_array_equal(e.pos, s.pos)
        np.testing.assert_array_equal(e.neg, s.neg)
        np.testing.assert_array_equal(e.bias, s.bias)


def test_a_smaller_gadget_is_a_prefix_of_a_larger_one():
    u1, A1, b1 = gadget_draws(5, 700, True, 3, 0, 2)
    u2, A2, b2 = gadget_draws(5, 3000, True, 3, 0, 2)
    np.testing.assert_array_equal(u1, u2[:700])
    np.testing.assert_array_equal(A1, A2[:700])
    u3, A3, _ = gadget_draws(5, 3000, True, 3, 0, 2, start=1500)
    np.testing.assert_array_equal(u3, u2[1500:])


@pytest.mark.parametrize("case", range(6))
def test_found_errors_never_exceed_the_certified_bound(case):
    rng = np.random.default_rng(300 + case)
    dims = [int(rng.integers(2, 6)) for _ in range(2 + case % 2 + 1)]
    tgt = small_target(rng, dims, bias=case % 3 == 0)
    dom = Domain("ball", radius=float(rng.uniform(0.5, 2))) if case % 2 else Domain("box")
    con = construct(tgt, method="malach", n=int(rng.integers(20, 400)), seed=case, domain=dom)

    class D:
        x_test = (rng.uniform(0, 1, (200, dims[0])) if dom.kind == "box"
                  else rng.normal(size=(200, dims[0])) * dom.radius / (2 * np.sqrt(dims[0])))
        y_test = np.zeros(200, dtype=np.int64)

    rep = evaluate(tgt, con, dom, D, seed=case, restarts=8, steps=60)
    assert rep["empirical_max_error"] <= rep["certified_bound"]
    assert rep["adversarial_max_error"] <= rep["certified_bound"]


@pytest.mark.parametrize("kind", ["box", "ball"])
def test_eps_mode_meets_eps_and_reports_the_tolerance_it_needed(kind):
    rng = np.random.default_rng(4)
    tgt = small_target(rng, [4, 4, 2])
    dom = Domain(kind)
    con = construct(tgt, method="malach", eps=0.02, domain=dom, seed=0)
    assert bound_details(tgt, con.ticket.effective(), dom)["certified_bound"] <= 0.02
    # the per-weight tolerance the network bound allowed, beside the paper's a-priori one
    assert 0 < con.info["max_weight_error"] < 0.02
    assert con.info["theory_tolerance_per_layer"][0] == pytest.approx(0.02 / (2 * 2 * 4))
    assert all(k > 0 for k in con.info["theory_samples_per_layer"])


def test_width_grows_polynomially_with_precision():
    rng = np.random.default_rng(5)
    tgt = small_target(rng, [3, 2])
    dom = Domain("ball")
    Ks = [construct(tgt, method="malach", eps=e, domain=dom, seed=0).info["samples_per_layer"][0]
          for e in (1e-1, 1e-2, 1e-3)]
    assert Ks[1] > 3 * Ks[0] and Ks[2] > 3 * Ks[1]


def test_match_probability_is_the_frequency_of_a_neuron_serving_a_slot():
    rng = np.random.default_rng(6)
    u, A = rng.uniform(-1, 1, 400_000), rng.uniform(-1, 1, 400_000)
    for w, t in ((0.3, 0.02), (-0.7, 0.05), (0.05, 0.01)):
        hits = ((u > 0) & (np.abs(A * u - w) <= t)).mean()
        assert hits == pytest.approx(float(match_probability(np.array([w]), t)[0]), rel=0.05)


def test_refuses_a_g_that_would_not_fit_and_says_the_width_it_needs():
    tgt = small_target(np.random.default_rng(7), [4, 4])
    with pytest.raises(TooLarge, match=r"needs hidden widths \[\d+\]") as e:
        construct(tgt, method="malach", eps=1e-5, domain=Domain("ball"), max_params=200_000)
    assert e.value.params > 200_000 and "\n" not in str(e.value)
    with pytest.raises(TooLarge, match="over --max-params"):
        construct(tgt, method="malach", n=10_000, max_params=100_000)


def test_refuses_weights_that_products_of_uniform_weights_cannot_reach():
    tgt = MLP([np.array([[1.5, 0.2]])], [None])
    with pytest.raises(SlthError, match="weights up to 1.5"):
        construct(tgt, method="malach", eps=0.01)


def test_same_seed_same_ticket_bytes(tmp_path):
    tgt = small_target(np.random.default_rng(8), [3, 2, 2], bias=True)
    for k in (1, 2):
        construct(tgt, method="malach", n=50, seed=3).ticket.save(tmp_path / f"t{k}.safetensors")
    assert (tmp_path / "t1.safetensors").read_bytes() == (tmp_path / "t2.safetensors").read_bytes()


@pytest.mark.parametrize("args, words", [
    (["--eps", "-0.1"], "--eps must be > 0"),
    (["--eps", "1e-6", "--max-params", "100000"], "needs hidden widths"),
    (["--n", "100000", "--max-params", "100000"], "over --max-params"),
])
def test_cli_refuses_with_one_line_and_exit_2(run_cli, tmp_path, args, words):
    small_target(np.random.default_rng(9), [3, 2]).save(tmp_path / "t.safetensors")
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", "malach",
                             *args, "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("slth: error:")
    assert words in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_construct_writes_report_with_theory_beside_ours(run_cli, tmp_path):
    import json
    small_target(np.random.default_rng(10), [3, 3, 2]).save(tmp_path / "t.safetensors")
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", "malach",
                             "--eps", "0.05", "--domain", "ball", "--out", tmp_path / "o")
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["method"] == "malach" and rep["certified_bound"] <= 0.05
    assert len(rep["samples_per_layer"]) == 2 and len(rep["theory_samples_per_layer"]) == 2
    assert rep["adversarial_max_error"] <= rep["certified_bound"]
    assert "samples per layer" in out
