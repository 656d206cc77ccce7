"""The shipped DeconvNet weights: load in both frameworks, agree, beat Wiener; training
from the CLI on the smoke set lowers the loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deconvbench.harness import run_method
from deconvbench.methods import Batch, load_method
from deconvbench.store import open_dataset
from deconvbench_baselines.deconvnet.convert import load_weights
from deconvbench_baselines.deconvnet.plugin import default_weights_path

WEIGHTS = default_weights_path("ground-v1")


def test_shipped_weights_and_model_card():
    assert WEIGHTS.exists(), f"missing shipped weights {WEIGHTS}"
    assert WEIGHTS.stat().st_size <= 10 * 2**20
    _, config, metadata = load_weights(WEIGHTS)
    assert metadata["dataset"] == "ground-v1" and metadata["pixel_scale_arcsec"] == 0.2
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    for key in ("command", "dataset", "epochs_completed", "best_epoch", "best_val_nmse", "wall_time_s", "hardware"):
        assert key in card
    assert card["best_val_nmse"] == pytest.approx(metadata["val_nmse"])


def test_both_frameworks_give_the_same_estimates(smoke_test_file):
    with open_dataset(smoke_test_file) as ds:
        arrays = {k: ds.read(k, 0, 16) for k in ("observed", "psf", "noise_sigma")}
        batch = Batch(**arrays, pixel_scale_arcsec=ds.pixel_scale_arcsec, target_fwhm_arcsec=ds.target_psf_fwhm_arcsec)
    jax_out = load_method("deconvnet-jax").deconvolve(batch)
    torch_out = load_method("deconvnet-torch").deconvolve(batch)
    scale = np.abs(torch_out).max(axis=(1, 2), keepdims=True)
    assert np.max(np.abs(jax_out - torch_out) / scale) < 1e-5  # measured 3.1e-6 (float32 in both)


def test_shipped_weights_beat_wiener_on_the_smoke_test_split(smoke_test_file, tmp_path):
    nmse = {}
    for name in ("deconvnet-torch", "wiener"):
        result = run_method(load_method(name), smoke_test_file, tmp_path / f"{name}.json", batch_size=64)
        assert result["failures"]["stamps_failed"] == 0
        nmse[name] = result["metrics"]["overall"]["nmse"]["mean"]
    assert nmse["deconvnet-torch"] < nmse["wiener"], nmse
    # pinned to the measured values (the shipped weights and the published smoke split are fixed)
    assert nmse["deconvnet-torch"] == pytest.approx(0.0365459, rel=1e-4)
    assert nmse["wiener"] == pytest.approx(0.2336854, rel=1e-6)


def test_cli_training_on_the_smoke_set_lowers_the_loss(smoke_train_data, tmp_path):
    env = {**os.environ, "DECONVBENCH_DATA": str(smoke_train_data)}
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deconvbench.cli",
            "train",
            "--framework",
            "torch",
            "--dataset",
            "smoke",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--width",
            "8",
            "--seed",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["dataset"]["dataset"] == "smoke" and card["best_epoch"] is not None
    _, config, metadata = load_weights(out / "best.npz")
    assert config.width == 8 and metadata["val_nmse"] == pytest.approx(card["best_val_nmse"])
