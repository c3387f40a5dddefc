"""Run folders: settings hash, finished runs, resume after a crash, corrupted chunk files."""

import json
import re

import numpy as np
import pytest

from slth.constructions.pensia import construct
from slth.runs import execute, plan_chunks, rows_per_chunk
from slth.targets import MLP

FAST = {"restarts": 1, "steps": 2}   # the report's gradient ascent: not what these tests check
SETTINGS = {"n": 5, "seed": 7}
CHUNK = 10                            # target weights per chunk: 13 chunks for the target below


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(1)
    return MLP([rng.normal(0, .3, (8, 10)), rng.normal(0, .3, (6, 8)), rng.normal(0, .3, (3, 6))],
               [rng.normal(0, .1, 8), None, rng.normal(0, .1, 3)])


@pytest.fixture(scope="module")
def reference_bytes(target, tmp_path_factory):
    """The ticket pensia.construct builds in one call, as saved bytes."""
    p = tmp_path_factory.mktemp("ref") / "ticket.safetensors"
    construct(target, **SETTINGS).ticket.save(p)
    return p.read_bytes()


class Crash(BaseException):
    """Stands for a kill between two chunks."""


def crash_after(k):
    def progress(msg, done=None, total=None):
        if msg == "SubsetSum chunks" and done is not None and done >= k:
            raise Crash
    return progress


def computed_lines(folder):
    return re.findall(r"chunk (\S+) computed", (folder / "run.log").read_text())


def test_run_folder_holds_settings_report_ticket_sparsity_and_log(target, reference_bytes,
                                                                  tmp_path):
    run = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=CHUNK,
                  evaluate_options=FAST)
    assert run.folder.parent == tmp_path and re.fullmatch(r"pensia-[0-9a-f]{12}", run.folder.name)
    settings = json.loads((run.folder / "settings.json").read_text())
    assert settings["settings"]["n"] == [5, 5, 5] and settings["target_dims"] == [10, 8, 6, 3]
    assert run.ticket_path.read_bytes() == reference_bytes
    sp = json.loads((run.folder / "sparsity_report.json").read_text())
    assert len(sp["layers"]) == 6 and sp["density"] + sp["sparsity"] == pytest.approx(1.0)
    assert all(0 < L["density"] < 1 and L["sparsity"] == pytest.approx(1 - L["density"])
               for L in sp["layers"])
    rep = json.loads((run.folder / "report.json").read_text())
    assert rep["density"] == pytest.approx(sp["density"]) and rep["certified_bound"] > 0
    chunks = plan_chunks(target.dims, rows_per_chunk(target.dims, CHUNK))
    assert rep["run"]["chunks_total"] == len(chunks) == 13
    assert sorted(computed_lines(run.folder)) == sorted(c.name for c in chunks)
    assert not (run.folder / "chunks").exists()   # removed once the ticket is written


def test_finished_run_is_not_recomputed(target, tmp_path):
    first = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, evaluate_options=FAST)
    mtime = first.ticket_path.stat().st_mtime_ns
    again = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, evaluate_options=FAST)
    assert again.folder == first.folder and again.stats["finished_before"]
    assert again.ticket_path.stat().st_mtime_ns == mtime and again.report == first.report
    assert "not recomputed" in (first.folder / "run.log").read_text()


def test_other_settings_get_their_own_folder_and_chunk_size_does_not(target, tmp_path):
    a = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, evaluate_options=FAST)
    b = execute(target, "pensia", {**SETTINGS, "seed": 8}, runs_dir=tmp_path, evaluate_options=FAST)
    c = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=1,
                evaluate_options=FAST)
    assert a.folder != b.folder and c.folder == a.folder and c.stats["finished_before"]


def test_resume_after_crash_between_chunks_loses_nothing_and_repeats_nothing(
        target, reference_bytes, tmp_path):
    with pytest.raises(Crash):
        execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=CHUNK,
                evaluate_options=FAST, progress=crash_after(5))
    folder = next(tmp_path.iterdir())
    assert len(list((folder / "chunks").glob("*.npz"))) == 5
    assert not (folder / "report.json").exists()
    # resumed with another chunk size asked for: the folder's own plan is kept
    run = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=1000,
                  evaluate_options=FAST)
    assert run.folder == folder
    assert (run.stats["chunks_reused"], run.stats["chunks_computed"]) == (5, 13 - 5)
    names = computed_lines(folder)
    assert sorted(names) == sorted(set(names)) and len(names) == 13   # each chunk exactly once
    assert run.ticket_path.read_bytes() == reference_bytes


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _pickle_inside_with_a_valid_checksum(path):
    import hashlib
    import io
    buf = io.BytesIO()
    np.savez(buf, mask=np.array([{"evil": 1}], dtype=object), sums=np.zeros(1))
    data = buf.getvalue()
    path.unlink()
    name = f"{path.name.split('.')[0]}.{hashlib.sha256(data).hexdigest()}.npz"
    (path.parent / name).write_bytes(data)


@pytest.mark.parametrize("damage", [_flip_a_byte, _pickle_inside_with_a_valid_checksum])
def test_corrupted_chunk_file_is_detected_and_recomputed(target, reference_bytes, tmp_path, damage):
    with pytest.raises(Crash):
        execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=CHUNK,
                evaluate_options=FAST, progress=crash_after(4))
    folder = next(tmp_path.iterdir())
    victim = sorted((folder / "chunks").glob("*.npz"))[1]
    damage(victim)
    run = execute(target, "pensia", SETTINGS, runs_dir=tmp_path, chunk_weights=CHUNK,
                  evaluate_options=FAST)
    assert run.stats["chunks_corrupt"] == 1
    assert (run.stats["chunks_reused"], run.stats["chunks_computed"]) == (3, 13 - 3)
    log = (folder / "run.log").read_text()
    assert f"chunk {victim.name.split('.')[0]}: " in log and "corrupt" in log
    assert computed_lines(folder).count(victim.name.split(".")[0]) == 2   # first try, and again
    assert run.ticket_path.read_bytes() == reference_bytes


def test_eps_mode_runs_in_chunks_too_and_gives_the_ticket_of_the_sizes_it_found(target, tmp_path):
    run = execute(target, "pensia", {"eps": 2.0, "seed": 0}, runs_dir=tmp_path,
                  chunk_weights=CHUNK, evaluate_options=FAST)
    assert run.report["certified_bound"] <= 2.0 and (run.folder / "ticket.safetensors").exists()
    ns = run.report["n_per_layer"]
    assert run.stats["chunks_total"] >= 13        # every size tried, chunk by chunk
    p = tmp_path / "by_n.safetensors"
    construct(target, n=ns, seed=0).ticket.save(p)
    assert run.ticket_path.read_bytes() != b"" and p.exists()
    from slth.ticket import load_ticket
    a, b = load_ticket(run.ticket_path), load_ticket(p)
    for x, y in zip(a.layers, b.layers):      # the same G and masks as building at those sizes
        assert np.array_equal(x.weight, y.weight) and np.array_equal(x.mask, y.mask)


def test_runs_list_shows_finished_and_interrupted_runs(target, tmp_path, run_cli):
    execute(target, "pensia", SETTINGS, runs_dir=tmp_path, evaluate_options=FAST)
    with pytest.raises(Crash):
        execute(target, "pensia", {**SETTINGS, "seed": 9}, runs_dir=tmp_path, chunk_weights=CHUNK,
                evaluate_options=FAST, progress=crash_after(2))
    code, out, err = run_cli("runs", "list", "--runs-dir", tmp_path)
    assert code == 0, err
    assert "finished" in out and "2/13 chunks" in out


def test_run_report_matches_evaluating_the_ticket_held_in_memory(target, tmp_path, monkeypatch):
    """A run never holds G in memory (tasks write its rows, read its effective form and run it
    literally, row by row); its figures are those of the whole ticket evaluated at once."""
    import slth.data
    from slth.certify import Domain
    from slth.data import Dataset
    from slth.report import evaluate

    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (300, 10)).astype(np.float32)
    toy = Dataset("toy", x, np.zeros(300, int), x, target.forward(x.astype(np.float64)).argmax(1),
                  (1, 1, 10))
    monkeypatch.setattr(slth.data, "load_dataset", lambda name, data_dir=None: toy)
    con = construct(target, **SETTINGS)
    for data in (None, toy):
        run = execute(target, "pensia", SETTINGS, runs_dir=tmp_path / str(data is None),
                      chunk_weights=CHUNK, data=None if data is None else "toy",
                      evaluate_options=FAST)
        whole = evaluate(target, con, Domain(), data, seed=SETTINGS["seed"], **FAST)
        for k in ("certified_bound", "per_layer_deviation_bound", "density", "random_params",
                  "active_params", "width_per_layer", "max_weight_error"):
            assert run.report[k] == whole[k], k
        for k in ("adversarial_max_error", "empirical_max_error", "ticket_accuracy", "agreement"):
            assert (run.report[k] is None) == (whole[k] is None), k
            assert whole[k] is None or run.report[k] == pytest.approx(whole[k], rel=1e-9,
                                                                      abs=1e-12), k
    assert run.report["literal_check_points"] == 300
    assert run.report["literal_check_max_diff"] < 1e-12
    assert json.loads((run.folder / "sparsity_report.json").read_text()) == \
        con.ticket.sparsity_report()
