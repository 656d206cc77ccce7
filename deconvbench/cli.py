"""The ``deconvbench`` command line: a thin layer over the library.

Every user error (bad card, missing file, unknown method, corrupt data) is printed as
one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tabulate import tabulate

from .errors import DeconvbenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark and dataset suite for PSF deconvolution of galaxy images (weak lensing).",
)
err_console = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("DECONVBENCH_PROGRESS") == "1"


class RateTracker:
    """Feeds a rich progress task with a stamps/s rate."""

    def __init__(self, progress: Progress, task, unit: str = "stamps"):
        self.progress, self.task, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=count, rate=f"{rate:,.1f} {self.unit}/s")


def fmt_snr(snr: float) -> str:
    return "noiseless" if math.isinf(snr) else f"{snr:g}"


@app.command("list-datasets")
def list_datasets() -> None:
    """List the dataset cards with their splits."""
    from .cards import list_cards, load_card

    rows = []
    for name in list_cards():
        card = load_card(name)
        splits = ", ".join(f"{k}={v.n}" for k, v in card.splits.items())
        rows.append([card.name, card.version, card.kind, f"{card.stamp.size}", f"{card.stamp.pixel_scale_arcsec}",
                     ", ".join(card.psf.families), splits])
    print(tabulate(rows, headers=["card", "version", "kind", "stamp", "pixel [arcsec]", "PSF families", "splits"]))


@app.command()
def generate(
    card: str = typer.Argument(..., help="card name (see list-datasets) or path to a card TOML"),
    split: str = typer.Option(..., "--split", "-s", help="split to generate (e.g. train, val, test)"),
    n: Optional[int] = typer.Option(None, "--n", help="generate only the first N stamps of the split"),
    workers: int = typer.Option(1, "--workers", "-j", help="worker processes (output is identical for any value)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output HDF5 file (default: data dir, see README)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Generate a dataset split from a card into one HDF5 file (atomic, checksummed)."""
    from .cards import load_card
    from .paths import dataset_path
    from .sim.generate import generate as run_generate

    dataset_card = load_card(card)
    dataset_card.split(split)
    path = out or dataset_path(dataset_card, split, n)
    if path.exists() and not force:
        raise DeconvbenchError(f"{path} exists (use --force to overwrite, or `deconvbench verify` to check it)")
    total = n or dataset_card.split(split).n
    with progress_bar() as progress:
        task = progress.add_task(f"{dataset_card.name}/{split}", total=total, rate="")
        report = run_generate(dataset_card, split, path, n=n, workers=workers, progress=RateTracker(progress, task))
    summarise_generation(report)


def summarise_generation(report) -> None:
    import numpy as np

    from .store import open_dataset

    with open_dataset(report.path) as dataset:
        params = dataset.params()
    levels = sorted(set(params["snr_level"].tolist()))
    families = sorted(set(p.decode() for p in params["psf_family"]))
    profiles = sorted(set(p.decode() for p in params["gal_profile"]))
    table = [
        ["file", str(report.path)],
        ["card", f"{report.card} v{report.version} / {report.split}"],
        ["stamps", report.n],
        ["SNR levels", ", ".join(f"{fmt_snr(s)} ({int(np.sum(params['snr_level'] == s))})" for s in levels)],
        ["PSF families", ", ".join(f"{f} ({int(np.sum(params['psf_family'] == f.encode()))})" for f in families)],
        ["galaxy profiles", ", ".join(profiles)],
        ["file size", f"{report.file_bytes / 1e6:.2f} MB ({report.file_bytes / 1e6 / report.n * 1000:.1f} MB per 1000 stamps)"],
        ["time", f"{report.seconds:.1f} s ({report.stamps_per_second:.1f} stamps/s, {report.workers} worker(s))"],
        ["checksum", report.checksum],
    ]
    print(tabulate(table, tablefmt="simple"))


@app.command()
def verify(files: List[Path] = typer.Argument(..., help="dataset HDF5 file(s)")) -> None:
    """Recompute content checksums; non-zero exit on any mismatch or unreadable file."""
    from .cards import expected_checksum, load_card
    from .store import open_dataset, verify as verify_file

    for path in files:
        checksum = verify_file(path)
        note = ""
        with open_dataset(path) as dataset:
            attrs = dataset.attrs
        try:
            card = load_card(attrs["card_name"])
            expected = expected_checksum(card, attrs["split"], int(attrs["n"]))
        except DeconvbenchError:
            expected = None
        if expected is not None:
            if expected != checksum:
                raise DeconvbenchError(
                    f"{path}: content differs from the published checksum of {attrs['card_name']}/{attrs['split']}"
                )
            note = " (matches the card's published checksum)"
        print(f"OK {path} {checksum}{note}")


def ensure_dataset(card_name: str, split: str, n: int | None = None, workers: int = 1) -> Path:
    """Path of a generated split, generating (or regenerating a corrupt file) if needed."""
    from .cards import load_card
    from .paths import dataset_path
    from .sim.generate import generate as run_generate
    from .store import verify as verify_file

    card = load_card(card_name)
    path = dataset_path(card, split, n)
    if path.exists():
        try:
            verify_file(path)
            return path
        except DeconvbenchError as exc:
            err_console.print(f"regenerating: {exc}", highlight=False)
    total = n or card.split(split).n
    with progress_bar() as progress:
        task = progress.add_task(f"generate {card.name}/{split}", total=total, rate="")
        report = run_generate(card, split, path, n=n, workers=workers, progress=RateTracker(progress, task))
    summarise_generation(report)
    return path


@app.command()
def demo(workers: int = typer.Option(2, "--workers", "-j")) -> None:
    """The embedded default job (`make run`): generate the smoke dataset and summarise it."""
    ensure_dataset("smoke", "test", workers=workers)


def main() -> None:
    try:
        app(standalone_mode=False)
    except DeconvbenchError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            err_console.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
