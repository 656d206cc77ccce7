"""generate and bias on every executor: the same bytes and the same sums, also when a worker
of a real Dask LocalCluster is killed mid-run; the executor options of the command line."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from deconvbench import bias as bias_module
from deconvbench.bias import run_bias
from deconvbench.cards import load_card
from deconvbench.execution import ExecutorSpec, WorkerLostError
from deconvbench.methods import load_method
from deconvbench.sim import generate as generate_module
from deconvbench.sim.generate import generate

try:
    import distributed
except ImportError:
    distributed = None
needs_dask = pytest.mark.skipif(distributed is None, reason="needs extra [dask]")

DASK_2 = ExecutorSpec(kind="dask", workers=2)  # a LocalCluster of its own, as the command starts it
BIAS_N = 64
BIAS_CHUNK_GROUPS = 2  # 8 tasks of 8 stamps


@pytest.fixture(scope="module")
def shared_cluster():
    """One LocalCluster of 2 single-thread worker processes (with nannies, which restart a
    killed worker) shared by the tests of this module: workers stay warm between tests."""
    from deconvbench.execution.worker import thread_env

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env=thread_env(1),
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield ExecutorSpec(kind="dask", scheduler=cluster.scheduler_address)


@pytest.fixture(scope="module")
def smoke():
    return load_card("smoke")


@pytest.fixture(scope="module")
def smoke_metacal():
    return load_card("smoke-metacal")


@pytest.fixture(scope="module")
def inline_checksum(smoke, tmp_path_factory):
    return generate(smoke, "test", tmp_path_factory.mktemp("inline") / "test.h5").checksum


@pytest.fixture(scope="module")
def inline_bias(smoke_metacal, tmp_path_factory):
    out = tmp_path_factory.mktemp("bias") / "inline.json"
    return run_bias(load_method("fft"), smoke_metacal, "snr50", BIAS_N, out, chunk_groups=BIAS_CHUNK_GROUPS)


def same_numbers(a: dict, b: dict) -> None:
    """Bit-identical m, c, errors, counts and stamp digest (the floats compared with ==)."""
    assert a["dataset"]["checksum"] == b["dataset"]["checksum"]
    assert json.dumps(a["metacal"]["overall"], sort_keys=True) == json.dumps(b["metacal"]["overall"], sort_keys=True)
    assert json.dumps(a["metacal"]["truth_floor"], sort_keys=True) == json.dumps(
        b["metacal"]["truth_floor"], sort_keys=True
    )


def kill_one_worker_after_first_result(monkeypatch, module):
    """Make ``module``'s executor SIGKILL one of its worker processes when the client has
    received its first result (other tasks are in flight); returns the list of killed pids."""
    killed: list[int] = []
    real_make_executor = module.make_executor

    def make_executor(spec):
        executor = real_make_executor(spec)
        real_imap = executor.imap_ordered

        def imap_ordered(fn, tasks, max_in_flight=None):
            for index, result in enumerate(real_imap(fn, tasks, max_in_flight)):
                if index == 0:
                    pid = executor.worker_pids()[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                yield result

        executor.imap_ordered = imap_ordered
        return executor

    monkeypatch.setattr(module, "make_executor", make_executor)
    return killed


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# -- generate ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec", [ExecutorSpec(kind="local", workers=2), pytest.param(DASK_2, marks=needs_dask)], ids=["local", "dask"]
)
def test_generate_writes_the_same_file_on_every_executor(spec, smoke, inline_checksum, tmp_path):
    report = generate(smoke, "test", tmp_path / "test.h5", executor=spec)
    assert report.checksum == inline_checksum
    assert report.workers == 2


@needs_dask
def test_generate_survives_a_killed_dask_worker(smoke, inline_checksum, shared_cluster, monkeypatch, tmp_path):
    killed = kill_one_worker_after_first_result(monkeypatch, generate_module)
    report = generate(smoke, "test", tmp_path / "test.h5", executor=shared_cluster)
    assert killed and gone(killed[0])
    assert report.checksum == inline_checksum


# -- bias ----------------------------------------------------------------------------------
@needs_dask
def test_bias_sums_are_bit_identical_on_dask(smoke_metacal, inline_bias, shared_cluster, tmp_path):
    result = run_bias(
        load_method("fft"),
        smoke_metacal,
        "snr50",
        BIAS_N,
        tmp_path / "dask.json",
        chunk_groups=BIAS_CHUNK_GROUPS,
        executor=shared_cluster,
    )
    same_numbers(result, inline_bias)
    assert result["metacal"]["overall"]["n"] == BIAS_N


def test_a_bias_run_stopped_inline_resumes_on_local_workers_to_the_same_numbers(smoke_metacal, inline_bias, tmp_path):
    out = tmp_path / "local.json"
    args = (smoke_metacal, "snr50", BIAS_N, out)
    assert run_bias(load_method("fft"), *args, chunk_groups=BIAS_CHUNK_GROUPS, stop_after_chunks=3) is None
    assert out.with_name(out.name + ".partial.npz").exists()
    local = ExecutorSpec(kind="local", workers=2)
    same_numbers(run_bias(load_method("fft"), *args, chunk_groups=BIAS_CHUNK_GROUPS, executor=local), inline_bias)


@needs_dask
def test_bias_survives_a_killed_dask_worker(smoke_metacal, inline_bias, shared_cluster, monkeypatch, tmp_path):
    killed = kill_one_worker_after_first_result(monkeypatch, bias_module)
    result = run_bias(
        load_method("fft"),
        smoke_metacal,
        "snr50",
        BIAS_N,
        tmp_path / "killed.json",
        chunk_groups=BIAS_CHUNK_GROUPS,
        executor=shared_cluster,
    )
    assert killed and gone(killed[0])
    same_numbers(result, inline_bias)


# -- the command line ----------------------------------------------------------------------
def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the command line in this process: (exit status, stderr)."""
    from deconvbench import cli as cli_package

    with pytest.raises(SystemExit) as info:
        cli_package.main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler and --scheduler-file need --executor dask"),
        (["--executor", "ray"], "--executor must be one of local, dask, got 'ray'"),
        (["-j", "0"], "-j/--workers must be >= 1, got 0"),
        (["--blas-threads", "0"], "--blas-threads must be >= 1, got 0"),
        (["--executor", "dask", "--scheduler-file", "no-such.json"], "scheduler file not found: no-such.json"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "smoke", "--split", "test"],
        ["bias", "--method", "fft", "--card", "smoke-metacal", "--split", "snr50", "--n", "8"],
    ],
    ids=["generate", "bias"],
)
def test_bad_executor_options_are_one_line_exit_2(command, options, message, capsys, tmp_path):
    status, err = cli([*command, *options, "--out", str(tmp_path / "x")], capsys)
    assert (status, err.strip()) == (2, f"error: {message}")
    assert not list(tmp_path.iterdir())


def test_a_worker_lost_too_often_is_one_line_exit_1(monkeypatch, capsys, tmp_path):
    def lose(*args, **kwargs):
        raise WorkerLostError("task 3 lost its worker process 4 times; giving up")

    monkeypatch.setattr(generate_module, "generate", lose)
    status, err = cli(["generate", "smoke", "--split", "test", "--out", str(tmp_path / "x.h5")], capsys)
    assert (status, err.strip()) == (1, "error: task 3 lost its worker process 4 times; giving up")


def test_the_generate_command_passes_its_executor_options(monkeypatch, capsys, tmp_path):
    seen = []

    def record(card, split, path, n=None, progress=None, executor=None):
        seen.append(executor)
        raise WorkerLostError("stop here")

    monkeypatch.setattr(generate_module, "generate", record)
    argv = ["generate", "smoke", "--split", "test", "--out", str(tmp_path / "x.h5")]
    cli([*argv, "--executor", "dask", "-j", "3", "--blas-threads", "2"], capsys)
    cli([*argv, "-j", "2"], capsys)
    cli(argv, capsys)
    assert seen == [
        ExecutorSpec(kind="dask", workers=3, blas_threads=2),
        ExecutorSpec(kind="local", workers=2),
        ExecutorSpec(kind="inline", workers=1),
    ]
