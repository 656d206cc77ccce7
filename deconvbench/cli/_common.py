"""Shared pieces of the commands: consoles, progress bars, option parsing, messages,
the executor options (``--executor``, ``-j``, ``--scheduler``, ``--scheduler-file``,
``--blas-threads``)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import UsageError

err_console = Console(stderr=True)


def note(message: str) -> None:
    """One plain line on stderr (no markup interpretation)."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def command_line() -> str:
    """The command as typed (recorded in result files)."""
    return "deconvbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar on stderr (shown on a terminal or with DECONVBENCH_PROGRESS=1)."""
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
        disable=not err_console.is_terminal and os.environ.get("DECONVBENCH_PROGRESS") != "1",
    )


class RateTracker:
    """Feeds a rich progress task with a rate (``unit``/s)."""

    def __init__(self, progress: Progress, task, unit: str = "stamps"):
        self.progress, self.task, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=count, rate=f"{rate:,.1f} {self.unit}/s")


@contextlib.contextmanager
def progress_task(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar with one task; yields the callable that advances it by a count."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=total, rate="")
        yield RateTracker(progress, task)


def parse_options(options: list[str], methods=None) -> dict[str, dict]:
    """``METHOD.key=value`` → {METHOD: {key: value}} (values parsed as JSON when possible);
    with ``methods`` (the ``--method`` names), an option of any other method is a usage error."""
    parsed: dict[str, dict] = {}
    for item in options:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"--option expects METHOD.key=value, got {item!r}")
        key, value = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            parsed.setdefault(method, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed.setdefault(method, {})[name] = value
    unknown = set(parsed) - set(methods if methods is not None else parsed)
    if unknown:
        raise UsageError(f"--option names a method other than --method: {', '.join(sorted(unknown))}")
    return parsed


# -- where the work runs: the same options on generate, bias and run -----------------------
EXECUTOR_OPTION = typer.Option(
    "local", "--executor", help="local (worker processes on this machine) or dask (a Dask cluster)"
)
WORKERS_OPTION = typer.Option(
    1, "--workers", "-j", help="workers (local processes, or LocalCluster processes with --executor dask)"
)
SCHEDULER_OPTION = typer.Option(
    None, "--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (--executor dask)"
)
SCHEDULER_FILE_OPTION = typer.Option(
    None, "--scheduler-file", help="scheduler file written by `dask scheduler --scheduler-file` (--executor dask)"
)
BLAS_THREADS_OPTION = typer.Option(1, "--blas-threads", help="BLAS/FFT threads per worker")


def executor_spec(executor: str, workers: int, scheduler: str | None, scheduler_file: Path | None, blas_threads: int):
    """The validated :class:`~deconvbench.execution.ExecutorSpec` of the executor options
    (an invalid combination raises ExecutorError: one line, exit 2). ``--executor local
    -j 1`` runs inline, in this process."""
    from ..execution import ExecutorSpec

    kind = "inline" if executor == "local" and workers == 1 else executor
    spec = ExecutorSpec(kind, workers, scheduler, scheduler_file, blas_threads)
    if kind == "inline" and (scheduler or scheduler_file):
        spec = ExecutorSpec("local", workers, scheduler, scheduler_file, blas_threads)  # names the bad option
    return spec.validate()


#: the ``--centring`` option of the metacal commands
CENTRING_HELP = (
    "wmom centring step for galaxies as large as the weight: newton (plain step where Newton's is ill-conditioned; "
    "some such galaxies do not converge and their group is dropped) or regularised (converges for all of them)"
)


def metacal_config(estimator: str, fixnoise: bool, device: str | None, centring: str = "newton"):
    """The :class:`~deconvbench.metacal.measure.MetacalConfig` of the command's options; a bad
    value, or a ``--device`` whose JAX backend is missing, is a one-line error before any work."""
    from ..metacal.measure import MetacalConfig, jax_route

    try:
        config = MetacalConfig(estimator=estimator, fixnoise=fixnoise, device=device, centring=centring)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None
    if device is not None:
        jax_route(device)
    return config
