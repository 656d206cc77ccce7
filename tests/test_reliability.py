"""Loud failures and trustworthy results: failed stamps, edited data, interruptions,
unwritable outputs, out-of-range sizes and result names (one test per guarantee)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from deconvbench.atomic import check_writable, write_text_atomic
from deconvbench.dataset_files import check_n, load_run_card
from deconvbench.errors import CardError, DataError, DeconvbenchError, OutputError, UsageError
from deconvbench.harness import checkpoint_path, plan_outputs, result_stem, run_method
from deconvbench.leaderboard import SubmissionError, render_leaderboard, submit
from deconvbench.metacal.measure import MetacalConfig
from deconvbench.methods import load_method

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


class _NaNEvery:
    """Identity, except NaN on every ``step``-th stamp (step 1: every stamp fails)."""

    device = "cpu"

    def __init__(self, step: int):
        self.name, self.step = f"nan-every-{step}", step

    def deconvolve(self, batch):
        out = np.asarray(batch.observed, dtype=np.float64).copy()
        out[:: self.step] = np.nan
        return out

    def params(self):
        return {"step": self.step}


# -- 1. failures in submissions, throughput, leaderboard ----------------------------------
def test_submit_rejects_failed_stamps_unless_allowed_and_leaderboard_counts_them(smoke_test_file, tmp_path):
    half = run_method(_NaNEvery(2), smoke_test_file, tmp_path / "half.json", batch_size=16)
    assert half["failures"]["stamps_failed"] == 32
    with pytest.raises(SubmissionError, match="32 of 64 stamps failed"):
        submit(tmp_path / "half.json", tmp_path / "results")
    assert not (tmp_path / "results").exists()
    target = submit(tmp_path / "half.json", tmp_path / "results", allow_failures=True)
    board = render_leaderboard(tmp_path / "results")
    header = next(line for line in board.splitlines() if line.startswith("| method"))
    row = next(line for line in board.splitlines() if line.startswith("| nan-every-2"))
    # counted from the end: the headers before it contain escaped pipes
    assert [c.strip() for c in header.split("|")][-7] == "failures"
    assert [c.strip() for c in row.split("|")][-7] == "32"
    assert target.name == "smoke-v3_test_nan-every-2.json"
    all_failed = run_method(_NaNEvery(1), smoke_test_file, tmp_path / "all.json", batch_size=16)
    with pytest.raises(SubmissionError, match="every stamp failed"):
        submit(tmp_path / "all.json", tmp_path / "results", allow_failures=True)
    assert all_failed["throughput"]["deconv_gal_per_s"] is None


def test_throughput_counts_only_stamps_with_output(smoke_test_file, tmp_path):
    half = run_method(_NaNEvery(2), smoke_test_file, tmp_path / "half.json", batch_size=16)
    thr = half["throughput"]
    assert thr["stamps_ok"] == 32
    assert thr["deconv_gal_per_s"] == pytest.approx(32 / thr["deconv_seconds"], rel=1e-12)


# -- 2. edited data and edited cards ------------------------------------------------------
def test_run_verifies_the_content_checksum_while_streaming(smoke_test_file, tmp_path):
    clean = run_method(load_method("fft"), smoke_test_file, tmp_path / "clean.json", batch_size=16)
    assert clean["dataset"]["checksum_verified"] is True
    assert clean["dataset"]["checksum"] == clean["dataset"]["checksum_recorded"]
    edited = tmp_path / "edited.h5"
    shutil.copy(smoke_test_file, edited)
    with h5py.File(edited, "r+") as f:
        f["noiseless"][63, 5, 5] += 1.0  # a dataset the methods never read
    result = run_method(load_method("fft"), edited, tmp_path / "edited.json", batch_size=16)
    assert result["dataset"]["checksum_verified"] is False
    assert result["dataset"]["checksum_recorded"] == clean["dataset"]["checksum"]
    assert result["dataset"]["checksum"] != clean["dataset"]["checksum"]
    with pytest.raises(SubmissionError, match="did not match its recorded checksum"):
        submit(tmp_path / "edited.json", tmp_path / "results")
    strict = _cli("run", "-m", "fft", "--data", str(edited), "--out", str(tmp_path / "s.json"), "--strict")
    assert strict.returncode == 2 and "recorded checksum" in strict.stderr and "Traceback" not in strict.stderr


def test_resumed_run_still_verifies_the_whole_file(smoke_test_file, tmp_path):
    class Dies(_NaNEvery):
        def deconvolve(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return np.asarray(batch.observed, dtype=np.float64)

    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        run_method(Dies(3), smoke_test_file, out, batch_size=16)
    resumed = run_method(Dies(3), smoke_test_file, out, batch_size=16, resume=True)
    assert resumed["dataset"]["checksum_verified"] is True


def test_edited_card_with_a_published_name_is_refused(tmp_path):
    text = (REPO / "datasets" / "smoke.toml").read_text()
    assert "seed = 103" in text
    edited = tmp_path / "smoke.toml"
    edited.write_text(text.replace("seed = 103", "seed = 999"))
    with pytest.raises(CardError, match="name and version of the published card smoke"):
        load_run_card(str(edited))
    same = tmp_path / "same" / "smoke.toml"
    same.parent.mkdir()
    same.write_text(text)
    assert load_run_card(str(same)).card_hash() == load_run_card("smoke").card_hash()


# -- 3 and 4. interruptions and orphans ---------------------------------------------------
def _generate_until_partial(tmp_path):
    out = tmp_path / "g.h5"
    args = ["generate", "smoke", "--split", "train", "-j", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deconvbench.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # the workers are rendering now
    assert proc.poll() is None, "generate ended before it could be interrupted: " + proc.stderr.read()
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    return proc, out, partial, workers


def _alive(processes, within: float) -> list:
    deadline = time.time() + within
    while time.time() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.mark.slow
def test_sigint_to_generate_exits_130_with_a_message_and_no_files(tmp_path):
    proc, out, partial, workers = _generate_until_partial(tmp_path)
    proc.send_signal(signal.SIGINT)  # to the parent only, not the process group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    assert "Traceback" not in err
    assert not out.exists() and not partial.exists()
    assert not _alive(workers, 5.0)


@pytest.mark.slow
def test_killed_generation_leaves_no_final_file_and_no_orphan_workers(tmp_path):
    proc, out, partial, workers = _generate_until_partial(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    orphans = _alive(workers, 20.0)  # a worker still importing notices at its first check
    for p in orphans:
        p.kill()
    assert not orphans, f"{len(orphans)} worker(s) still running after the parent was killed"


# -- 5. bad outputs and corrupt inputs ----------------------------------------------------
def test_corrupt_chunk_during_run_is_a_data_error(smoke_test_file, tmp_path):
    path = tmp_path / "corrupt.h5"
    shutil.copy(smoke_test_file, path)
    with h5py.File(path, "r") as f:
        info = f["truth"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    for i in range(info.byte_offset + 100, info.byte_offset + 400):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or unreadable data in 'truth'"):
        run_method(load_method("fft"), path, tmp_path / "r.json")
    proc = _cli("run", "-m", "fft", "--data", str(path), "--out", str(tmp_path / "c.json"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_out_names_a_folder_unless_it_is_a_json_file_name(smoke_test_file, tmp_path):
    """``--out out/results`` (new or existing) is a folder even for a single run; ``r.json`` a file."""
    folder = tmp_path / "adir"
    folder.mkdir()
    (plan,) = plan_outputs([smoke_test_file], ["fft"], {}, folder, None)
    assert plan.result.parent == folder and plan.result.name.startswith("fft_smoke") and plan.result.suffix == ".json"
    (plan,) = plan_outputs([smoke_test_file], ["fft"], {}, tmp_path / "new" / "results", None)
    assert plan.result == tmp_path / "new" / "results" / plan.result.name
    (plan,) = plan_outputs([smoke_test_file], ["fft"], {}, tmp_path / "r.json", tmp_path / "estimates")
    assert plan.result == tmp_path / "r.json" and plan.outputs.parent == tmp_path / "estimates"
    assert plan.outputs.suffix == ".h5"
    (plan,) = plan_outputs([smoke_test_file], ["fft"], {}, tmp_path / "r2.json", tmp_path / "e.h5")
    assert plan.outputs == tmp_path / "e.h5"


def test_unwritable_outputs_fail_before_any_work(smoke_test_file, tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    (in_folder,) = plan_outputs([smoke_test_file], ["fft"], {}, folder, None)
    in_folder.result.mkdir()  # a folder where the result file should go
    with pytest.raises(OutputError, match="is a directory"):
        plan_outputs([smoke_test_file], ["fft"], {}, folder, None)
    in_folder.result.rmdir()
    with pytest.raises(OutputError, match="cannot write"):
        plan_outputs([smoke_test_file], ["fft"], {}, Path("/proc/r.json"), None)
    with pytest.raises(OutputError, match="--save-outputs"):
        plan_outputs([smoke_test_file], ["fft"], {}, tmp_path / "r.json", Path("/proc/est.h5"))
    with pytest.raises(OutputError):
        write_text_atomic(Path("/proc/leaderboard.md"), "x")
    assert isinstance(OutputError("x"), OSError) and isinstance(OutputError("x"), DeconvbenchError)
    assert check_writable(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert [p.name for p in tmp_path.iterdir()] == ["adir", "new"] or sorted(p.name for p in tmp_path.iterdir()) == [
        "adir",
        "new",
    ]
    assert not list((tmp_path / "new").iterdir())  # the probe leaves nothing behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["leaderboard", "--out", "/proc/lb.md"], "cannot write"),
        (["submit", "results/ground-v3-v3_test_fft.json", "--results-dir", "/proc/res"], "cannot write"),
    ],
)
def test_cli_unwritable_outputs_are_one_line(args, message):
    proc = _cli(*args, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_corrupt_checkpoint_is_a_data_error(smoke_test_file, tmp_path):
    out = tmp_path / "r.json"
    checkpoint_path(out).write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt checkpoint"):
        run_method(load_method("fft"), smoke_test_file, out, resume=True)


# -- 6. sizes beyond the split --------------------------------------------------------------
def test_n_beyond_the_split_is_refused(tmp_path):
    card = load_run_card("smoke")
    assert check_n(card, "test", None) == 64 and check_n(card, "test", 64) == 64
    for bad in (0, 65, 128):
        with pytest.raises(UsageError, match="between 1 and 64"):
            check_n(card, "test", bad)
    proc = _cli("generate", "smoke", "--split", "test", "--n", "96", "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "between 1 and 64" in proc.stderr
    assert not list(tmp_path.iterdir())


# -- 7. training generates only what it uses -------------------------------------------------
@pytest.mark.slow
def test_train_generates_only_n_train_and_n_val_stamps(tmp_path):
    env = {**os.environ, "DECONVBENCH_DATA": str(tmp_path / "data")}
    proc = _cli(
        "train", "--framework", "torch", "--dataset", "smoke", "--epochs", "1", "--batch-size", "8",
        "--width", "8", "--threads", "1", "--n-train", "16", "--n-val", "8", "-j", "1",
        "--out", str(tmp_path / "run"), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "data" / "smoke-v3").iterdir())
    assert files == ["train-n16.h5", "val-n8.h5"]
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["dataset"]["n_train"] == 16 and card["validation"]["n"] == 8


# -- 8. result names ------------------------------------------------------------------------
def test_result_names_depend_on_every_choice_that_changes_the_numbers(smoke_test_file, tmp_path):
    base = result_stem("fft", "smoke-v3_test", 64, 64)
    names = {
        base,
        result_stem("fft", "smoke-v3_test", 32, 64),
        result_stem("fft", "smoke-v3_test", 64, 64, {"threshold": 0.01}),
        result_stem("fft", "smoke-v3_test", 64, 64, {"threshold": 0.02}),
        result_stem("fft", "smoke-v3_test", 64, 64, None, MetacalConfig(estimator="admom")),
        result_stem("fft", "smoke-v3_test", 64, 64, None, MetacalConfig(fixnoise=True)),
        result_stem("fft", "smoke-v3_test", 64, 64, None, MetacalConfig(centring="regularised")),
    }
    assert len(names) == 7 and base == "fft_smoke-v3_test"
    assert result_stem("fft", "t", 64, 64, {"threshold": 0.01}) == "fft_t_threshold=0.01"
    plans = plan_outputs([smoke_test_file], ["fft", "wiener"], {"fft": {"threshold": 0.01}}, tmp_path, None)
    assert [p.result.name for p in plans] == ["fft_smoke-v3_test_threshold=0.01.json", "wiener_smoke-v3_test.json"]
    with pytest.raises(UsageError, match="same output file"):
        plan_outputs([smoke_test_file, smoke_test_file], ["fft"], {}, tmp_path, None)


@pytest.mark.parametrize(
    "argv, how",
    [
        (["bias", "--method", "fft", "--split", "snr50", "--n", "8"], "the same `bias` command continues it"),
        (["run", "--method", "fft", "--dataset", "smoke"], "`run --resume` continues it"),
        (["--version"], "`run --resume`, `train --resume` and `bias` (run again) continue their runs"),
    ],
)
def test_an_interrupt_says_how_that_command_continues(argv, how, monkeypatch, capsys):
    import deconvbench.cli as cli

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: stopped before completion") and how in err and err.count("\n") == 1
