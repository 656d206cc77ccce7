"""``deconvbench verify`` and ``deconvbench record-checksum``: content checksums of dataset files."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


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
