"""Task functions for the executor tests (module level, so that worker processes import them)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def mark(path: str | Path) -> None:
    """Writes this process's pid to ``path`` atomically (a temporary file renamed over it), so
    that a test polling for the file never reads it empty, half written."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(os.getpid()))
    os.replace(partial, path)


def square(x: int) -> tuple[int, int]:
    return x, x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("task 3 is bad")
    return x


def thread_settings(_task) -> tuple[str | None, int]:
    """(OMP_NUM_THREADS, the largest BLAS/OpenMP pool size) as seen inside a worker."""
    import numpy as np  # noqa: F401  (loads OpenBLAS in the worker)
    from threadpoolctl import threadpool_info

    return os.environ.get("OMP_NUM_THREADS"), max(pool["num_threads"] for pool in threadpool_info())


def malloc_and_profiler(_task) -> tuple[str | None, bool | None]:
    """(MALLOC_TRIM_THRESHOLD_ in the environment, whether a Dask worker's profiler is on)."""
    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get("distributed.worker.profile.enabled", None)


def render(task: tuple[str, str, int, int]) -> dict:
    """One chunk of a real dataset: ``render_chunk(card_json, split, first_group, n_groups)``."""
    from deconvbench.sim.generate import render_chunk

    return render_chunk(*task)


def die_once(task: tuple[int, str, int, float]) -> tuple[int, int]:
    """``square`` after ``seconds``; task ``die_at`` SIGKILLs its own worker on its first run
    (the marker file records that first run), mid-task, with other tasks in flight."""
    x, marker, die_at, seconds = task
    time.sleep(seconds)
    if x == die_at and not os.path.exists(marker):
        mark(marker)
        os.kill(os.getpid(), signal.SIGKILL)
    return x, x * x


def always_die(_task) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_forever(task: tuple[int, str]) -> int:
    """Marks that it started (file ``{x}.started`` in the folder) and sleeps."""
    x, folder = task
    mark(Path(folder, f"{x}.started"))
    time.sleep(600)
    return x


def live_workers() -> list:
    """Live child processes of this one, except multiprocessing's resource tracker (which
    lives as long as its parent, by design)."""
    import psutil

    live = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                live.append(child)
        except psutil.NoSuchProcess:
            pass
    return live


def client_main(argv: list[str]) -> int:
    """A client that the tests interrupt: ``KIND WORKERS FOLDER``; exits 130 on Ctrl-C/SIGTERM
    the way the command line does, after saying how many worker processes the executor's
    shutdown left alive."""
    from deconvbench.execution import ExecutorSpec, make_executor

    kind, workers, folder = argv[0], int(argv[1]), argv[2]
    try:
        with make_executor(ExecutorSpec(kind=kind, workers=workers)) as executor:
            for _ in executor.imap_ordered(wait_forever, [(i, folder) for i in range(8)]):
                pass
    except KeyboardInterrupt:
        print(f"interrupted; worker processes left: {len(live_workers())}", file=sys.stderr)
        return 130
    return 0


def run_client_main(argv: list[str]) -> None:
    """``deconvbench run ARGS`` (argv: ``FOLDER ARGS...``) whose progress bar, when the first
    task has come back, writes ``FOLDER/started`` and waits for the test's Ctrl-C; on exit
    says how many worker processes the executor's shutdown left alive."""
    import contextlib

    from deconvbench import cli
    from deconvbench.cli import run as run_command

    folder, args = argv[0], argv[1:]

    @contextlib.contextmanager
    def waiting_progress(description, total):
        def advance(count):
            mark(Path(folder, "started"))
            time.sleep(600)

        yield advance

    run_command.progress_task = waiting_progress
    try:
        cli.main(args)
    except SystemExit as exc:
        print(f"exit {exc.code}; worker processes left: {len(live_workers())}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
