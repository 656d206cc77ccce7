"""Where tasks run: local worker processes or a Dask cluster, behind one interface.

The work itself (render a range of groups, deconvolve a range of batches, accumulate
metacal sums) is one pure function of its task, the same for every executor; an executor
only decides where the calls run and hands the results back in task order:

=========================  ==============================================================
``ExecutorSpec(kind=...)``  what it starts
=========================  ==============================================================
``"local"`` (default)       ``workers`` spawned processes on this machine (``-j K``)
``"dask"``                  with ``scheduler``/``scheduler_file``: a client of that cluster;
                            without: a LocalCluster of ``workers`` processes × 1 thread
``"inline"``                no process at all: tasks run in the caller (the reference run)
=========================  ==============================================================

Workers run ``blas_threads`` BLAS/FFT threads (default 1) and are sized from ``workers``,
never from ``os.cpu_count()``. See :mod:`.base` for ordering, faults and interrupts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Executor, ExecutorError, InlineExecutor, Terminated, WorkerLostError
from .local import LocalExecutor

KINDS = ("local", "dask", "inline")
DEFAULT_RETRIES = 3

__all__ = [
    "KINDS",
    "Executor",
    "ExecutorError",
    "ExecutorSpec",
    "InlineExecutor",
    "LocalExecutor",
    "Terminated",
    "WorkerLostError",
    "make_executor",
]


@dataclass(frozen=True)
class ExecutorSpec:
    """Where to run: the command-line options ``--executor``, ``-j``, ``--scheduler``,
    ``--scheduler-file`` (and ``--blas-threads``) as one value."""

    kind: str = "local"
    workers: int = 1
    scheduler: str | None = None
    scheduler_file: Path | None = None
    blas_threads: int = 1
    retries: int = DEFAULT_RETRIES

    def validate(self) -> ExecutorSpec:
        """Return self, or raise :class:`ExecutorError` naming the bad option."""
        if self.kind not in KINDS:
            raise ExecutorError(f"--executor must be one of {', '.join(KINDS[:2])}, got {self.kind!r}")
        if self.workers < 1:
            raise ExecutorError(f"-j/--workers must be >= 1, got {self.workers}")
        if self.blas_threads < 1:
            raise ExecutorError(f"--blas-threads must be >= 1, got {self.blas_threads}")
        if self.retries < 0:
            raise ExecutorError(f"retries must be >= 0, got {self.retries}")
        if self.kind != "dask" and (self.scheduler or self.scheduler_file):
            raise ExecutorError("--scheduler and --scheduler-file need --executor dask")
        if self.scheduler and self.scheduler_file:
            raise ExecutorError("give either --scheduler or --scheduler-file, not both")
        if self.scheduler_file is not None and not Path(self.scheduler_file).is_file():
            raise ExecutorError(f"scheduler file not found: {self.scheduler_file}")
        return self


def make_executor(spec: ExecutorSpec) -> Executor:
    """An unstarted executor for ``spec``; use it as a context manager."""
    spec.validate()
    if spec.kind == "inline":
        return InlineExecutor()
    if spec.kind == "local":
        return LocalExecutor(spec.workers, blas_threads=spec.blas_threads, retries=spec.retries)
    from .dask_cluster import DaskExecutor

    return DaskExecutor(
        spec.workers,
        scheduler=spec.scheduler,
        scheduler_file=spec.scheduler_file,
        blas_threads=spec.blas_threads,
        retries=spec.retries,
    )
