"""``deconvbench leaderboard``: regenerate (or check) leaderboard.md from results/."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DeconvbenchError
from . import app


@app.command()
def leaderboard(
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    out: Path = typer.Option(None, "--out", help="default: leaderboard.md of this checkout"),
    check: bool = typer.Option(False, "--check", help="exit non-zero if the file is not what results/ implies"),
) -> None:
    """Regenerate leaderboard.md from results/ (deterministic)."""
    from ..atomic import write_text_atomic
    from ..leaderboard import default_leaderboard_path, default_results_dir, render_leaderboard

    text = render_leaderboard(results_dir or default_results_dir())
    target = out or default_leaderboard_path()
    if check:
        current = target.read_text() if target.is_file() else ""
        if current != text:
            raise DeconvbenchError(f"{target} is out of date with the results (run `deconvbench leaderboard`)")
        print(f"{target} is up to date")
        return
    write_text_atomic(target, text)
    print(f"wrote {target}")
