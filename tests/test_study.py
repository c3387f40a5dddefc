"""``slth study width``: the size search, its statistics and fits, and the command."""

import json
import math

import numpy as np
import pytest

from slth.certify import Domain, bound_details
from slth.experiments import width as W


def tiny(**kw):
    base = dict(eps_grid=[0.1, 0.03], seeds=2, pensia_seeds=0, dims=[3, 3, 2], trained=False, sweep_eps=0.1,
                sweep_d=[2, 3], sweep_depth=[1, 2], max_params=2_000_000, workers=1, rel_tol=0.0)
    return W.Settings(**{**base, **kw})


def strip_times(res):
    res = json.loads(json.dumps(res, default=float))
    for k in ("seconds", "seconds_per_method"):
        res.pop(k, None)
    return res


def test_width_search_is_deterministic_for_a_fixed_seed_and_any_number_of_workers():
    a = strip_times(W.run(tiny()))
    b = strip_times(W.run(tiny()))
    c = strip_times(W.run(tiny(workers=2)))
    assert a == b
    a["settings"].pop("workers"), c["settings"].pop("workers")
    assert a == c


@pytest.mark.parametrize("method", W.METHODS)
def test_the_size_found_is_the_smallest_that_meets_eps(method):
    tgt = W.assumption_target([3, 3, 2], seed=1)
    dom = Domain("ball")
    s = tiny()
    [k] = W.sizes_over_eps(method, tgt, dom, [0.05], seed=4, s=s)
    def bound(size):
        return bound_details(tgt, W.effective(method, tgt, size, 4, 0.05), dom)["certified_bound"]
    assert bound(k) <= 0.05
    assert k == 1 or bound(k - 1) > 0.05


def test_sizes_never_shrink_as_eps_shrinks_and_stop_past_the_limit():
    tgt = W.assumption_target([3, 3, 2], seed=0)
    sizes = W.sizes_over_eps("malach", tgt, Domain("ball"), [0.1, 0.01, 1e-5], 0,
                             tiny(max_params=300_000))
    assert sizes[0] <= sizes[1] and sizes[2] is None


def test_quantile_is_the_size_that_works_for_a_fraction_one_minus_delta_of_seeds():
    assert W.quantile([5, 3, 9, 4, 7, 6, 8, 2, 1, 10], 0.1) == 9
    assert W.quantile([5, 3, None, 4], 0.25) == 5
    assert W.quantile([5, None, None, 4], 0.25) is None


def test_pensia_gets_its_own_number_of_seeds_and_the_fits_state_their_ranges():
    res = W.run(tiny(methods=["pensia", "malach"], pensia_seeds=3, eps_grid=[0.1, 0.01, 0.003],
                     tail_eps=0.01, sweep_d=[2], sweep_depth=[1]))
    p, m = res["eps"]["assumption"]["pensia"], res["eps"]["assumption"]["malach"]
    assert p["seeds"] == len(p["size_per_seed"]) == 3 and m["seeds"] == len(m["size_per_seed"]) == 2
    assert res["d"]["pensia"]["seeds"] == 3 and res["depth"]["malach"]["seeds"] == 2
    assert p["fit_ranges"] == {"fit": [0.1, 0.003], "fit_tail": [0.01, 0.003],
                               "fit_median": [0.1, 0.003]}
    assert p["fit_tail"]["log"]["points"] == 2 and p["fit_median"]["log"]["points"] == 3
    assert p["size_median"] == [W.quantile([s[j] for s in p["size_per_seed"]], 0.5)
                                for j in range(3)]
    assert W.Settings(seeds=7, pensia_seeds=0).seeds_for("pensia") == 7
    assert W.Settings(seeds=7).seeds_for("pensia") == 30 and W.Settings(seeds=7).seeds_for("orseau") == 7


def test_fits_recover_the_law_they_fit():
    eps = [10 ** -k for k in range(1, 7)]
    f = W.fit_log([1 / e for e in eps], [3 + 2 * math.log2(1 / e) for e in eps])
    assert f["C"] == pytest.approx(2) and f["a"] == pytest.approx(3) and f["r2"] == pytest.approx(1)
    p = W.fit_power([1 / e for e in eps], [5 * (1 / e) ** 1.5 for e in eps])
    assert p["p"] == pytest.approx(1.5) and p["C"] == pytest.approx(5)


def test_targets_meet_the_theorems_assumptions_and_rescaling_keeps_the_classifier():
    t = W.assumption_target([6, 5, 4], seed=3)
    for Wt in t.weights:
        assert np.abs(Wt).max() <= 1 / math.sqrt(Wt.shape[1]) + 1e-12
        assert np.linalg.norm(Wt, 2) <= 1 + 1e-9
    rng = np.random.default_rng(0)
    from slth.targets import MLP
    net = MLP([rng.normal(0, 2, (5, 6)), rng.normal(0, 2, (3, 5))], [None, None])
    scaled = W.malach_scaled(net)
    x = rng.uniform(0, 1, (100, 6))
    assert (net.forward(x).argmax(1) == scaled.forward(x).argmax(1)).all()
    assert all(np.abs(w).max() == pytest.approx(1 / math.sqrt(w.shape[1])) for w in scaled.weights)


def test_cli_writes_json_and_plots(run_cli, tmp_path):
    out = tmp_path / "w"
    code, stdout, err = run_cli("study", "width", "--methods", "pensia,orseau,malach",
                                "--eps-grid", "0.1,0.03,0.01", "--seeds", "2", "--pensia-seeds", "3",
                                "--dims", "3,3,2",
                                "--no-trained", "--sweep-d", "2,3", "--sweep-depth", "1,2",
                                "--sweep-eps", "0.1", "--workers", "1", "--out", out)
    assert code == 0, err
    res = json.loads((out / "width.json").read_text())
    assert set(res["eps"]["assumption"]) == {"pensia", "orseau", "malach"}
    r = res["eps"]["assumption"]["pensia"]
    assert len(r["size"]) == 3 and r["theory_size"][0] > 0 and r["fit"]["log"]["r2"] <= 1
    assert r["seeds"] == 3 and res["eps"]["assumption"]["malach"]["seeds"] == 2
    for name in ("eps.png", "d.png", "depth.png"):
        assert (out / name).stat().st_size > 1000
    assert "R2" in stdout


@pytest.mark.parametrize("args, words", [
    (["--eps-grid", "0.1,0"], "every eps must be > 0"),
    (["--methods", "pensia,bogus"], "unknown method"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--pensia-seeds", "-1"], "--pensia-seeds must be >= 0"),
])
def test_cli_refuses_bad_settings_with_exit_2(run_cli, tmp_path, args, words):
    code, _, err = run_cli("study", "width", *args, "--out", tmp_path / "w")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0]
    assert not (tmp_path / "w").exists()
