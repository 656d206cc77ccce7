"""The executor layer with real processes: ordered results, worker deaths, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from deconvbench.errors import DeconvbenchError
from deconvbench.execution import (
    ExecutorError,
    ExecutorSpec,
    InlineExecutor,
    LocalExecutor,
    Terminated,
    WorkerLostError,
    make_executor,
)

from . import execution_tasks as tasks
from .conftest import make_card

try:
    import distributed
except ImportError:
    distributed = None
needs_dask = pytest.mark.skipif(distributed is None, reason="needs extra [dask]")

REPO = Path(__file__).resolve().parents[1]
SQUARES = [(i, i * i) for i in range(24)]


def dask_spec(workers: int = 2, **kw) -> ExecutorSpec:
    return ExecutorSpec(kind="dask", workers=workers, **kw)


def on_dask(workers: int = 2, **kw):
    return pytest.param(dask_spec(workers, **kw), marks=needs_dask)


# -- options -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, message",
    [
        (ExecutorSpec(kind="ray"), "--executor must be one of local, dask"),
        (ExecutorSpec(workers=0), "-j/--workers must be >= 1"),
        (ExecutorSpec(blas_threads=0), "--blas-threads must be >= 1"),
        (ExecutorSpec(scheduler="tcp://127.0.0.1:8786"), "need --executor dask"),
        (ExecutorSpec(kind="dask", scheduler="tcp://a:1", scheduler_file=Path("f.json")), "not both"),
        (ExecutorSpec(kind="dask", scheduler_file=Path("no-such-scheduler.json")), "scheduler file not found"),
    ],
)
def test_bad_options_are_one_clear_error(spec, message):
    with pytest.raises(ExecutorError, match=message) as info:
        make_executor(spec)
    assert isinstance(info.value, DeconvbenchError) and isinstance(info.value, ValueError)


@needs_dask
def test_unreachable_scheduler_is_an_executor_error(monkeypatch):
    from deconvbench.execution import dask_cluster

    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_SECONDS", 1)
    with (
        pytest.raises(ExecutorError, match="cannot connect to tcp://127.0.0.1:9"),
        make_executor(dask_spec(scheduler="tcp://127.0.0.1:9")),
    ):
        pass


# -- ordered results ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [ExecutorSpec("inline"), ExecutorSpec("local", 1), ExecutorSpec("local", 2), on_dask(2)],
    ids=["inline", "local-1", "local-2", "dask-2"],
)
def test_results_in_task_order_with_a_bounded_window(spec):
    with make_executor(spec) as executor:
        assert executor.map_ordered(tasks.square, range(24), max_in_flight=3) == SQUARES
        consumed = []
        source = iter(range(24))

        def counted():
            for x in source:
                consumed.append(x)
                yield x

        stream = executor.imap_ordered(tasks.square, counted(), max_in_flight=3)
        assert next(stream) == (0, 0)
        assert len(consumed) <= 4  # the window (3) plus the refill after the first result
        assert list(stream) == SQUARES[1:]
        abandoned = executor.imap_ordered(tasks.square, range(100, 124), max_in_flight=3)
        assert next(abandoned) == (100, 10000)
        abandoned.close()  # a caller that stops early leaves nothing behind for the next map
        assert executor.map_ordered(tasks.square, range(24)) == SQUARES


@needs_dask
def test_real_rendering_is_bit_identical_on_every_executor():
    card = make_card()
    chunks = [(card.model_dump_json(), "test", first, 2) for first in range(0, 8, 2)]
    reference = InlineExecutor().map_ordered(tasks.render, chunks)
    for spec in (ExecutorSpec("local", 2), dask_spec(2)):
        with make_executor(spec) as executor:
            got = executor.map_ordered(tasks.render, chunks, max_in_flight=2)
        for ref, new in zip(reference, got, strict=True):
            assert ref.keys() == new.keys()
            for key in ref:
                assert ref[key].tobytes() == new[key].tobytes(), (spec.kind, key)
    assert np.concatenate([r["observed"] for r in reference]).shape[0] == 8


@pytest.mark.parametrize("spec", [ExecutorSpec("local", 2), on_dask(2)], ids=["local", "dask"])
def test_a_task_error_is_raised_as_itself_and_not_retried(spec):
    with make_executor(spec) as executor, pytest.raises(ValueError, match="task 3 is bad"):
        executor.map_ordered(tasks.fail_on_three, range(6))


@pytest.mark.parametrize(
    "spec, threads",
    [
        (ExecutorSpec("local", 1), 1),
        (ExecutorSpec("local", 1, blas_threads=2), 2),
        pytest.param(dask_spec(1), 1, marks=needs_dask),
    ],
    ids=["local", "local-2-threads", "dask"],
)
def test_workers_run_one_blas_thread_unless_asked(spec, threads):
    with make_executor(spec) as executor:
        assert executor.map_ordered(tasks.thread_settings, [0]) == [(str(threads), threads)]


@needs_dask
def test_local_cluster_workers_keep_glibc_malloc_defaults_and_no_profiler(monkeypatch):
    """dask's MALLOC_TRIM_THRESHOLD_ made rendering cost 40-50 % more CPU in its workers."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # as a fresh command starts
    with make_executor(dask_spec(1)) as executor:
        assert executor.map_ordered(tasks.malloc_and_profiler, [0]) == [(None, False)]


# -- a worker dies mid-task --------------------------------------------------------------
@pytest.mark.parametrize("spec", [ExecutorSpec("local", 2), on_dask(2)], ids=["local", "dask"])
def test_a_killed_worker_has_its_task_rerun_nothing_lost_or_doubled(spec, tmp_path):
    marker = tmp_path / "died"
    work = [(i, str(marker), 5, 0.05) for i in range(16)]
    with make_executor(spec) as executor:
        got = executor.map_ordered(tasks.die_once, work, max_in_flight=4)
        if spec.kind == "local":
            assert executor.pool_restarts == 1
    assert marker.exists()  # task 5 did kill its worker process
    assert (
        not psutil.pid_exists(int(marker.read_text()))
        or psutil.Process(int(marker.read_text())).status() == psutil.STATUS_ZOMBIE
    )
    assert got == [(i, i * i) for i in range(16)]


def test_a_task_that_always_kills_its_worker_is_given_up():
    with (
        LocalExecutor(2, retries=1) as executor,
        pytest.raises(WorkerLostError, match="task 0 lost its worker process 2 times"),
    ):
        executor.map_ordered(tasks.always_die, range(2))


# -- interrupts: no worker left behind ---------------------------------------------------
def _start_client(kind: str, folder: Path, workers: int = 2) -> tuple[subprocess.Popen, list[psutil.Process]]:
    code = "import sys; from tests.execution_tasks import client_main; sys.exit(client_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, kind, str(workers), str(folder)],
        cwd=REPO,
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.started"))) < workers:  # every worker is busy in a task
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.1)
    busy = {int(p.read_text()) for p in folder.glob("*.started")}
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert busy <= {p.pid for p in descendants}
    return proc, descendants


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_all_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while _alive(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(processes)


@pytest.mark.parametrize("kind", ["local", pytest.param("dask", marks=needs_dask)])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_an_interrupted_client_leaves_no_worker_behind(kind, how, tmp_path):
    proc, descendants = _start_client(kind, tmp_path)
    try:
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        returncode = proc.wait(timeout=30)
        if how == "sigkill":
            assert returncode == -signal.SIGKILL
            assert _wait_all_gone(descendants, 10) == []
        else:
            stderr = proc.stderr.read()
            assert returncode == 130, stderr
            assert "worker processes left: 0" in stderr  # shut down by the executor, not by our exit
            assert _wait_all_gone(descendants, 2) == []
    finally:
        for process in _alive([psutil.Process(proc.pid)] if proc.poll() is None else []) + _alive(descendants):
            process.kill()


def test_sigterm_becomes_terminated_inside_the_context_and_is_restored_after():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, LocalExecutor(1):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


# -- an existing cluster, reached through its scheduler file ------------------------------
def _complete_json(path: Path) -> bool:
    try:
        return "address" in json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False


@needs_dask
def test_a_remote_cluster_through_its_scheduler_file(tmp_path):
    """``dask scheduler`` + ``dask worker`` as separate processes (what a SLURM job runs); the
    worker without a nanny, so that only the executor's plugin can cap its threads."""
    scheduler_file = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m"]
    common = dict(cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(
        dask_cli
        + [
            "distributed.cli.dask_scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
        ],
        **common,
    )
    worker = subprocess.Popen(
        dask_cli
        + [
            "distributed.cli.dask_worker",
            "--scheduler-file",
            str(scheduler_file),
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "4"},
        **common,
    )
    try:
        deadline = time.monotonic() + 60
        while not _complete_json(scheduler_file):  # the scheduler writes it in place, not atomically
            assert time.monotonic() < deadline and scheduler.poll() is None, "scheduler did not start"
            time.sleep(0.1)
        with make_executor(dask_spec(1, scheduler_file=scheduler_file)) as executor:
            executor.client.wait_for_workers(1, timeout=60)
            assert executor.map_ordered(tasks.square, range(24)) == SQUARES
            # the worker was started with 4 OpenMP threads; the executor's plugin capped it at 1
            assert executor.map_ordered(tasks.thread_settings, [0]) == [("1", 1)]
        assert scheduler.poll() is None and worker.poll() is None  # a remote cluster is not ours to stop
    finally:
        for proc in (worker, scheduler):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
