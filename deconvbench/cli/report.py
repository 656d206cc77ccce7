"""``deconvbench report``: figures and one HTML page from the result files (deconvbench.report)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..errors import DeconvbenchError
from . import app
from ._common import err_console


@app.command()
def report(
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    out: Path = typer.Option(Path("out/report"), "--out", help="directory for report.html and figures/"),
    gallery: bool = typer.Option(
        True, "--gallery/--no-gallery", help="regenerate a few stamps and deconvolve them with each method"
    ),
    gallery_stamps: int = typer.Option(3, "--gallery-stamps", help="stamps per gallery (different SNR levels)"),
) -> None:
    """Write one self-contained HTML page with figures from the result files."""
    from ..leaderboard import default_results_dir

    try:
        from ..report.page import build_report
    except ImportError as exc:
        raise DeconvbenchError(f"the report needs matplotlib (pip install 'deconvbench[plots]'): {exc}") from None
    if gallery_stamps < 1:
        raise DeconvbenchError(f"--gallery-stamps must be >= 1, got {gallery_stamps}")
    made = build_report(
        results_dir or default_results_dir(),
        out,
        gallery=gallery,
        gallery_count=gallery_stamps,
        log=lambda line: err_console.print(escape(line), highlight=False),
    )
    for note in made.notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    print(f"wrote {made.path} ({made.size_bytes / 1e6:.2f} MB, {len(made.figures)} figures, {made.sections} sections)")
