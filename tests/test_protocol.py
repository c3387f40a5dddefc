"""The construction interface: a method registered anywhere runs through construct, run folders
(crash and resume), Dask, compare and the width study; every method gives the same ticket
whatever the chunks and workers; settings are validated in one line."""

import json
import logging
import re
from dataclasses import dataclass

import numpy as np
import pytest

from slth.certify import Domain, bound_details
from slth.constructions import construct, get, names, register, unregister
from slth.constructions.base import Size, check, option
from slth.constructions.blocks import BlockMethod
from slth.runs import execute
from slth.targets import MLP

FAST = {"restarts": 1, "steps": 2}


@dataclass(frozen=True)
class GreedySettings:
    limit: float = option(1.0, "toy: largest |coefficient| a weight may take, relative to it.")

    def __post_init__(self):
        check(0 < self.limit <= 1, f"--limit must be in (0, 1], got {self.limit}")


class Greedy(BlockMethod):
    """A toy mask rule on Pensia's layout: same-sign coefficients, largest first, while they fit."""

    Settings = GreedySettings
    size = Size("n", "n_per_layer", 1, 64, 4, "block size per half")
    work = "greedy"

    def choose(self, layer, coef, target, threads=None):
        mask = np.zeros(coef.shape, bool)
        rest = np.abs(target).astype(np.float64)
        for t in np.argsort(-np.abs(coef), axis=1, kind="stable").T:
            p = coef[np.arange(len(coef)), t]
            take = (np.sign(p) == np.sign(target)) & (np.abs(p) <= rest) & (
                np.abs(p) <= self.settings.limit * np.abs(target) + 1e-300)
            mask[np.arange(len(coef)), t] = take
            rest -= np.where(take, np.abs(p), 0.0)
        return mask, np.where(mask, coef, 0.0).sum(1)


@pytest.fixture
def toy():
    register("toy-greedy", Greedy)
    yield "toy-greedy"
    unregister("toy-greedy")


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(3)
    return MLP([rng.uniform(-.4, .4, (7, 9)), rng.uniform(-.4, .4, (3, 7))],
               [rng.normal(0, .1, 7), None])


SIZES = {"pensia": 5, "orseau": 12, "orseau-uniform": 9, "malach": 40, "toy-greedy": 6}


class Crash(BaseException):
    pass


def crash_after(k):
    def progress(msg, done=None, total=None):
        if msg.endswith(" chunks") and done is not None and done >= k:
            raise Crash
    return progress


def one_call_bytes(target, method, n, tmp_path, seed=2):
    p = tmp_path / f"{method}-one-call.safetensors"
    construct(target, method=method, n=n, seed=seed).ticket.save(p)
    return p.read_bytes()


def test_a_registered_method_is_available_by_name(toy, target):
    assert toy in names()
    con = construct(target, method=toy, n=6, seed=1)
    eff = con.ticket.effective()
    assert bound_details(target, eff, Domain())["certified_bound"] > 0
    assert con.info["method"] == toy and con.info["n_per_layer"] == [6, 6]
    x = np.random.default_rng(0).uniform(0, 1, (20, 9))
    from slth.certify import effective_forward
    import torch
    np.testing.assert_allclose(effective_forward(target.dims, eff, torch.from_numpy(x)).numpy(),
                               con.ticket.forward(x), atol=1e-12)


@pytest.mark.parametrize("method", ["pensia", "orseau", "malach", "toy-greedy"])
def test_chunked_runs_resume_after_a_crash_and_give_the_one_call_ticket(method, toy, target,
                                                                        tmp_path):
    n = SIZES[method]
    ref = one_call_bytes(target, method, n, tmp_path)
    settings = {"n": n, "seed": 2}
    with pytest.raises(Crash):
        execute(target, method, settings, runs_dir=tmp_path / "runs", chunk_weights=9,
                evaluate_options=FAST, progress=crash_after(3))
    folder = next((tmp_path / "runs").iterdir())
    assert len(list((folder / "chunks").glob("*.npz"))) == 3
    run = execute(target, method, settings, runs_dir=tmp_path / "runs", chunk_weights=1000,
                  evaluate_options=FAST)
    assert run.folder == folder and run.stats["chunks_total"] == 7 + 3
    assert (run.stats["chunks_reused"], run.stats["chunks_computed"]) == (3, 10 - 3)
    names_ = re.findall(r"chunk (\S+) computed", (folder / "run.log").read_text())
    assert len(names_) == len(set(names_)) == 10          # each chunk solved exactly once
    assert run.ticket_path.read_bytes() == ref
    assert run.report["bound_holds"]


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c:
        yield c


@pytest.mark.parametrize("method", ["orseau", "malach", "toy-greedy"])
def test_dask_gives_the_same_ticket_as_this_process(method, toy, target, cluster, tmp_path):
    n = SIZES[method]
    settings = {"n": n, "seed": 2}
    local = execute(target, method, settings, runs_dir=tmp_path / "a", chunk_weights=10 ** 6,
                    evaluate_options=FAST)
    dist = execute(target, method, settings, runs_dir=tmp_path / "b", chunk_weights=9,
                   scheduler=cluster.scheduler_address, evaluate_options=FAST)
    assert dist.stats["chunks_total"] == 10 and local.stats["chunks_total"] == 2
    assert dist.ticket_path.read_bytes() == local.ticket_path.read_bytes() == \
        one_call_bytes(target, method, n, tmp_path)
    for k in ("certified_bound", "random_params", "active_params", "max_weight_error"):
        assert dist.report[k] == local.report[k], k


@pytest.mark.parametrize("method, eps", [("pensia", 0.05), ("orseau", 0.05), ("toy-greedy", 0.2)])
def test_eps_runs_resume_in_the_middle_of_the_size_search(method, eps, toy, target, tmp_path):
    settings = {"eps": eps, "seed": 1}
    with pytest.raises(Crash):
        execute(target, method, settings, runs_dir=tmp_path / "r", chunk_weights=9,
                evaluate_options=FAST, progress=crash_after(4))
    run = execute(target, method, settings, runs_dir=tmp_path / "r", chunk_weights=9,
                  evaluate_options=FAST)
    assert run.stats["chunks_reused"] >= 4 and run.report["certified_bound"] <= eps
    again = construct(target, method=method, eps=eps, seed=1)
    assert again.info["n_per_layer"] == run.report["n_per_layer"]
    p = tmp_path / "mem.safetensors"
    again.ticket.save(p)
    assert p.read_bytes() == run.ticket_path.read_bytes()


def test_compare_and_the_width_study_pick_up_a_registered_method(toy, target, tmp_path, run_cli):
    from slth.experiments import width as W

    target.save(tmp_path / "t.safetensors")
    code, out, err = run_cli("compare", tmp_path / "t.safetensors", "--eps", "0.1",
                             "--methods", f"pensia,{toy}", "--limit", "0.9",
                             "--out", tmp_path / "cmp")
    assert code == 0, err
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["pensia", toy]
    assert rows[1]["certified_bound"] <= 0.1 and rows[1]["report"]["limit"] == 0.9
    s = W.Settings(methods=[toy], eps_grid=[0.3, 0.15], seeds=2, trained=False, sweep_d=[4],
                   sweep_depth=[1], workers=1)
    res = W.run(s)
    sizes = res["eps"]["assumption"][toy]["size"]
    assert all(k is not None for k in sizes) and sizes[0] <= sizes[1]


def test_cli_construct_takes_a_registered_methods_options(toy, target, tmp_path, run_cli):
    target.save(tmp_path / "t.safetensors")
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", toy, "--n", "5",
                             "--limit", "0.7", "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    rep = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert rep["method"] == toy and rep["limit"] == 0.7
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--method", toy, "--n", "5",
                             "--limit", "2", "--runs-dir", tmp_path / "runs2")
    assert code == 2 and err.strip() == "slth: error: --limit must be in (0, 1], got 2.0"


@pytest.mark.parametrize("args, words", [
    (["--method", "pensia", "--gamma", "1.5"], "--gamma is an option of orseau"),
    (["--method", "orseau", "--gamma", "2"], "--gamma must be in (1, phi"),
    (["--method", "orseau", "--gamma", "x"], "--gamma must be phi, 3/2 or a number"),
    (["--method", "orseau", "--delta", "1.5"], "--delta must be in (0, 1)"),
    (["--method", "orseau", "--w-min", "0.5", "--w-max", "0.1"], "hyperbolic range"),
    (["--method", "malach", "--delta", "0"], "--delta must be in (0, 1)"),
    (["--method", "malach", "--max-params", "0"], "--max-params must be >= 1"),
    (["--method", "malach", "--prune-dead"], "--prune-dead is an option of pensia"),
    (["--method", "pensia", "--n", "41"], "between 1 and 40"),
    (["--method", "pensia", "--n", "5,5,5"], "3 sizes for a target of 2 layers"),
    (["--method", "nope"], "Invalid value for '--method'"),
])
def test_bad_settings_give_one_line_and_exit_2(run_cli, target, tmp_path, args, words):
    target.save(tmp_path / "t.safetensors")
    if "--n" not in args:
        args = args + ["--n", "5"]
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", *args,
                             "--runs-dir", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("slth: error:"), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_every_builtin_method_declares_its_settings_and_size():
    for name in ("pensia", "orseau", "orseau-uniform", "malach"):
        m = get(name)
        assert m.size.key in ("n_per_layer", "samples_per_layer") and m.size.lo >= 1
        assert isinstance(m.options(), dict)
