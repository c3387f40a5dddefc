import os
import tempfile

import pytest

os.environ.setdefault("SLTH_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "slth"))
# run folders of CLI calls without --runs-dir: a fresh folder per test session, never ./runs
os.environ["SLTH_RUNS_DIR"] = tempfile.mkdtemp(prefix="slth-test-runs-")


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    from slth.cli import main

    def _run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """Run folders of CLI calls without --runs-dir go to a temporary folder, not ./runs."""
    monkeypatch.setenv("SLTH_RUNS_DIR", str(tmp_path / "runs"))
