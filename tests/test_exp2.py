"""Pensia et al.'s Experiment 2 sweep: resumable, deterministic, plots, bad input."""

import json
from dataclasses import replace

import pytest

from slth.data import load_dataset
from slth.experiments import exp2
from slth.experiments.exp2 import Exp2Settings, run_key, sweep

TIMING = ("seconds", "samples_per_s")
GRID = [0.5, 0.1]


@pytest.fixture(scope="module")
def digits():
    """A slice of digits (300 train / 100 test images): the sweep logic, not the accuracy."""
    d = load_dataset("digits")
    return replace(d, x_train=d.x_train[:300], y_train=d.y_train[:300], x_test=d.x_test[:100],
                   y_test=d.y_test[:100])


def _settings():
    return Exp2Settings(data="digits", epochs=1, hidden=8, redundancy=2, seed=3)


def _strip(state):
    return {k: {f: v for f, v in r.items() if f not in TIMING} for k, r in state["runs"].items()}


def test_resume_after_an_interruption_gives_the_uninterrupted_results(digits, tmp_path):
    full = sweep(digits, _settings(), ["fc2"], GRID, tmp_path / "full")
    assert len(full["runs"]) == 1 + 3 * len(GRID)

    done = []

    def kill_after_three(key, rec):
        done.append(key)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(digits, _settings(), ["fc2"], GRID, tmp_path / "cut", on_run=kill_after_three)
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert sorted(saved["runs"]) == sorted(done)

    redone = []
    resumed = sweep(digits, _settings(), ["fc2"], GRID, tmp_path / "cut",
                    on_run=lambda key, rec: redone.append(key))
    assert not set(redone) & set(done) and len(redone) == len(full["runs"]) - 3
    assert _strip(resumed) == _strip(full)
    assert (tmp_path / "cut" / "fc2.png").stat().st_size > 0


def test_finished_runs_are_read_back_not_redone(digits, tmp_path, monkeypatch):
    sweep(digits, _settings(), ["fc2"], [0.5], tmp_path)

    def no_training(*a, **k):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(exp2, "one_run", no_training)
    state = sweep(digits, _settings(), ["fc2"], [0.5], tmp_path)
    assert run_key("fc2", "wide", 0.5) in state["runs"]


def test_runs_record_density_sparsity_and_remaining_weights(digits, tmp_path):
    state = sweep(digits, _settings(), ["fc2"], [0.25], tmp_path)
    r = state["runs"][run_key("fc2", "redundant-linear", 0.25)]
    assert r["density"] == 0.25 and r["sparsity"] == 0.75
    assert r["params"] == 2 * (64 * 8 + 64) + 2 * (8 * 10 + 8)
    assert abs(r["remaining_params"] - 0.25 * r["params"]) <= 4
    base = state["runs"][run_key("fc2", "trained", None)]
    assert base["remaining_params"] == base["params"] == 64 * 8 + 8 * 10
    w = state["runs"][run_key("fc2", "wide", 0.25)]
    assert abs(w["params"] - r["params"]) <= 74  # matched parameter count (one hidden unit)


def test_resuming_with_other_settings_is_refused(digits, tmp_path):
    sweep(digits, _settings(), ["fc2"], [0.5], tmp_path)
    other = Exp2Settings(data="digits", epochs=2, hidden=8, redundancy=2, seed=3)
    with pytest.raises(ValueError, match="other settings"):
        sweep(digits, other, ["fc2"], [0.5], tmp_path)


def test_reproduce_cli_writes_results_and_one_plot_per_model(run_cli, tmp_path):
    out = tmp_path / "exp2"
    code, stdout, err = run_cli("reproduce", "pensia-exp2", "--data", "digits", "--models",
                                "fc2,fc4", "--density-grid", "0.5", "--epochs", "1",
                                "--hidden", "8", "--redundancy", "2", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert {r["structure"] for r in res["runs"].values()} == {"trained", "redundant-linear",
                                                             "redundant-relu", "wide"}
    assert (out / "fc2.png").exists() and (out / "fc4.png").exists()
    assert "best accuracy" in stdout


@pytest.mark.parametrize("args,msg", [
    (["--density-grid", "0.5,0"], "density"),
    (["--density-grid", "1.01"], "density"),
    (["--density-grid", "a,b"], "density-grid"),
    (["--models", "fc2,vgg"], "vgg"),
    (["--data", "imagenet"], "imagenet"),
    (["--data", "mnist", "--data-dir", "NOPE"], "mnist"),
])
def test_reproduce_cli_refuses_bad_input_without_writing(run_cli, tmp_path, args, msg):
    args = [a.replace("NOPE", str(tmp_path / "nope")) for a in args]
    code, _, err = run_cli("reproduce", "pensia-exp2", "--epochs", "1", *args, "--out", tmp_path / "o")
    assert code == 2
    assert err.startswith("slth: error:") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
