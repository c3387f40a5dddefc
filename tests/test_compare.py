"""``slth compare``: every method on one target, one table, one plot."""

import json

import numpy as np
import pytest

from slth.targets import MLP


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def target(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "t.safetensors"
    MLP([rng.uniform(-0.5, 0.5, (3, 4)), rng.uniform(-0.5, 0.5, (2, 3))], [None, None]).save(p)
    return p


def test_compare_writes_one_table_and_one_plot_and_says_how_much_more_malach_needs(run_cli, target, tmp_path):
    out = tmp_path / "c"
    code, stdout, err = run_cli("compare", target, "--eps", "0.01", "--domain", "ball", "--out", out)
    assert code == 0, err
    res = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"pensia", "orseau", "orseau-uniform", "malach"}
    for r in rows.values():
        assert r["certified_bound"] <= 0.01
        assert r["max_error_found"] <= r["certified_bound"]
        assert r["density"] == pytest.approx(r["active_params"] / r["random_params"])
        assert r["overparam_factor"] == pytest.approx(r["random_params"] / res["target_params"])
    for m in ("pensia", "orseau"):
        v = res["malach_vs"][m]
        assert v["ratio"] == pytest.approx(rows["malach"]["random_params"] / rows[m]["random_params"])
        assert v["ratio"] > 1 and not v["at_least"]
    assert "Malach needs" in stdout and "Malach needs" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 1000


def test_a_malach_that_would_not_fit_is_reported_with_what_it_needs(run_cli, target, tmp_path):
    out = tmp_path / "c"
    code, stdout, err = run_cli("compare", target, "--eps", "1e-4", "--methods", "pensia,malach",
                                "--max-params", "50000", "--out", out)
    assert code == 0, err
    res = json.loads((out / "compare.json").read_text())
    mal = next(r for r in res["rows"] if r["method"] == "malach")
    assert "refused" in mal and mal["random_params_needed"] > 50_000
    assert res["malach_vs"]["pensia"]["at_least"]
    assert "at least" in stdout


@pytest.mark.parametrize("args, words", [
    (["--eps", "0"], "--eps must be > 0"),
    (["--eps", "0.1", "--methods", "nope"], "--methods"),
])
def test_bad_settings_exit_2_with_one_line(run_cli, target, tmp_path, args, words):
    code, _, err = run_cli("compare", target, *args, "--out", tmp_path / "c")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0]
    assert not (tmp_path / "c").exists()
