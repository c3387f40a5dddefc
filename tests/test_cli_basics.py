"""CLI basics: --help everywhere, one-line errors with exit status 2, the subsetsum benchmark."""

import json
import pickle

import pytest
import torch
from torch import nn


def test_every_command_has_help(run_cli):
    import click

    from slth.cli import app

    def walk(cmd, path):
        yield path
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])

    for path in walk(app, []):
        code, out, err = run_cli(*path, "--help")
        assert code == 0 and "Usage:" in out, path


@pytest.mark.parametrize("args,match", [
    (["bench", "subsetsum", "--eps", "abc"], "--eps"),
    (["bench", "subsetsum", "--eps", "-1"], "--eps must be > 0"),
    (["bench", "subsetsum", "--objective", "fast"], "--objective"),
    (["bench", "subsetsum", "--compare", "cplex"], "--compare"),
    (["bench", "subsetsum", "--target", "/nonexistent.pt"], "not found"),
    (["bench", "subsetsum", "--no-such-flag"], "no-such-flag"),
    (["no-such-command"], "no-such-command"),
])
def test_cli_errors_are_one_line_with_status_2(run_cli, args, match):
    code, out, err = run_cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slth: error:") and match in lines[0]
    assert "Traceback" not in err + out


def test_cli_refuses_non_state_dict_and_code_running_pickles(run_cli, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps(Evil()))
    q = tmp_path / "list.pt"
    torch.save([1, 2], q)
    for f in (p, q):
        code, out, err = run_cli("bench", "subsetsum", "--target", f)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "pwned" not in out


def test_bench_subsetsum_writes_the_documented_figures(run_cli, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    torch.save(net.state_dict(), tmp_path / "t.pt")
    code, out, err = run_cli("bench", "subsetsum", "--target", tmp_path / "t.pt", "--n", 12,
                             "--compare", "highs", "--compare-sample", 3,
                             "--json", tmp_path / "b.json")
    assert code == 0, err
    r = json.loads((tmp_path / "b.json").read_text())
    for key in ("instances", "n", "objective", "eps", "seconds", "per_instance_us",
                "mean_abs_error", "max_abs_error", "coefficients_total", "coefficients_kept",
                "all_within_eps", "threads", "peak_rss_mb"):
        assert key in r, key
    assert r["instances"] == 20 * 8 + 8 * 3 and r["coefficients_total"] == r["instances"] * 12
    b = r["baselines"]["highs"]
    for key in ("per_instance_s", "mean_abs_error", "max_abs_error", "speedup", "worse_than_ours"):
        assert key in b, key
    assert b["better_than_ours"] == 0
