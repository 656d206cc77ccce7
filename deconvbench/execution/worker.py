"""What every worker process does before its first task, whatever the executor.

* **Threads.** A worker runs ``blas_threads`` BLAS/OpenMP/FFT threads (default 1): the
  parallelism is in the number of workers, sized from ``-j`` or the cluster, never from
  ``os.cpu_count()``. The limit is set in the environment (for libraries loaded later)
  and through threadpoolctl (for libraries already loaded).
* **No orphans.** A local worker asks the Linux kernel to kill it when its parent dies
  (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so a client killed with SIGKILL leaves no worker
  behind; elsewhere a daemon thread polls the parent pid once a second.
* **Ctrl-C belongs to the client.** A terminal sends SIGINT to the whole process group; a
  local worker ignores it and the client shuts the pool down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

from ..fourier import set_fft_threads

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def thread_env(blas_threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS/OpenMP threads at ``blas_threads`` per process."""
    return {name: str(blas_threads) for name in THREAD_ENV_VARS}


def limit_threads(blas_threads: int) -> None:
    """Cap this process's BLAS/OpenMP thread pools at ``blas_threads`` (and scipy.fft's and
    torch's, if loaded)."""
    os.environ.update(thread_env(blas_threads))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas_threads)
    set_fft_threads(blas_threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(blas_threads)


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` (its parent) is gone, even after SIGKILL."""
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
            return
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def init_local_worker(parent_pid: int, blas_threads: int) -> None:
    """Initialiser of a local pool worker: ignore SIGINT, die with the parent, cap threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    limit_threads(blas_threads)
