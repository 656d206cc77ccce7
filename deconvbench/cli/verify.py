"""``deconvbench verify``, ``record-checksum`` and ``record-stream-checksum``: content checksums of
dataset files and of streamed splits."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UsageError
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
def verify(files: list[Path] = typer.Argument(..., help="dataset HDF5 file(s)")) -> None:
    """Recompute content checksums; non-zero exit on any mismatch or unreadable file."""
    from ..dataset_files import published_checksum_of

    for path in files:
        checksum, published = published_checksum_of(path)
        note = " (matches the card's published checksum)" if published else ""
        print(f"OK {path} {checksum}{note}")


@app.command("record-checksum")
def record_checksum(files: list[Path] = typer.Argument(..., help="generated dataset files")) -> None:
    """Maintainers: publish the verified checksum of generated split(s) in datasets/checksums.json."""
    from ..dataset_files import record_checksums

    for line in record_checksums(files):
        print(line)


@app.command("record-stream-checksum")
def record_stream_checksum_command(
    card: str = typer.Argument(..., help="published metacal card name"),
    split: str = typer.Option(..., "--split", help="streamed split, e.g. snr50"),
    n: int = typer.Option(..., "--n", help="number of stamps (multiple of 4): the N of the bias runs to accept"),
    executor: str = EXECUTOR_OPTION,
    workers: int = WORKERS_OPTION,
    scheduler: str | None = SCHEDULER_OPTION,
    scheduler_file: Path | None = SCHEDULER_FILE_OPTION,
    blas_threads: int = BLAS_THREADS_OPTION,
) -> None:
    """Maintainers: render the first N stamps of a streamed split (no method) and publish their
    digest in datasets/checksums.json, so that `submit` accepts `bias` results of that N."""
    from ..bias import stream_digest
    from ..cards import load_card
    from ..dataset_files import check_n, record_stream_checksum

    if Path(card).suffix == ".toml":
        raise UsageError("record-stream-checksum takes a published card's name, not a card file")
    spec = executor_spec(executor, workers, scheduler, scheduler_file, blas_threads)
    card_obj = load_card(card)
    check_n(card_obj, split, n)
    with progress_task(f"stream digest {card_obj.name}/{split}", n) as advance:
        digest = stream_digest(card_obj, split, n, executor=spec, progress=advance)
    print(record_stream_checksum(card_obj, split, n, digest))
