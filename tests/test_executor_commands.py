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
    import dask

    from deconvbench.execution.dask_cluster import LOCAL_CLUSTER_CONFIG
    from deconvbench.execution.worker import thread_env

    with (
        dask.config.set(LOCAL_CLUSTER_CONFIG),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=thread_env(1),
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        ) as cluster,
    ):
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
    # the workers' own peak memory is recorded, not only the client's
    assert 50 < result["worker_peak_memory_mb"] < 4000


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
        ["run", "--method", "fft", "--dataset", "smoke", "--split", "test", "--executor", "local"],
    ],
    ids=["generate", "bias", "run"],
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


# -- run -----------------------------------------------------------------------------------
RUN_BATCH = 16  # 4 batches of the 64 smoke stamps; one batch per task


def run_with_state(path, out, monkeypatch, **kwargs) -> tuple[dict, dict]:
    """``run_method(fft, path, out, metacal with fixnoise, batch size 16, one batch per task, estimates saved
    to OUT.h5, **kwargs)``: (result, the per-stamp arrays it was built from and the estimates)."""
    import h5py

    from deconvbench import harness
    from deconvbench.metacal.measure import MetacalConfig

    seen = {}
    real_build = harness.build_result

    def build_result(method, attrs, params, state, *args):
        seen.update({f"metric:{k}": v for k, v in state.metrics.items()})
        seen.update({f"mcal:{k}": v for k, v in state.mcal.items()})
        seen.update({f"truth:{k}": v for k, v in state.mcal_truth.items()})
        seen["status"] = state.status
        return real_build(method, attrs, params, state, *args)

    monkeypatch.setattr(harness, "build_result", build_result)
    kwargs.setdefault("task_batches", 1)
    outputs = out.with_suffix(".h5")
    result = harness.run_method(
        load_method("fft"),
        path,
        out,
        batch_size=RUN_BATCH,
        metacal=MetacalConfig(fixnoise=True),
        save_outputs=outputs,
        **kwargs,
    )
    with h5py.File(outputs) as f:
        seen["estimate"] = f["estimate"][:]
    return result, seen


def same_per_stamp(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    """Bit-identical per-stamp metrics and metacal measurements, the same m, c and checksum."""
    import numpy as np

    (result_a, stamps_a), (result_b, stamps_b) = a, b
    assert sorted(stamps_a) == sorted(stamps_b) and len(stamps_a) > 10
    for key in stamps_a:
        np.testing.assert_array_equal(stamps_a[key], stamps_b[key], err_msg=key)
    same_numbers(result_a, result_b)
    assert json.dumps(result_a["metrics"], sort_keys=True) == json.dumps(result_b["metrics"], sort_keys=True)
    assert result_a["dataset"]["checksum_verified"] and result_b["dataset"]["checksum_verified"]


@pytest.fixture(scope="module")
def run_metacal_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "smoke-metacal-snr50.h5"
    generate(load_card("smoke-metacal"), "snr50", path)
    return path


@pytest.fixture(scope="module")
def inline_run(run_metacal_file, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        return run_with_state(run_metacal_file, tmp_path_factory.mktemp("inline-run") / "r.json", monkeypatch)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    "spec", [ExecutorSpec(kind="local", workers=2), pytest.param(DASK_2, marks=needs_dask)], ids=["local", "dask"]
)
def test_run_gives_bit_identical_per_stamp_results_on_every_executor(
    spec, run_metacal_file, inline_run, monkeypatch, tmp_path
):
    ran = run_with_state(run_metacal_file, tmp_path / "r.json", monkeypatch, executor=spec)
    same_per_stamp(ran, inline_run)
    throughput, reference = ran[0]["throughput"], inline_run[0]["throughput"]
    assert (throughput["executor"], throughput["workers"]) == (spec.kind, 2)
    assert (reference["executor"], reference["workers"]) == ("in-process", 1)
    assert throughput["wall_gal_per_s"] > 0 and throughput["deconv_gal_per_s"] > 0
    assert 50 < ran[0]["worker_peak_memory_mb"] < 4000  # the workers' peak, not only the client's


def test_an_interrupted_executor_run_resumes_to_the_same_numbers(run_metacal_file, inline_run, monkeypatch, tmp_path):
    """Stopped (Ctrl-C) after its first task on 2 local workers, resumed on the inline path."""
    from deconvbench.harness import checkpoint_path

    out = tmp_path / "r.json"
    calls = []

    def interrupt_after_first_task(count):
        calls.append(count)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_with_state(
            run_metacal_file,
            out,
            monkeypatch,
            executor=ExecutorSpec(kind="local", workers=2),
            progress=interrupt_after_first_task,
        )
    assert calls == [RUN_BATCH] and not out.exists() and checkpoint_path(out).exists()
    resumed = run_with_state(
        run_metacal_file, out, monkeypatch, resume=True, executor=ExecutorSpec(kind="local", workers=2)
    )
    same_per_stamp(resumed, inline_run)
    assert not checkpoint_path(out).exists()


@needs_dask
def test_run_survives_a_killed_dask_worker(run_metacal_file, inline_run, shared_cluster, monkeypatch, tmp_path):
    from deconvbench import harness

    killed = kill_one_worker_after_first_result(monkeypatch, harness)
    ran = run_with_state(run_metacal_file, tmp_path / "killed.json", monkeypatch, executor=shared_cluster)
    assert killed and gone(killed[0])
    same_per_stamp(ran, inline_run)


@needs_dask
def test_ctrl_c_of_a_dask_run_leaves_no_worker_behind(run_metacal_file, tmp_path):
    import subprocess
    import sys
    import time

    from deconvbench.harness import checkpoint_path

    from .test_execution import REPO, _wait_all_gone

    out = tmp_path / "r.json"
    run_args = ["run", "--method", "fft", "--data", str(run_metacal_file), "-b", "16", "--out", str(out)]
    code = "import sys; from tests.execution_tasks import run_client_main; run_client_main(sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), *run_args, "--executor", "dask", "-j", "2"],
        cwd=REPO,
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "started").exists():  # the first task came back; workers are up
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 2
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        returncode = proc.wait(timeout=60)
        stderr = proc.stderr.read()
        assert returncode == 130, stderr
        assert "interrupted: stopped before completion" in stderr
        assert "exit 130; worker processes left: 0" in stderr
        assert "KeyboardInterrupt" not in stderr  # the workers ignore the terminal's SIGINT
        assert _wait_all_gone(descendants, 2) == []
        assert checkpoint_path(out).exists() and not out.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
