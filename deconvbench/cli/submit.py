"""``deconvbench submit``: validate a result file and add it to results/."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import warn


@app.command()
def submit(
    result: Path = typer.Argument(..., help="result JSON written by `deconvbench run`"),
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    replace: bool = typer.Option(False, "--replace", help="supersede an existing result of the same method"),
    allow_failures: bool = typer.Option(
        False,
        "--allow-failures",
        help="accept a result in which some (not all) stamps failed; the leaderboard shows the count",
    ),
) -> None:
    """Validate a result and add it to results/ (nothing changes if it is rejected)."""
    import json

    from ..leaderboard import default_results_dir, stamps_failed
    from ..leaderboard import submit as do_submit

    target = do_submit(result, results_dir or default_results_dir(), replace=replace, allow_failures=allow_failures)
    failed = stamps_failed(json.loads(target.read_text()))
    if failed:
        warn(f"{failed} stamps failed in this result; the leaderboard shows them in its 'failures' column")
    print(f"accepted: {target}")
