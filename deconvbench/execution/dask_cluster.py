"""Dask executor: tasks run on a dask.distributed cluster (extra ``[dask]``).

* ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) or ``scheduler_file`` (the
  JSON file ``dask scheduler --scheduler-file F`` or dask-jobqueue writes): connect a
  :class:`distributed.Client` to that cluster; its workers are whatever it has.
* neither: start a :class:`distributed.LocalCluster` on this machine with ``workers``
  worker processes of one thread each (the dask counterpart of ``--executor local -j K``).

Every worker runs ``blas_threads`` BLAS/FFT threads (a worker plugin sets the limit on
remote workers too). A worker that dies mid-task is replaced (LocalCluster restarts it)
and the scheduler reruns its tasks elsewhere; a task is given up, as
:class:`WorkerLostError`, after ``retries`` worker deaths (the scheduler's
``allowed-failures``; for a remote scheduler its own configuration decides). Tasks that
raise are not retried: tasks are deterministic, a second run would raise again.

Dask's own worker processes exit when the process that started them dies (a pipe to the
parent is watched), so a LocalCluster leaves no orphans either; they ignore SIGINT (Ctrl-C
in a terminal reaches the whole process group), and the client shuts them down.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections import deque
from pathlib import Path

from .base import Executor, ExecutorError, WorkerLostError
from .worker import limit_threads, thread_env

try:
    import dask
    import distributed
    from distributed import WorkerPlugin
except ImportError:  # the executor explains it when asked for
    distributed = None
    WorkerPlugin = object

CONNECT_TIMEOUT_SECONDS = 30
CLOSE_TIMEOUT_SECONDS = 30

#: Dask settings of the LocalCluster this executor starts (a remote cluster keeps its own;
#: the README says how to give SLURM workers the same):
#:
#: * no ``MALLOC_TRIM_THRESHOLD_`` in the workers' environment: dask sets it by default (to
#:   return memory to the OS sooner), and an explicit threshold turns off glibc's dynamic
#:   mmap threshold, so every large numpy array becomes a fresh ``mmap`` whose pages the
#:   kernel faults in and zeroes: measured +40–50 % CPU time on the generator's rendering;
#: * no statistical profiler in the workers (a thread sampling every task's stack every
#:   10 ms, only read by the dashboard, which is off).
LOCAL_CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


class ThreadLimitPlugin(WorkerPlugin):
    """Caps BLAS/FFT threads in every worker process of the cluster, present and future."""

    name = "deconvbench-thread-limit"

    def __init__(self, blas_threads: int):
        self.blas_threads = blas_threads

    def setup(self, worker) -> None:
        limit_threads(self.blas_threads)


class IgnoreInterruptPlugin(WorkerPlugin):
    """Ctrl-C belongs to the client: the worker processes of a LocalCluster started here
    ignore SIGINT (a terminal sends it to the whole process group), so that the client shuts
    them down instead of each printing its own KeyboardInterrupt traceback."""

    name = "deconvbench-ignore-sigint"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class DaskExecutor(Executor):
    """Runs tasks on a dask.distributed cluster (remote, or a LocalCluster it starts)."""

    kind = "dask"

    def __init__(
        self,
        workers: int = 1,
        scheduler: str | None = None,
        scheduler_file: str | Path | None = None,
        blas_threads: int = 1,
        retries: int = 3,
    ):
        super().__init__()
        if distributed is None:
            raise ExecutorError("--executor dask needs the extra [dask]: pip install 'deconvbench[dask]'")
        if scheduler and scheduler_file:
            raise ExecutorError("give either --scheduler or --scheduler-file, not both")
        if scheduler_file is not None and not Path(scheduler_file).is_file():
            raise ExecutorError(f"scheduler file not found: {scheduler_file}")
        if workers < 1:
            raise ExecutorError(f"-j/--workers must be >= 1, got {workers}")
        self.workers = workers
        self.scheduler = scheduler
        self.scheduler_file = None if scheduler_file is None else str(scheduler_file)
        self.blas_threads = blas_threads
        self.retries = retries
        self.cluster = None
        self.client = None

    @property
    def remote(self) -> bool:
        return bool(self.scheduler or self.scheduler_file)

    def _start(self) -> None:
        if self.remote:
            where = self.scheduler or f"the scheduler in {self.scheduler_file}"
            try:
                self.client = distributed.Client(
                    self.scheduler,
                    scheduler_file=self.scheduler_file,
                    timeout=CONNECT_TIMEOUT_SECONDS,
                    set_as_default=False,
                )
            except (OSError, TimeoutError, ValueError) as exc:
                raise ExecutorError(f"cannot connect to {where}: {exc}") from None
            threads = sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values())
            self.workers = max(1, threads)
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": self.retries, **LOCAL_CLUSTER_CONFIG}):
                self.cluster = distributed.LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    env=thread_env(self.blas_threads),
                    # no dashboard; the scheduler's small HTTP server on a free local port
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.ERROR,
                )
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.client.register_plugin(IgnoreInterruptPlugin())
        self.client.register_plugin(ThreadLimitPlugin(self.blas_threads))

    def worker_pids(self) -> list[int]:
        """Process ids of the cluster's worker processes."""
        return sorted(self.client.run(_getpid).values())

    def _shutdown(self, abort: bool) -> None:
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        try:
            if client is not None:
                client.close(timeout=CLOSE_TIMEOUT_SECONDS)  # cancels this client's tasks
        finally:
            if cluster is not None:
                cluster.close(timeout=CLOSE_TIMEOUT_SECONDS)

    def imap_ordered(self, fn, tasks, max_in_flight=None):
        window = self.window(max_in_flight)
        self.start()
        run = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        todo = enumerate(tasks)
        in_flight: deque = deque()

        def fill() -> None:
            while len(in_flight) < window:
                item = next(todo, None)
                if item is None:
                    return
                index, task = item
                in_flight.append(self.client.submit(fn, task, key=f"{run}-{index}", pure=False, retries=0))

        try:
            fill()
            while in_flight:
                try:
                    result = in_flight[0].result()
                except distributed.KilledWorker as exc:
                    raise WorkerLostError(f"task {in_flight[0].key} lost its worker too often: {exc}") from None
                in_flight.popleft().release()
                fill()
                yield result
        finally:  # an error, an interrupt or a caller that stopped early: drop the rest
            if in_flight and self.client is not None:
                self.client.cancel(list(in_flight), force=True)


def _getpid() -> int:
    import os

    return os.getpid()
