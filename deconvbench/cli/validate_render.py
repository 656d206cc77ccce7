"""``deconvbench validate-render``: the fast renderer against plain GalSim ``drawImage`` (deconvbench.sim.validate)."""

from __future__ import annotations

import typer

from ..errors import UsageError
from . import app
from ._common import err_console


@app.command("validate-render")
def validate_render_command(
    card: str = typer.Argument(..., help="dataset card name or TOML path"),
    n: int = typer.Option(64, "--n", help="stamps to compare (the first n of the split)"),
    split: str | None = typer.Option(None, "--split", "-s", help="split (default: the card's first)"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="exit 1 if max|Δ|/peak or |flux ratio − 1| exceeds it"),
    reference_fft_factor: int = typer.Option(
        4,
        "--reference-fft-factor",
        help="GalSim's FFT grids of the reference >= this × the fast padded grid (larger: how far GalSim's own "
        "result still depends on its grid)",
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="card setting KEY=VALUE applied before validating (repeatable), e.g. --set stamp.kernel_wrap=truncated "
        "--set stamp.psf_stamp=kernel: a renderer variant of a card, without writing a card file",
    ),
) -> None:
    """Compare the fast renderer with GalSim drawImage: max/rms |fast − reference|/peak and flux ratio."""
    from ..cards import load_card
    from ..sim.validate import validate_render
    from ..tables import render_validation_table

    dataset_card = load_card(card, settings)
    split = split or next(iter(dataset_card.splits))
    dataset_card.split(split)
    if n <= 0:
        raise UsageError(f"--n must be positive, got {n}")
    if reference_fft_factor < 2:
        raise UsageError(f"--reference-fft-factor must be >= 2, got {reference_fft_factor}")
    rows = validate_render(dataset_card, split, n, reference_fft_factor)
    print(render_validation_table(rows))
    failing = [r for r in rows if not r.passes(tolerance)]
    if failing:
        err_console.print(f"{len(failing)} row(s) above tolerance {tolerance:g}", highlight=False)
        raise typer.Exit(1)
