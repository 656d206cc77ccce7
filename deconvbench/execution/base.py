"""The executor interface: where tasks run, never what they do.

A *task* is one picklable argument; ``fn(task)`` is a pure function of it (a module-level
function, so that any worker can import it). Results come back **in task order** with a
bounded number of tasks in flight, so a caller can write an HDF5 file in index order,
accumulate sums or collect per-batch metrics with bounded memory::

    with make_executor(ExecutorSpec(kind="dask", workers=2)) as executor:
        for arrays in executor.imap_ordered(render_chunk, chunks):
            writer.write(arrays)

Each result is yielded exactly once, keyed by its task index: a task whose worker died is
run again, and only one of its runs is ever yielded, so nothing is lost or counted twice.

Leaving the ``with`` block shuts every worker down. On Ctrl-C (KeyboardInterrupt) or
SIGTERM (:class:`Terminated`, a KeyboardInterrupt) the workers are killed at once and the
interrupt is re-raised; the command line turns it into one line and a non-zero exit.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import DeconvbenchError


class ExecutorError(DeconvbenchError, ValueError):
    """The executor options are invalid or its cluster cannot be reached."""


class WorkerLostError(DeconvbenchError, RuntimeError):
    """A task lost its worker process more often than the executor's ``retries``."""


class Terminated(KeyboardInterrupt):
    """The client received SIGTERM (raised in the main thread while an executor is open)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


class Executor(ABC):
    """Runs ``fn(task)`` for a stream of tasks somewhere; a context manager.

    ``workers`` is the number of task slots (processes × threads) the executor believes it
    has; it sizes the default in-flight window (``2 × workers``).
    """

    kind: str = ""
    workers: int = 1

    def __init__(self) -> None:
        self._started = False
        self._previous_sigterm = None

    # -- lifecycle ---------------------------------------------------------------------
    @abstractmethod
    def _start(self) -> None:
        """Create pools, clusters or clients."""

    @abstractmethod
    def _shutdown(self, abort: bool) -> None:
        """Release every worker; with ``abort`` kill running tasks instead of waiting."""

    def start(self) -> Executor:
        if not self._started:
            self._started = True
            self._start()
        return self

    def close(self, abort: bool = False) -> None:
        if self._started:
            self._started = False
            self._shutdown(abort)

    def __enter__(self) -> Executor:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return self.start()
        except BaseException:
            self.close(abort=True)
            self._restore_sigterm()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close(abort=exc_type is not None)
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- work --------------------------------------------------------------------------
    def window(self, max_in_flight: int | None) -> int:
        """Tasks kept in flight: ``max_in_flight`` or twice the worker count."""
        if max_in_flight is None:
            return 2 * max(1, self.workers)
        if max_in_flight < 1:
            raise ExecutorError(f"max_in_flight must be >= 1, got {max_in_flight}")
        return max_in_flight

    @abstractmethod
    def imap_ordered(
        self, fn: Callable[[Any], Any], tasks: Iterable[Any], max_in_flight: int | None = None
    ) -> Iterator[Any]:
        """Yield ``fn(task)`` for every task, in task order, with at most
        ``max_in_flight`` tasks submitted but not yet yielded."""

    def map_ordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any], max_in_flight: int | None = None) -> list:
        """``list(imap_ordered(...))``."""
        return list(self.imap_ordered(fn, tasks, max_in_flight))


class InlineExecutor(Executor):
    """Runs every task in the calling process, one after the other (the reference run;
    no worker processes, threads and signals are left as they are)."""

    kind = "inline"

    def __init__(self) -> None:
        super().__init__()
        self.workers = 1

    def _start(self) -> None:
        pass

    def _shutdown(self, abort: bool) -> None:
        pass

    def imap_ordered(self, fn, tasks, max_in_flight=None):
        self.window(max_in_flight)
        self.start()
        for task in tasks:
            yield fn(task)
