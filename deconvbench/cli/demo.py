"""``deconvbench demo`` (what ``make run`` runs): every available method on the smoke sets."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import note, progress_task


@app.command()
def demo(
    workers: int = typer.Option(2, "--workers", "-j"),
    out: Path = typer.Option(Path("out/demo"), "--out", help="directory for the result JSONs"),
) -> None:
    """The default job of `make run`: every available method on the smoke sets (tables).

    Generates the smoke datasets if needed, runs every available method on the smoke test
    split (comparison table) and a short metacal run on the smoke-metacal splits (bias table).
    """
    from ..dataset_files import ensure_dataset
    from ..harness import run_method
    from ..metacal.measure import MetacalConfig
    from ..methods import load_available_methods
    from ..tables import comparison_table, metacal_table

    test_path, _ = ensure_dataset("smoke", "test", workers=workers, progress=progress_task, notify=note)
    methods = load_available_methods(notify=note)
    results = []
    for name, method in methods.items():
        with progress_task(f"{name} on smoke/test", 64) as advance:
            results.append(
                run_method(
                    method, test_path, out / f"{name}_smoke_test.json", progress=advance, command="deconvbench demo"
                )
            )
    print("Deconvolution on smoke/test (64 stamps; metrics against truth, medians per SNR level)")
    print(comparison_table(results))
    print()
    mcal_results = []
    for split in ("noiseless", "snr50", "leakage"):
        path, _ = ensure_dataset("smoke-metacal", split, workers=workers, progress=progress_task, notify=note)
        for name, method in methods.items():
            with progress_task(f"{name} metacal on smoke-metacal/{split}", 64) as advance:
                mcal_results.append(
                    run_method(
                        method,
                        path,
                        out / f"{name}_smoke-metacal_{split}.json",
                        progress=advance,
                        command="deconvbench demo",
                        metacal=MetacalConfig(),
                    )
                )
    print(
        "Metacalibration on smoke-metacal (16 groups of 4 per split: σm is large at this size; "
        "the full test is `deconvbench run --method NAME --metacal`)"
    )
    print(metacal_table(mcal_results))
    note(f"result files in {out}/")
