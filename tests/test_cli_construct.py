"""``slth train`` / ``slth construct`` end to end, and their refusals of bad input."""

import json
import pickle

import pytest
import torch

REPORT_KEYS = ("method", "eps", "n_per_layer", "theory_n_per_layer", "domain", "target_params",
               "random_params", "active_params", "density", "overparam_factor", "width_per_layer",
               "max_weight_error", "certified_bound", "empirical_max_error",
               "adversarial_max_error", "target_accuracy", "ticket_accuracy", "agreement",
               "seconds", "peak_rss_mb", "seed")


@pytest.fixture(scope="module")
def digits_target(tmp_path_factory):
    from slth.cli import main

    p = tmp_path_factory.mktemp("t") / "digits.safetensors"
    assert main(["train", "--data", "digits", "--hidden", "16", "--epochs", "3", "--lr", "0.05",
                 "--bias", "--out", str(p)]) == 0
    return p


def test_train_reports_accuracy_and_writes_a_loadable_target(run_cli, tmp_path):
    code, out, err = run_cli("train", "--data", "digits", "--hidden", "12,8", "--epochs", "2",
                             "--out", tmp_path / "t.pt")
    assert code == 0, err
    assert "test accuracy" in out
    from slth.targets import load_target
    assert load_target(tmp_path / "t.pt").dims == [64, 12, 8, 10]


def test_construct_writes_ticket_and_report(run_cli, digits_target, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("construct", digits_target, "--method", "pensia", "--n", "8",
                                "--data", "digits", "--out", out, "--compact")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    for k in REPORT_KEYS:
        assert k in rep, k
    assert rep["n_per_layer"] == [8, 8]
    assert rep["density"] == pytest.approx(rep["active_params"] / rep["random_params"])
    assert rep["empirical_max_error"] <= rep["certified_bound"]
    assert rep["adversarial_max_error"] <= rep["certified_bound"]
    assert (out / "ticket.safetensors").exists() and (out / "ticket.compact.safetensors").exists()
    assert json.loads((out / "sparsity_report.json").read_text())["density"] == pytest.approx(rep["density"])
    assert "certified bound" in stdout


def test_construct_eps_mode_meets_eps(run_cli, digits_target, tmp_path):
    code, _, err = run_cli("construct", digits_target, "--eps", "0.05", "--domain", "box",
                           "--out", tmp_path / "r")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["certified_bound"] <= 0.05 and rep["eps"] == 0.05


def _evil(p):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    p.write_bytes(pickle.dumps(Evil()))


@pytest.mark.parametrize("make,args,match", [
    (lambda p: torch.save({"c.weight": torch.ones(2, 1, 3, 3)}, p), ["--n", "4"], "only Linear"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3), "b.weight": torch.ones(2, 5)}, p), ["--n", "4"], "must chain"),
    (lambda p: torch.save({"a.weight": torch.full((4, 3), float("nan"))}, p), ["--n", "4"], "NaN"),
    (_evil, ["--n", "4"], "run code|not a torch state_dict"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), ["--eps", "0"], "--eps must be > 0"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), ["--eps", "-1"], "--eps must be > 0"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), [], "exactly one of"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), ["--n", "4", "--eps", "0.1"], "exactly one of"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), ["--n", "0"], ">= 1"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3)}, p), ["--n", "4", "--data", "digits"], "64 inputs"),
    (lambda p: None, ["--n", "4"], "not found"),
])
def test_construct_bad_input_one_line_exit_2_no_output(run_cli, tmp_path, make, args, match):
    p = tmp_path / "target.pt"
    make(p)
    out = tmp_path / "out"
    code, stdout, err = run_cli("construct", p, *args, "--out", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slth: error:"), err
    assert __import__("re").search(match, lines[0]), lines[0]
    assert "Traceback" not in err and "pwned" not in stdout
    assert not out.exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".out")]
