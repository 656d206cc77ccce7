"""``deconvbench generate``: one split of a card into one HDF5 file."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import (
    BLAS_THREADS_OPTION,
    EXECUTOR_OPTION,
    SCHEDULER_FILE_OPTION,
    SCHEDULER_OPTION,
    WORKERS_OPTION,
    executor_spec,
    progress_task,
)


@app.command()
def generate(
    card: str = typer.Argument(..., help="card name (see list-datasets) or path to a card TOML"),
    split: str = typer.Option(..., "--split", "-s", help="split to generate (e.g. train, val, test)"),
    n: int | None = typer.Option(None, "--n", help="generate only the first N stamps of the split"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output HDF5 file (default: data dir, see README)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
    executor: str = EXECUTOR_OPTION,
    workers: int = WORKERS_OPTION,
    scheduler: str | None = SCHEDULER_OPTION,
    scheduler_file: Path | None = SCHEDULER_FILE_OPTION,
    blas_threads: int = BLAS_THREADS_OPTION,
) -> None:
    """Generate a dataset split from a card into one HDF5 file (atomic, checksummed; the
    output is identical for any executor and worker count)."""
    from ..atomic import check_writable
    from ..dataset_files import check_n, load_run_card
    from ..errors import OutputError
    from ..paths import dataset_path
    from ..sim.generate import generate as run_generate
    from ..store import open_dataset
    from ..tables import generation_table

    spec = executor_spec(executor, workers, scheduler, scheduler_file, blas_threads)
    dataset_card = load_run_card(card)
    total = check_n(dataset_card, split, n)
    path = out or dataset_path(dataset_card, split, n)
    if path.exists() and not force:
        raise OutputError(f"{path} exists (use --force to overwrite, or `deconvbench verify` to check it)")
    check_writable(path, "dataset file")
    with progress_task(f"{dataset_card.name}/{split}", total) as advance:
        report = run_generate(dataset_card, split, path, n=n, progress=advance, executor=spec)
    with open_dataset(report.path) as dataset:
        print(generation_table(report, dataset.params()))
