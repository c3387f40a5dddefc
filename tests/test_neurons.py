"""Malach's note, measured: weight pruning approximates one ReLU neuron, neuron pruning cannot."""

import json

from slth.experiments import neurons as N


def test_weight_pruning_beats_neuron_pruning_in_high_dimension():
    e = N.errors(d=16, N=512, seed=0, test_points=512)
    assert e["pensia"] < 0.01 and e["malach"] < 0.1
    assert e["random_features"] > 0.15                 # the best any neuron subnetwork can do
    assert e["neuron_pruning"] >= e["random_features"] - 1e-9


def test_in_low_dimension_random_features_do_fine():
    assert N.errors(d=2, N=256, seed=0, test_points=512)["random_features"] < 0.01


def test_errors_are_deterministic():
    assert N.errors(4, 64, 1, 256) == N.errors(4, 64, 1, 256)


def test_cli_writes_json_and_plot(run_cli, tmp_path):
    out = tmp_path / "n"
    code, stdout, err = run_cli("study", "neurons", "--dims", "2,8", "--widths", "16,64",
                                "--seeds", "1", "--out", out)
    assert code == 0, err
    res = json.loads((out / "neurons.json").read_text())
    assert set(res["width_needed"]) == set(N.METHODS)
    assert (out / "neurons.png").stat().st_size > 1000
    code, _, err = run_cli("study", "neurons", "--dims", "0", "--out", tmp_path / "m")
    assert code == 2 and "--dims" in err
