"""Constructions on Dask: identical tickets whatever the workers, resume across a crash, and a
clear, fast failure for an unreachable scheduler."""

import json
import logging
import socket
import time

import numpy as np
import pytest

from slth.constructions.pensia import construct
from slth.runs import execute
from slth.targets import MLP

FAST = {"restarts": 1, "steps": 2}


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded workers inside this process."""
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c:
        yield c


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(2)
    return MLP([rng.normal(0, .3, (9, 12)), rng.normal(0, .3, (4, 9))],
               [rng.normal(0, .1, 9), None])


@pytest.mark.parametrize("prune_dead", [False, True])
def test_distributed_and_local_runs_give_identical_tickets(cluster, target, tmp_path, prune_dead):
    settings = {"n": [6, 4], "seed": 3, "prune_dead": prune_dead}
    construct(target, **settings).ticket.save(tmp_path / "one_call.safetensors")
    local = execute(target, "pensia", settings, runs_dir=tmp_path / "local", chunk_weights=10 ** 6,
                    evaluate_options=FAST)
    dist = execute(target, "pensia", settings, runs_dir=tmp_path / "dask", chunk_weights=12,
                   scheduler=cluster.scheduler_address, evaluate_options=FAST)
    assert dist.stats["chunks_computed"] == dist.stats["chunks_total"] == 9 + 2
    assert local.stats["chunks_total"] == 2
    one_call = (tmp_path / "one_call.safetensors").read_bytes()
    assert dist.ticket_path.read_bytes() == local.ticket_path.read_bytes() == one_call
    assert dist.folder.name == local.folder.name    # same settings, same hash
    log = (dist.folder / "run.log").read_text()
    assert "Dask cluster with 2 workers" in log and "on this process" not in log


def test_run_crashed_on_dask_resumes_in_one_process_identically(cluster, target, tmp_path):
    settings = {"n": 5, "seed": 1}
    construct(target, **settings).ticket.save(tmp_path / "one_call.safetensors")

    def crash(msg, done=None, total=None):
        if msg == "SubsetSum chunks" and done is not None and done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(target, "pensia", settings, runs_dir=tmp_path, chunk_weights=12,
                scheduler=cluster.scheduler_address, evaluate_options=FAST, progress=crash)
    run = execute(target, "pensia", settings, runs_dir=tmp_path, evaluate_options=FAST)
    assert (run.stats["chunks_reused"], run.stats["chunks_computed"]) == (3, 11 - 3)
    assert run.ticket_path.read_bytes() == (tmp_path / "one_call.safetensors").read_bytes()
    assert "stopped: KeyboardInterrupt" in (run.folder / "run.log").read_text()


def test_unreachable_scheduler_fails_fast_with_one_line_and_exit_2(run_cli, target, tmp_path):
    target.save(tmp_path / "t.safetensors")
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code, out, err = run_cli("construct", tmp_path / "t.safetensors", "--n", "4", "--scheduler",
                             f"tcp://127.0.0.1:{port}", "--runs-dir", tmp_path / "runs")
    assert time.perf_counter() - t0 < 5
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slth: error: cannot reach a Dask scheduler")
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_construct_cli_with_local_workers_builds_a_run_folder_once(run_cli, target, tmp_path):
    target.save(tmp_path / "t.safetensors")
    args = ("construct", tmp_path / "t.safetensors", "--n", "4", "--workers", "2",
            "--runs-dir", tmp_path / "runs")
    code, out, err = run_cli(*args)
    assert code == 0, err
    folder = next((tmp_path / "runs").iterdir())
    assert {"settings.json", "report.json", "ticket.safetensors", "sparsity_report.json",
            "run.log"} <= {p.name for p in folder.iterdir()}
    rep = json.loads((folder / "report.json").read_text())
    assert rep["run"]["ran_on"] == "2 local Dask workers"
    code, out, err = run_cli(*args, "--out", tmp_path / "copy")
    assert code == 0, err
    assert "not recomputed" in out
    assert (tmp_path / "copy" / "ticket.safetensors").read_bytes() == \
        (folder / "ticket.safetensors").read_bytes()


def test_a_lost_worker_is_replaced_by_the_others_and_the_ticket_is_unchanged(target, tmp_path):
    from dask.distributed import LocalCluster
    settings = {"n": 5, "seed": 4}
    construct(target, **settings).ticket.save(tmp_path / "one_call.safetensors")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cl:
        victim = next(iter(cl.workers.values()))

        def lose_a_worker(msg, done=None, total=None):   # its results and shared data go with it
            if msg == "SubsetSum chunks" and done == 2:
                cl.sync(victim.close)

        run = execute(target, "pensia", settings, runs_dir=tmp_path, chunk_weights=12,
                      scheduler=cl.scheduler_address, evaluate_options=FAST,
                      progress=lose_a_worker)
        assert len(cl.scheduler_info["workers"]) == 1
    assert run.stats["chunks_computed"] == run.stats["chunks_total"] == 11
    assert run.ticket_path.read_bytes() == (tmp_path / "one_call.safetensors").read_bytes()
