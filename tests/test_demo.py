"""``slth demo``: every step runs, the numbers hold together, the report renders in a browser."""

import json
import os
import re
import shutil
import subprocess

import pytest


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from slth.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_writes_report_summary_target_and_ticket(demo_dir):
    for name in ("report.html", "summary.json", "target.safetensors", "pensia-ticket.safetensors",
                 "compare.png", "eps.png", "search/fc2.png"):
        assert (demo_dir / name).is_file(), name
    assert not list(demo_dir.parent.glob(".out.*"))  # no temporary folder left behind


def test_demo_tickets_meet_eps_and_their_bound_holds(demo_dir):
    sm = json.loads((demo_dir / "summary.json").read_text())
    rows = {r["method"]: r for r in sm["constructions"]}
    assert set(rows) == {"pensia", "orseau", "malach"}
    for r in rows.values():
        assert r["certified_bound"] <= sm["settings"]["eps"]
        assert r["max_error_found"] <= r["certified_bound"]
        assert 0 < r["density"] < 1 and abs(r["density"] + r["sparsity"] - 1) < 1e-12
    assert sm["target"]["accuracy"] > 0.8
    # the ticket file is the Pensia row's ticket
    from slth.ticket import load_ticket
    t = load_ticket(demo_dir / "pensia-ticket.safetensors")
    assert t.random_params == rows["pensia"]["random_params"]
    assert t.active_params == rows["pensia"]["active_params"]


def test_demo_measures_width_search_and_planted_recovery(demo_dir):
    sm = json.loads((demo_dir / "summary.json").read_text())
    w = sm["width"]["methods"]
    assert set(w) == {"pensia", "orseau", "malach"}
    for m, r in w.items():
        sizes = [k for k in r["size"] if k is not None]
        assert sizes == sorted(sizes), m  # smaller eps never needs a smaller G
    structures = {r["structure"] for r in sm["search_runs"]}
    assert structures == {"trained", "redundant-linear", "redundant-relu", "wide"}
    for r in sm["plant"]["runs"]:
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1


def test_demo_report_is_self_contained(demo_dir):
    html = (demo_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # nothing fetched from elsewhere: no external scripts, styles or images
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)
    for section in ("Every construction", "How wide must G be", "edge-popup", "planted"):
        assert section in html


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("SLTH_REQUIRE_CHROMIUM"):
        pytest.fail("SLTH_REQUIRE_CHROMIUM is set but no chromium is installed "
                    "(apt-get install -y chromium)")
    pytest.skip("headless Chromium not installed (apt-get install -y chromium)")


def test_demo_report_renders_in_headless_chromium(demo_dir, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2400",
           (demo_dir / "report.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1200)
    # rendered, not blank: dark text on the page and coloured plot pixels (the embedded PNGs)
    gray = img.mean(axis=2)
    assert (gray < 0.3).mean() > 0.002
    coloured = (img.max(axis=2) - img.min(axis=2)) > 0.3
    assert coloured.mean() > 0.001
    assert np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0).shape[0] > 200
