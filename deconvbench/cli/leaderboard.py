"""``deconvbench leaderboard``: regenerate (or check) leaderboard.md and leaderboard.html from results/."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DeconvbenchError
from . import app


@app.command()
def leaderboard(
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    out: Path = typer.Option(None, "--out", help="default: leaderboard.md of this checkout (.html written beside)"),
    check: bool = typer.Option(False, "--check", help="exit non-zero if a file is not what results/ implies"),
) -> None:
    """Regenerate leaderboard.md and leaderboard.html (beside it) from results/ (deterministic)."""
    from ..atomic import write_text_atomic
    from ..leaderboard import default_leaderboard_path, default_results_dir, render_leaderboard
    from ..report.leaderboard_html import render_leaderboard_html

    source = results_dir or default_results_dir()
    target = out or default_leaderboard_path()
    pages = {target: render_leaderboard(source), target.with_suffix(".html"): render_leaderboard_html(source)}
    for path, text in pages.items():
        if check:
            current = path.read_text() if path.is_file() else ""
            if current != text:
                raise DeconvbenchError(f"{path} is out of date with the results (run `deconvbench leaderboard`)")
            print(f"{path} is up to date")
            continue
        write_text_atomic(path, text)
        print(f"wrote {path}")
