"""``deconvbench sensitivity``: metacal runs with several PSF-model errors on the same
stamps, and the fitted sensitivities dm/d(δT/T), dc/dδg beside the analytic expectation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from . import app
from ._common import command_line, metacal_config, note, parse_options, progress_task


def _values(text: str, what: str) -> list[float]:
    from ..errors import UsageError

    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            values.append(float(part))
        except ValueError:
            raise UsageError(f"{what}: expected comma-separated numbers, got {part!r}") from None
    if any(v == 0.0 for v in values):
        raise UsageError(f"{what}: 0 is always run (the zero-error reference); give non-zero values")
    return values


@app.command()
def sensitivity(
    method: list[str] = typer.Option(..., "--method", "-m", help="method name (repeat for several)"),
    data: Path | None = typer.Option(None, "--data", help="dataset HDF5 file of a metacal card"),
    dataset: str | None = typer.Option(None, "--dataset", help="metacal card name (generated if missing)"),
    split: str | None = typer.Option(None, "--split", help="split of --dataset (e.g. noiseless)"),
    n: int | None = typer.Option(None, "--n", help="use only the first N stamps"),
    sizes: str = typer.Option("-0.01,0.01", "--sizes", help="size errors dT/T to run (comma-separated)"),
    e1: str = typer.Option("-0.002,0.002", "--e1", help="reduced-shear errors of the model PSF, component 1"),
    e2: str = typer.Option("-0.002,0.002", "--e2", help="reduced-shear errors of the model PSF, component 2"),
    out: Path = typer.Option(Path("out/sensitivity"), "--out", help="folder for the result files"),
    option: list[str] = typer.Option([], "--option", help="METHOD.key=value passed to the method"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    estimator: str = typer.Option("wmom", "--estimator", help="metacal shear estimator: wmom or admom"),
    workers: int = typer.Option(2, "--workers", "-j", help="workers for generating a missing dataset"),
) -> None:
    """Run each method with the PSF-model errors 0, --sizes, --e1, --e2 (one axis at a time)
    on the same stamps with metacal, write one result file per run, and print the fitted
    sensitivities with the analytic expectation K (dm/d(δT/T) ≈ K, dc/dδg ≈ −K)."""
    from tabulate import tabulate

    from ..dataset_files import resolve_run_files
    from ..errors import UsageError
    from ..harness import plan_outputs, run_method
    from ..methods import load_method
    from ..psf_error import PSFError
    from ..robustness import SENSITIVITY_COLUMNS, sensitivity_rows

    options = parse_options(option, method)
    if data is None and (dataset is None or split is None):
        raise UsageError("say what to run on: --data FILE, or --dataset CARD --split SPLIT")
    errors = [PSFError()]
    errors += [PSFError(size=v) for v in _values(sizes, "--sizes")]
    errors += [PSFError(e1=v) for v in _values(e1, "--e1")]
    errors += [PSFError(e2=v) for v in _values(e2, "--e2")]
    config = metacal_config(estimator, False, None)
    files = [path for path, _ in resolve_run_files(data, dataset, split, n, workers, True, progress_task, note)]
    out.mkdir(parents=True, exist_ok=True)
    plans = []
    for error in errors:
        for plan in plan_outputs(files, method, options, None, None, config, error):
            plans.append((replace(plan, result=out / plan.result.name), error))
    command = command_line()
    instances: dict = {}
    results = []
    for plan, error in plans:
        if plan.method not in instances:
            instances[plan.method] = load_method(plan.method, **options.get(plan.method, {}))
        with progress_task(f"{plan.method} {error.tag()}", plan.n) as advance:
            result = run_method(
                instances[plan.method],
                plan.data,
                plan.result,
                batch_size=batch_size,
                progress=advance,
                command=command,
                metacal=config,
                psf_error=error,
            )
        result["_file"] = plan.result.name
        results.append(result)
    note(f"wrote {len(results)} result files to {out}")
    print(tabulate(sensitivity_rows(results), headers=SENSITIVITY_COLUMNS, tablefmt="github", disable_numparse=True))
