"""Orseau's construction: greedy golden-ratio digits, batch sampling, hyperbolic weights, and
the certified bound on real tickets."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slth.certify import Domain, bound_details
from slth.constructions import construct
from slth.constructions.orseau import (PHI, Magnitudes, batch_samples, golden_greedy,
                                       layer_magnitudes, solve_layer)
from slth.errors import SlthError
from slth.report import evaluate
from slth.targets import MLP


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention on a shared 2-core machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_target(rng, dims, bias, scale=0.5):
    ws = [rng.normal(0, scale / np.sqrt(dims[i]), (dims[i + 1], dims[i])) for i in range(len(dims) - 1)]
    bs = [rng.normal(0, 0.1, dims[i + 1]) if bias else None for i in range(len(dims) - 1)]
    return MLP(ws, bs)


@settings(max_examples=150, deadline=None)
@given(gamma=st.sampled_from([PHI, 1.5]), k=st.integers(1, 40),
       w=st.floats(-1.0, 1.0, allow_nan=False), fracs=st.data(), extra=st.integers(0, 20))
def test_greedy_digits_reach_gamma_to_the_minus_k_when_every_digit_holds_a_sample(gamma, k, w, fracs, extra):
    # one sample inside each digit interval [gamma^-i-1, gamma^-i], i = 1..k, with the sign of w,
    # plus extra samples anywhere (either sign): the greedy must still be within gamma^-k.
    # (Samples exactly on a boundary between two digits - probability 0 - count for one digit.)
    f = fracs.draw(st.lists(st.floats(1e-3, 1 - 1e-3), min_size=k + extra, max_size=k + extra))
    signs = fracs.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=extra, max_size=extra))
    digits = [gamma ** (-i - 1) + f[i - 1] * (gamma ** -i - gamma ** (-i - 1)) for i in range(1, k + 1)]
    others = [sg * v for sg, v in zip(signs, f[k:])]
    sgn = 1.0 if w >= 0 else -1.0
    p = np.array([sgn * x for x in digits] + others)
    mask = golden_greedy(p[None, :], np.array([w]), 1.0, gamma)[0]
    assert abs(w - p[mask].sum()) <= gamma ** -k + 1e-12
    assert (np.sign(p[mask]) == sgn).all()
    # at most one coefficient per digit
    dig = np.floor(np.log(1.0 / np.abs(p[mask])) / np.log(gamma))
    assert len(set(dig.tolist())) == mask.sum()


def test_greedy_takes_what_fits_and_never_overshoots():
    p = np.array([[0.6, 0.35, 0.2, -0.3, 0.07]])
    mask = golden_greedy(p, np.array([0.9]), 1.0, PHI)
    # 0.6 (digit 1) fits, 0.35 (digit 2) does not (0.3 left), 0.2 (digit 3) fits, 0.07 (digit 5) fits
    assert mask.tolist() == [[True, False, True, False, True]]
    assert golden_greedy(p, np.array([0.0]), 1.0, PHI).sum() == 0


def test_batch_sampling_size_is_reproduced_exactly():
    assert batch_samples(10, 5, 0.1, 0.01) == math.ceil(20 * (10 + math.log(500)))  # 325
    assert batch_samples(10, 5, 0.1, 0.01) == 325
    assert batch_samples(1, 1, 1.0, 0.5) == math.ceil(2 * (1 + math.log(2)))  # 4
    assert batch_samples(397_000, 17, 0.02, 0.1) == math.ceil(100 * (397_000 + math.log(170)))


def test_batch_sampling_size_fills_every_category_at_least_as_often_as_promised():
    rng = np.random.default_rng(0)
    m, k, c, delta = 3, 6, 0.1, 0.2
    M = batch_samples(m, k, c, delta)
    probs = np.array([c] * k + [1 - k * c])  # k categories of mass c and the rest
    counts = rng.multinomial(M, probs, size=4000)[:, :k]
    assert (counts >= m).all(1).mean() >= 1 - delta


def test_hyperbolic_magnitudes_are_log_uniform_and_the_product_law_matches():
    mags = Magnitudes("hyperbolic", 1e-3, 1.0)
    rng = np.random.default_rng(1)
    a, b = mags(rng.uniform(0, 1, 200_000)), mags(rng.uniform(0, 1, 200_000))
    per_decade = np.histogram(np.log10(a), bins=3, range=(-3, 0))[0] / a.size
    np.testing.assert_allclose(per_decade, 1 / 3, atol=0.01)
    for z in (1e-5, 1e-3, 0.05):
        assert abs((a * b <= z).mean() - mags.product_cdf(z)) < 0.005
    uni = Magnitudes("uniform", 0.0, 1.0)
    a, b = uni(rng.uniform(0, 1, 200_000)), uni(rng.uniform(0, 1, 200_000))
    for z in (0.01, 0.2, 0.7):
        assert abs((a * b <= z).mean() - uni.product_cdf(z)) < 0.005


@pytest.mark.parametrize("case", range(8))
def test_found_errors_never_exceed_the_certified_bound(case):
    rng = np.random.default_rng(200 + case)
    dims = [int(rng.integers(2, 6)) for _ in range(2 + case % 2 + 1)]
    tgt = random_target(rng, dims, bias=case % 3 == 0, scale=1.5)
    dom = Domain("ball", radius=float(rng.uniform(0.5, 2))) if case % 2 else Domain("box")
    opts = [{}, {"distribution": "uniform"}, {"gamma": 1.5}, {"w_min": 1e-3, "w_max": 2.0}][case % 4]
    con = construct(tgt, method="orseau", n=int(rng.integers(4, 40)), seed=case, domain=dom, **opts)

    class D:
        x_test = (rng.uniform(0, 1, (200, dims[0])) if dom.kind == "box"
                  else rng.normal(size=(200, dims[0])) * dom.radius / (2 * np.sqrt(dims[0])))
        y_test = np.zeros(200, dtype=np.int64)

    rep = evaluate(tgt, con, dom, D, seed=case, restarts=8, steps=60)
    assert rep["empirical_max_error"] <= rep["certified_bound"]
    assert rep["adversarial_max_error"] <= rep["certified_bound"]


def test_the_ticket_computes_what_the_digits_chose():
    rng = np.random.default_rng(3)
    tgt = random_target(rng, [4, 5, 3], bias=True)
    con = construct(tgt, method="orseau", n=12, seed=4)
    mags = layer_magnitudes(tgt, None)
    for i, e in enumerate(con.ticket.effective()):
        s = solve_layer(tgt.weights[i], tgt.biases[i], 12, 4, i, mags[i]).effective()
        np.testing.assert_allclose(e.pos, s.pos, atol=1e-12)
        np.testing.assert_allclose(e.neg, s.neg, atol=1e-12)
        np.testing.assert_allclose(e.bias, s.bias, atol=1e-12)
    t = con.ticket
    kept_per_neuron = t.layers[0].mask.sum(1) + t.layers[0].bias_mask
    assert kept_per_neuron.max() <= 1  # widen neurons keep one input or only their bias
    lo, hi = con.info["range_per_layer"][0]
    w = np.abs(t.layers[0].weight)
    assert w.min() >= lo * (1 - 1e-6) and w.max() <= hi * (1 + 1e-6)  # every weight hyperbolic


def test_uniform_variant_uses_pensias_random_network():
    rng = np.random.default_rng(5)
    tgt = random_target(rng, [3, 4, 2], bias=True)
    a = construct(tgt, method="orseau", n=5, seed=7, distribution="uniform").ticket
    b = construct(tgt, method="pensia", n=5, seed=7, coverage=False).ticket  # Pensia's plain layout
    for x, y in zip(a.layers, b.layers):
        np.testing.assert_array_equal(x.weight, y.weight)
        if x.bias is not None:
            np.testing.assert_array_equal(x.bias, y.bias)


@pytest.mark.parametrize("kind", ["box", "ball"])
def test_eps_mode_meets_the_requested_bound(kind):
    rng = np.random.default_rng(6)
    tgt = random_target(rng, [5, 6, 3], bias=False)
    dom = Domain(kind)
    con = construct(tgt, method="orseau", eps=1e-3, domain=dom, seed=1)
    assert bound_details(tgt, con.ticket.effective(), dom)["certified_bound"] <= 1e-3
    assert con.info["theory_n_per_layer"][0] > 0 and con.info["eps"] == 1e-3


def test_theory_sizing_meets_eps_on_a_target_within_the_assumptions():
    from slth.experiments.width import assumption_target
    tgt = assumption_target([4, 4, 2], seed=0)
    dom = Domain("ball")
    con = construct(tgt, method="orseau", eps=1e-2, domain=dom, sizing="theory", seed=0)
    assert con.info["n_per_layer"] == con.info["theory_n_per_layer"]
    assert bound_details(tgt, con.ticket.effective(), dom)["certified_bound"] <= 1e-2


def test_same_seed_same_ticket_bytes(tmp_path):
    rng = np.random.default_rng(8)
    tgt = random_target(rng, [3, 4, 2], bias=True)
    for k in (1, 2):
        construct(tgt, method="orseau", n=9, seed=3).ticket.save(tmp_path / f"t{k}.safetensors")
    assert (tmp_path / "t1.safetensors").read_bytes() == (tmp_path / "t2.safetensors").read_bytes()


@pytest.mark.parametrize("opts, words", [
    ({"w_min": 0.0, "w_max": 1.0}, "empty or not positive"),
    ({"w_min": 1.0, "w_max": 0.5}, "empty or not positive"),
    ({"w_min": -1.0}, "empty or not positive"),
    ({"gamma": 2.0}, "--gamma"),
    ({"eps": -1.0}, "eps must be > 0"),
])
def test_bad_settings_raise_one_clear_line(opts, words):
    tgt = random_target(np.random.default_rng(9), [3, 2], bias=False)
    opts = {"n": 4, **opts} if "eps" not in opts else opts
    with pytest.raises(SlthError, match=words) as e:
        construct(tgt, method="orseau", **opts)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args, words", [
    (["--eps", "0"], "--eps must be > 0"),
    (["--eps", "0.1", "--w-min", "0"], "hyperbolic range"),
    (["--eps", "0.1", "--w-min", "0.5", "--w-max", "0.1"], "hyperbolic range"),
])
def test_cli_refuses_bad_settings_with_exit_2(run_cli, tmp_path, args, words):
    tgt = random_target(np.random.default_rng(10), [3, 2], bias=False)
    tgt.save(tmp_path / "t.safetensors")
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", "orseau",
                             *args, "--out", tmp_path / "o")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slth: error:") and words in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bias", [False, True])
def test_compiled_greedy_gives_the_numpy_greedys_ticket_byte_for_byte(bias, monkeypatch):
    from slth.constructions.blocks import BlockMethod
    from slth.constructions.orseau import Orseau

    tgt = random_target(np.random.default_rng(3), [7, 5, 3], bias)
    fast = construct(tgt, method="orseau", n=24, seed=4).ticket
    monkeypatch.setattr(Orseau, "masks", BlockMethod.masks)      # the NumPy golden_greedy path
    slow = construct(tgt, method="orseau", n=24, seed=4).ticket
    for a, b in zip(fast.layers, slow.layers):
        for x, y in ((a.weight, b.weight), (a.mask, b.mask), (a.bias, b.bias),
                     (a.bias_mask, b.bias_mask)):
            assert (x is None and y is None) or np.asarray(x).tobytes() == np.asarray(y).tobytes()
