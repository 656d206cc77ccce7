"""``deconvbench run``: one or more methods over dataset files; comparison and metacal tables."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import (
    BLAS_THREADS_OPTION,
    CENTRING_HELP,
    SCHEDULER_FILE_OPTION,
    SCHEDULER_OPTION,
    command_line,
    executor_spec,
    metacal_config,
    note,
    parse_options,
    progress_task,
    warn,
)


@app.command()
def run(
    method: list[str] = typer.Option(..., "--method", "-m", help="method name (repeat for a comparison)"),
    data: Path | None = typer.Option(None, "--data", help="dataset HDF5 file"),
    dataset: str | None = typer.Option(
        None, "--dataset", help="card name (generated if missing); with --metacal default metacal-v3"
    ),
    split: str | None = typer.Option(None, "--split", help="split of --dataset (with --metacal: default all splits)"),
    n: int | None = typer.Option(None, "--n", help="use only the first N stamps of each split"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    out: Path | None = typer.Option(
        None, "--out", help="result folder (default out/), or the result file of a single run (a name ending in .json)"
    ),
    save_outputs: Path | None = typer.Option(
        None,
        "--save-outputs",
        help="write estimates to this folder (one STEM.h5 per run), or to this .h5 file for a single run",
    ),
    option: list[str] = typer.Option([], "--option", help="METHOD.key=value passed to the method"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last completed batch"),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="exit non-zero if any stamp failed or the data file's content differs from its recorded checksum",
    ),
    metacal: bool = typer.Option(
        False,
        "--metacal",
        help="also run metacalibration: shear bias m, c, alpha and "
        "metacal throughput (needs a constant-shear card, e.g. metacal-v3)",
    ),
    estimator: str = typer.Option("wmom", "--estimator", help="metacal shear estimator: wmom or admom"),
    fixnoise: bool = typer.Option(False, "--fixnoise", help="metacal: add ngmix's fixnoise term (linear methods)"),
    centring: str = typer.Option("newton", "--centring", help="metacal: " + CENTRING_HELP),
    workers: int = typer.Option(
        2,
        "--workers",
        "-j",
        help="workers for generating a missing dataset, and with --executor for the run itself",
    ),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="where the batches run: local (-j worker processes) or dask (a Dask cluster); default: in this process",
    ),
    scheduler: str | None = SCHEDULER_OPTION,
    scheduler_file: Path | None = SCHEDULER_FILE_OPTION,
    blas_threads: int = BLAS_THREADS_OPTION,
    device: str | None = typer.Option(
        None, "--device", help="metacal: run the Fourier route of wmom in JAX on cpu or gpu (default: numpy)"
    ),
    psf_error: str | None = typer.Option(
        None,
        "--psf-error",
        help="give the method (and the metacal fit of Γ) a model PSF with this error, e.g. size=0.01,e1=0.002: "
        "size = dT/T, e1/e2 = reduced shear, model − true",
    ),
) -> None:
    """Run one or more deconvolvers over a dataset and print the comparison table."""
    from ..dataset_files import resolve_run_files
    from ..errors import DeconvbenchError, UsageError
    from ..harness import plan_outputs, run_method
    from ..methods import load_method
    from ..psf_error import parse_psf_error
    from ..tables import comparison_table, metacal_table

    options = parse_options(option, method)
    model_error = parse_psf_error(psf_error) if psf_error is not None else None
    mcal_config = None
    if metacal:
        mcal_config = metacal_config(estimator, fixnoise, device, centring)
    elif fixnoise or estimator != "wmom" or device is not None or centring != "newton":
        raise UsageError("--estimator, --fixnoise, --centring and --device apply to --metacal runs only")
    if n is not None and n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 1:
        raise UsageError(f"-j/--workers must be >= 1, got {workers}")
    # without --executor the run stays in this process (-j sizes only a missing dataset's generation)
    spec = executor_spec(executor or "local", workers if executor else 1, scheduler, scheduler_file, blas_threads)
    files = [
        path
        for path, _ in resolve_run_files(data, dataset, split, n, workers, metacal, progress=progress_task, notify=note)
    ]
    plans = plan_outputs(
        files, method, options, out, save_outputs, mcal_config, model_error
    )  # checks every output first
    command = command_line()
    instances: dict = {}
    results = []
    for plan in plans:
        if plan.method not in instances:
            instances[plan.method] = load_method(plan.method, **options.get(plan.method, {}))
        with progress_task(f"{plan.method} on {plan.tag}", plan.n) as advance:
            result = run_method(
                instances[plan.method],
                plan.data,
                plan.result,
                batch_size=batch_size,
                save_outputs=plan.outputs,
                resume=resume,
                progress=advance,
                command=command,
                metacal=mcal_config,
                psf_error=model_error,
                executor=spec,
                method_options=options.get(plan.method, {}),
            )
        failures = result["failures"]
        if failures["stamps_failed"]:
            warn(
                f"{plan.method}: {failures['stamps_failed']} of {plan.n} stamps failed "
                f"(first: {failures['first_error']})"
            )
        if not result["dataset"]["checksum_verified"]:
            warn(
                f"{plan.data}: content checksum {result['dataset']['checksum'][:12]}… differs from the checksum "
                f"recorded in the file ({result['dataset']['checksum_recorded'][:12]}…): the data were modified"
            )
        note(f"wrote {plan.result}")
        results.append(result)
    print(comparison_table(results))
    if metacal:
        print()
        print(metacal_table(results))
    if strict and any(r["failures"]["stamps_failed"] for r in results):
        raise DeconvbenchError("--strict: some stamps failed (see the table and the result files)")
    if strict and not all(r["dataset"]["checksum_verified"] for r in results):
        raise DeconvbenchError("--strict: a data file's content does not match its recorded checksum")
