"""Local executor: a pool of ``workers`` spawned processes on this machine (``-j K``).

A worker that dies mid-task (killed, out of memory, segfault) breaks a
:class:`~concurrent.futures.ProcessPoolExecutor` for every task in flight. The executor
then kills what is left of the pool, starts a fresh one and resubmits exactly the tasks
whose results it has not received; results already received are kept. A task is tried at
most ``1 + retries`` times before :class:`WorkerLostError`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .base import Executor, ExecutorError, WorkerLostError
from .worker import init_local_worker

KILL_JOIN_SECONDS = 5.0


@dataclass
class _InFlight:
    index: int
    task: Any
    future: Future
    attempts: int = 1


class LocalExecutor(Executor):
    """``workers`` spawned processes, each with ``blas_threads`` BLAS/FFT threads."""

    kind = "local"

    def __init__(self, workers: int, blas_threads: int = 1, retries: int = 3):
        super().__init__()
        if workers < 1:
            raise ExecutorError(f"-j/--workers must be >= 1, got {workers}")
        self.workers = workers
        self.blas_threads = blas_threads
        self.retries = retries
        self._pool: ProcessPoolExecutor | None = None
        self.pool_restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_local_worker,
            initargs=(os.getpid(), self.blas_threads),
        )

    def _start(self) -> None:
        self._pool = self._new_pool()

    def worker_pids(self) -> list[int]:
        """Process ids of the current pool's workers (those started so far)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(KILL_JOIN_SECONDS)
        pool.shutdown(wait=True, cancel_futures=True)

    def _shutdown(self, abort: bool) -> None:
        if abort:
            self._kill_pool()
        elif self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _resubmit_lost(self, fn, in_flight: deque[_InFlight]) -> None:
        """After a pool broke: fresh pool, resubmit every task without a received result."""
        self._kill_pool()
        self._pool = self._new_pool()
        self.pool_restarts += 1
        for entry in in_flight:
            future = entry.future
            if future.done() and not future.cancelled() and not isinstance(future.exception(), BrokenProcessPool):
                continue  # finished (or failed on its own) before the pool broke
            entry.attempts += 1
            if entry.attempts > 1 + self.retries:
                raise WorkerLostError(
                    f"task {entry.index} lost its worker process {entry.attempts - 1} times; giving up"
                )
            entry.future = self._pool.submit(fn, entry.task)

    def imap_ordered(self, fn, tasks, max_in_flight=None):
        window = self.window(max_in_flight)
        self.start()
        todo = enumerate(tasks)
        in_flight: deque[_InFlight] = deque()

        def fill() -> None:
            while len(in_flight) < window:
                item = next(todo, None)
                if item is None:
                    return
                index, task = item
                try:
                    future = self._pool.submit(fn, task)
                except BrokenProcessPool:  # broke while submitting: resubmitted below
                    future = Future()
                    future.set_exception(BrokenProcessPool("pool broke during submit"))
                in_flight.append(_InFlight(index, task, future))

        try:
            fill()
            while in_flight:
                head = in_flight[0]
                try:
                    result = head.future.result()
                except BrokenProcessPool:
                    self._resubmit_lost(fn, in_flight)
                    continue
                in_flight.popleft()
                fill()  # keep the workers busy while the caller handles the result
                yield result
        finally:  # an error, an interrupt or a caller that stopped early: drop what has not started
            for entry in in_flight:
                entry.future.cancel()
