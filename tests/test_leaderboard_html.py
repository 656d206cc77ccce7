"""leaderboard.html: same rows and order as leaderboard.md, escaped, checked by --check."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deconvbench.leaderboard import render_leaderboard
from deconvbench.report.leaderboard_html import render_leaderboard_html

REPO = Path(__file__).resolve().parent.parent


def _results_copy(tmp_path: Path, pattern: str = "*.json") -> Path:
    results = tmp_path / "results"
    results.mkdir()
    for path in sorted((REPO / "results").glob(pattern)):
        shutil.copy(path, results / path.name)
    return results


def test_html_has_the_rows_of_the_markdown_in_the_same_order():
    md = render_leaderboard(REPO / "results")
    page = render_leaderboard_html(REPO / "results")
    md_files = re.findall(r"`([^`]+\.json)`", md)
    html_files = re.findall(r"<td data-v=\"[^\"]*\">([^<]+\.json)</td>", page)
    exact = [p for p in (REPO / "results").glob("*.json") if "_psferr-" not in p.name]
    main = md.split("## Robustness")[0]
    # main tables: every exact-PSF result; PSF-error runs and the in/out-of-family rows
    # (62 rows naming their files) come after, in the robustness section
    assert len(re.findall(r"`([^`]+\.json)`", main)) == len(exact) == 62
    assert len(md_files) == 62 + 62
    assert html_files == md_files
    assert page.count("<h2>") == md.count("\n## ") == 13
    assert page.count('<table class="sortable">') == 14
    # numbers are the markdown's cells, and every cell carries its raw value for sorting
    assert '<td data-v="0.02392561087228576">2.393e-02</td>' in page


def test_html_escapes_result_text(tmp_path):
    results = _results_copy(tmp_path, "ground-v3-v3_test_fft.json")
    path = results / "ground-v3-v3_test_fft.json"
    data = json.loads(path.read_text())
    data["hardware"]["cpu"] = '<img src=x onerror="alert(1)">'
    path.write_text(json.dumps(data))
    page = render_leaderboard_html(results)
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_empty_results_give_a_page_that_says_so(tmp_path):
    (tmp_path / "results").mkdir()
    assert "<p>No results yet.</p>" in render_leaderboard_html(tmp_path / "results")


def test_leaderboard_command_writes_both_and_check_covers_the_html(tmp_path):
    results = _results_copy(tmp_path, "space-v3-*.json")
    board = tmp_path / "board.md"
    cli = [sys.executable, "-m", "deconvbench.cli", "leaderboard", "--results-dir", str(results), "--out", str(board)]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    html_file = tmp_path / "board.html"
    assert html_file.read_text() == render_leaderboard_html(results)
    assert subprocess.run(cli + ["--check"], capture_output=True).returncode == 0
    html_file.write_text(html_file.read_text().replace("wiener", "weiner"))
    proc = subprocess.run(cli + ["--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and "board.html is out of date" in proc.stderr
    html_file.unlink()
    proc = subprocess.run(cli + ["--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and "board.html" in proc.stderr
