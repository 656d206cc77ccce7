"""deconvbench report: sections, figures, gallery, failures, bad input, no global state."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deconvbench.harness import run_method
from deconvbench.methods import load_method
from deconvbench.report.collect import (
    ReportError,
    bias_series,
    load_sections,
    metric_series,
    pareto_front,
    speed_points,
)
from deconvbench.report.gallery import pick_stamps
from deconvbench.report.page import build_report
from deconvbench.store import open_dataset

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "deconvbench.cli"]


def test_sections_of_the_committed_results():
    sections = load_sections(REPO / "results")
    assert [s.title for s in sections] == [
        "cosmos-v3 v3 — test",
        "ground-v3 v3 — test",
        "space-v3 v3 — test",
        "superbit-v3 v3 — test",
        "metacal-space v1 — metacal splits leakage, noiseless, snr20, snr50",
        "metacal-v3 v3 — metacal splits leakage, noiseless, snr20, snr50",
    ]
    assert [len(s.results) for s in sections] == [6, 7, 6, 6, 16, 21]
    _, ground, _, _, space, metacal = sections
    assert sorted(bias_series(space, "m")) == ["deconvfilter out-of-family", "fft", "galsim-mcal", "wiener"]
    wiener = json.loads((REPO / "results" / "ground-v3-v3_test_wiener.json").read_text())
    nmse = metric_series(ground, "nmse")
    assert [label for label, _ in nmse["wiener"]] == ["10", "20", "40", "80", "200", "noiseless"]
    assert dict(nmse["wiener"])["20"] == wiener["metrics"]["by_snr"]["20"]["nmse"]["mean"]
    m = bias_series(metacal, "m")
    fft50 = json.loads((REPO / "results" / "metacal-v3-v3_snr50_n2000_fft.json").read_text())["metacal"]["overall"]
    assert ("50", fft50["m"], fft50["m_err"]) in m["fft"]
    assert [label for label, *_ in m["fft"]] == ["20", "50", "noiseless"]  # leakage split left out
    assert sorted(m) == ["deconvfilter", "deconvnet-torch", "fft", "fft fixnoise", "galsim-mcal", "wiener"]


def test_pareto_front():
    points = [(100.0, 1.0), (1000.0, 2.0), (10.0, 0.5), (50.0, 3.0), (1000.0, 5.0), (10.0, 0.5)]
    # (50, 3) is dominated by (100, 1); (1000, 5) by (1000, 2); the two equal points are both kept
    assert pareto_front(points) == [2, 5, 0, 1]
    ground = load_sections(REPO / "results")[1]
    pts = speed_points(ground)
    front = [pts[i]["method"] for i in pareto_front([(p["speed"], p["error"]) for p in pts])]
    # measured (make results on the v3 cards): fft (3233 stamps/s) is the fastest, so on the front
    assert front == ["deconvnet-torch", "richardson-lucy", "wiener", "deconvfilter", "fft"]


def test_pick_stamps_spreads_over_snr_levels():
    levels = ["10", "10", "40", "noiseless", "20", "200", "80"]
    assert pick_stamps(levels, 3) == [0, 2, 3]  # lowest, middle (40 of 10,20,40,80,200,noiseless), highest
    assert pick_stamps(levels, 10) == [0, 4, 2, 6, 5, 3]
    assert pick_stamps(["noiseless"] * 4, 3) == [0]


def test_report_from_committed_results_without_gallery(tmp_path):
    made = build_report(REPO / "results", tmp_path / "a", gallery=False)
    assert made.sections == 6 and len(made.figures) == 14
    page = made.path.read_text()
    assert page.count('<img alt="') == 14 and page.count("data:image/png;base64,") == 14
    for path in (REPO / "results").glob("*.json"):
        # runs with a PSF-model error are in the leaderboard's robustness section only
        assert (path.name in page) != ("_psferr-" in path.name)
    assert page.count("<h3>Failures</h3>") == 6 and "Pareto front" in page
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in made.figures)


def _space_results(tmp_path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    for path in (REPO / "results").glob("space-v3-*.json"):
        shutil.copy(path, results / path.name)
    return results


def test_report_is_deterministic(tmp_path):
    results = _space_results(tmp_path)
    first = build_report(results, tmp_path / "a", gallery=False)
    again = build_report(results, tmp_path / "b", gallery=False)
    assert len(first.figures) == 2 and again.path.read_bytes() == first.path.read_bytes()


def test_report_leaves_matplotlib_global_state_alone(tmp_path):
    code = (
        "import matplotlib, sys\n"
        # raw reads: reading rcParams['backend'] through the mapping would import pyplot itself
        "def params(): return {k: dict.__getitem__(matplotlib.rcParams, k) for k in matplotlib.rcParams}\n"
        "before = params()\n"
        "from deconvbench.report.page import build_report\n"
        f"build_report({str(_space_results(tmp_path))!r}, {str(tmp_path / 'out')!r}, gallery=False)\n"
        "assert params() == before\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def smoke_results(smoke_test_file, tmp_path_factory):
    """A results folder: fft on smoke/test, and a copy claiming a method that is not installed."""
    folder = tmp_path_factory.mktemp("smoke-results")
    result = run_method(load_method("fft"), smoke_test_file, folder / "smoke-v3_test_fft.json", batch_size=64)
    result["method"]["name"] = "not-installed"
    (folder / "smoke-v3_test_not-installed.json").write_text(json.dumps(result))
    return folder


def test_gallery_regenerates_the_published_first_stamps_and_names_missing_methods(
    smoke_results, smoke_test_file, tmp_path
):
    from deconvbench.report.gallery import gallery_stamps

    stamps, notes = gallery_stamps("smoke", "3", "test", ["fft", "not-installed"], count=3)
    with open_dataset(smoke_test_file) as ds:
        truth, observed = ds.read("truth"), ds.read("observed")
    assert len(stamps) == 3 and sorted(notes) == ["not-installed"] and "unknown method" in notes["not-installed"]
    for stamp in stamps:
        assert np.array_equal(stamp["truth"], truth[stamp["index"]])
        assert np.array_equal(stamp["observed"], observed[stamp["index"]])
        assert stamp["estimates"]["fft"].shape == (48, 48)
    made = build_report(smoke_results, tmp_path, gallery=True)
    page = made.path.read_text()
    assert len(made.figures) == 3 and "smoke-v3_test_gallery.png" in [f.name for f in made.figures]
    assert "not-installed not shown: unknown method" in page
    assert any("not-installed" in note for note in made.notes)


def test_cli_report_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "no result files"), (tmp_path / "missing", "no results directory")):
        proc = subprocess.run(
            CLI + ["report", "--results-dir", str(folder), "--out", str(tmp_path / "out")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{not json")
    proc = subprocess.run(
        CLI + ["report", "--results-dir", str(tmp_path / "bad"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "report.html").exists()
    assert issubclass(ReportError, ValueError)


def test_cli_report_on_a_partial_results_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(REPO / "results" / "space-v3-v3_test_wiener.json", results)
    proc = subprocess.run(
        CLI + ["report", "--results-dir", str(results), "--out", str(tmp_path / "out"), "--no-gallery"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 figures, 1 sections" in proc.stdout and (tmp_path / "out" / "report.html").exists()


def test_gallery_of_results_for_another_card_version_is_a_note_not_a_crash(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    data = json.loads((REPO / "results" / "space-v3-v3_test_wiener.json").read_text())
    data["dataset"]["version"] = "999"
    (results / "old.json").write_text(json.dumps(data))
    made = build_report(results, tmp_path / "out", gallery=True)
    assert made.notes == [
        "no gallery for space-v3 v999 — test: card space-v3 is now version 3, the results are for version 999"
    ]
    assert "no gallery for space-v3 v999" in made.path.read_text() and len(made.figures) == 2
