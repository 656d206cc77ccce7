"""Submissions, the leaderboard and its --check mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deconvbench.cards import expected_checksum, load_card
from deconvbench.harness import run_method
from deconvbench.leaderboard import SubmissionError, canonical_name, render_leaderboard, submit, validate_result
from deconvbench.methods import load_method
from deconvbench.store import open_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fft_result(smoke_test_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("res") / "fft.json"
    run_method(load_method("fft"), smoke_test_file, path, batch_size=32)
    return path


def test_generated_smoke_split_matches_its_published_checksum(smoke_test_file):
    """Bit-reproducibility: the smoke test split generated here is the published one."""
    with open_dataset(smoke_test_file) as ds:
        assert ds.checksum == expected_checksum(load_card("smoke"), "test", 64)


def test_valid_result_is_accepted_under_its_canonical_name(fft_result, tmp_path):
    target = submit(fft_result, tmp_path / "results")
    assert target.name == "smoke-v3_test_fft.json"
    assert json.loads(target.read_text()) == json.loads(fft_result.read_text())
    with pytest.raises(SubmissionError, match="exists"):
        submit(fft_result, tmp_path / "results")


def _tampered(fft_result, tmp_path, edit) -> Path:
    data = json.loads(fft_result.read_text())
    edit(data)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda d: d["dataset"].update(checksum="0" * 64), "checksum"),
        (lambda d: d["metrics"]["overall"]["nmse"].update(mean=float("nan")), "not finite"),
        (lambda d: d["dataset"].update(card="no-such-card"), "unknown dataset card"),
        (lambda d: d["method"].update(name="<script>x</script>"), "method.name"),
        (lambda d: d["hardware"].update(cpu="[click](http://evil)"), "markup"),
        (lambda d: d["method"].pop("version"), "method.version"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d["dataset"].update(n=63), "published checksum"),
    ],
)
def test_tampered_results_are_rejected_and_nothing_changes(fft_result, tmp_path, edit, reason):
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.json").write_text("{}")
    before = sorted(p.name for p in results.iterdir())
    bad = _tampered(fft_result, tmp_path, edit)
    with pytest.raises(SubmissionError, match=reason):
        submit(bad, results)
    assert sorted(p.name for p in results.iterdir()) == before


def test_cli_submit_gives_one_line_and_exit_2(fft_result, tmp_path):
    bad = _tampered(fft_result, tmp_path, lambda d: d["dataset"].update(checksum="f" * 64))
    proc = subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", "submit", str(bad), "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "checksum" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_leaderboard_is_deterministic_and_check_detects_edits(fft_result, tmp_path):
    results = tmp_path / "results"
    submit(fft_result, results)
    board = tmp_path / "leaderboard.md"
    cli = [sys.executable, "-m", "deconvbench.cli", "leaderboard", "--results-dir", str(results), "--out", str(board)]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    text = board.read_text()
    assert "| fft" in text and "smoke-v3_test_fft.json" in text
    assert render_leaderboard(results) == text
    assert subprocess.run(cli + ["--check"], capture_output=True).returncode == 0
    result_file = results / "smoke-v3_test_fft.json"
    data = json.loads(result_file.read_text())
    data["metrics"]["overall"]["nmse"]["mean"] *= 0.5
    result_file.write_text(json.dumps(data))
    proc = subprocess.run(cli + ["--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and "out of date" in proc.stderr


def test_committed_leaderboard_matches_committed_results():
    """leaderboard.md on main is exactly what results/ implies."""
    proc = subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", "leaderboard", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr


def test_committed_results_are_valid():
    for path in sorted((REPO / "results").glob("*.json")):
        data = json.loads(path.read_text())
        validate_result(data)
        assert canonical_name(data) == path.name


def test_a_metacal_result_without_any_valid_pair_is_refused_with_its_reasons():
    data = json.loads((REPO / "results" / "metacal-space-v1_noiseless_n2000_fft.json").read_text())
    data["metacal"]["overall"].update(m=None, m_err=None, c=None, c_err=None, n_pairs=0)
    data["metacal"]["flag_counts"] = {"PSF Gaussian fit failed (e.g. an undersampled PSF)": 2000}
    with pytest.raises(SubmissionError, match=r"no valid ±g pair \(excluded: PSF Gaussian fit failed .* 2000\)"):
        validate_result(data)
