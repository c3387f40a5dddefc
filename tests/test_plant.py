"""Planted tickets: ``slth plant`` searches a constructed G and scores the planted mask."""

import json

import numpy as np
import pytest

from slth.experiments.plant import precision_recall
from slth.ticket import Layer, Ticket


def _ticket(masks):
    return Ticket([Layer(np.ones(np.shape(m), np.float32), np.array(m, bool)) for m in masks])


def test_precision_and_recall_count_kept_planted_weights():
    planted = _ticket([[[1, 1, 0, 0]], [[1], [0]]])
    found = _ticket([[[1, 0, 1, 0]], [[1], [1]]])
    pr = precision_recall(found, planted)
    assert (pr["kept"], pr["planted"], pr["both"]) == (4, 3, 2)
    assert pr["precision"] == 0.5 and pr["recall"] == pytest.approx(2 / 3)
    assert [L["precision"] for L in pr["layers"]] == [0.5, 0.5]
    assert precision_recall(planted, planted)["recall"] == 1.0


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    """A small target trained on digits and Pensia's ticket for it, as 'slth construct' writes."""
    from slth.cli import main

    d = tmp_path_factory.mktemp("plant")
    assert main(["train", "--data", "digits", "--hidden", "6", "--epochs", "2", "--lr", "0.03",
                 "--out", str(d / "t.safetensors")]) == 0
    assert main(["construct", str(d / "t.safetensors"), "--method", "pensia", "--n", "3",
                 "--data", "digits", "--out", str(d / "T")]) == 0
    return d


def test_plant_cli_reports_recovery_accuracy_and_error(run_cli, planted_dir, tmp_path):
    code, stdout, err = run_cli("plant", planted_dir / "T", "--epochs-grid", "1,2",
                                "--density-grid", "0.1,0.3", "--out", tmp_path / "p")
    assert code == 0, err
    res = json.loads((tmp_path / "p" / "plant.json").read_text())
    assert [(r["density"], r["epochs"]) for r in res["runs"]] == [(0.1, 1), (0.1, 2), (0.3, 1), (0.3, 2)]
    rep = json.loads((planted_dir / "T" / "report.json").read_text())
    p = res["planted"]
    assert p["accuracy"] == pytest.approx(rep["ticket_accuracy"])
    assert p["certified_bound"] == rep["certified_bound"]
    for r in res["runs"]:
        assert r["kept"] == round(r["density"] * p["params"])
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert r["recall"] * p["active_params"] == pytest.approx(r["precision"] * r["kept"])
        assert r["error_max"] >= r["error_mean"] >= 0 and 0 <= r["accuracy"] <= 1
    assert "precision" in stdout and "chance" in stdout


def test_plant_cli_refuses_a_missing_ticket_or_target(run_cli, planted_dir, tmp_path):
    code, _, err = run_cli("plant", tmp_path / "none", "--out", tmp_path / "p")
    assert code == 2 and "not found" in err
    code, _, err = run_cli("plant", planted_dir / "T", "--target", tmp_path / "none.safetensors",
                           "--out", tmp_path / "p")
    assert code == 2 and "not found" in err
    code, _, err = run_cli("plant", planted_dir / "T", "--density-grid", "0", "--out", tmp_path / "p")
    assert code == 2 and "density" in err
    assert not (tmp_path / "p").exists()
