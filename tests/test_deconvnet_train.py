"""DeconvNet training: augmentation, loss decrease, determinism, checkpoints, resume
and early stopping, in both frameworks, on small synthetic data (Gaussian galaxies
convolved with Gaussian PSFs, plus noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deconvbench.methods import Batch
from deconvbench_baselines.deconvnet.config import DeconvNetConfig
from deconvbench_baselines.deconvnet.convert import load_weights
from deconvbench_baselines.deconvnet.train import augment_batch, nmse_per_stamp, train

TINY = DeconvNetConfig(depth=3, width=8, blocks_per_scale=1, norm_groups=4, psf_width=4, psf_size=16, cond_dim=8)
N, B, LR = 20, 16, 3e-3


def _gaussians(n, cov, centre, flux):
    """(b, n, n) elliptical Gaussians sampled at pixel centres; cov (b, 2, 2) in pixels**2."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dy = yy[None] - centre[:, 0, None, None]
    dx = xx[None] - centre[:, 1, None, None]
    inv = np.linalg.inv(cov)
    q = inv[:, 0, 0, None, None] * dy**2 + 2 * inv[:, 0, 1, None, None] * dy * dx + inv[:, 1, 1, None, None] * dx**2
    return flux[:, None, None] * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))[:, None, None]


def _covariances(rng, b, sigma_lo, sigma_hi, e_max):
    s2 = rng.uniform(sigma_lo, sigma_hi, b) ** 2
    e = rng.uniform(0, e_max, b)
    th = rng.uniform(0, np.pi, b)
    c, s = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    diag = np.zeros((b, 2, 2))
    diag[:, 0, 0], diag[:, 1, 1] = s2 * (1 + e), s2 * (1 - e)
    return rot @ diag @ np.swapaxes(rot, 1, 2)


def synthetic_batch(seed: int, b: int = B, n: int = N, target_sigma: float = 1.0) -> dict:
    """observed = galaxy (x) PSF + noise, truth = galaxy (x) round Gaussian target."""
    rng = np.random.default_rng(seed)
    gal = _covariances(rng, b, 0.8, 2.5, 0.5)
    psf = _covariances(rng, b, 1.3, 2.2, 0.1)
    flux = np.exp(rng.uniform(np.log(100), np.log(5000), b))
    centre = n // 2 + rng.uniform(-0.5, 0.5, (b, 2))
    psf_img = _gaussians(n, psf, np.full((b, 2), float(n // 2)), np.ones(b))
    psf_img /= psf_img.sum(axis=(1, 2), keepdims=True)
    clean = _gaussians(n, gal + psf, centre, flux)
    truth = _gaussians(n, gal + target_sigma**2 * np.eye(2), centre, flux)
    sigma = np.where(np.arange(b) % 4 == 0, 0.0, clean.max(axis=(1, 2)) / rng.uniform(3, 30, b))
    observed = clean + sigma[:, None, None] * rng.standard_normal((b, n, n))
    return {
        "observed": observed.astype(np.float32),
        "psf": psf_img.astype(np.float32),
        "noise_sigma": sigma,
        "truth": truth.astype(np.float32),
    }


TRAIN = [synthetic_batch(seed) for seed in range(4)]
VAL = [synthetic_batch(100)]


def _train(framework, out_dir, epochs, **kw):
    kw = {"lr": LR, "seed": 0, **kw}
    return train(framework, TINY, lambda epoch: iter(TRAIN), lambda: iter(VAL), epochs=epochs, out_dir=out_dir, **kw)


def _losses(result):
    return [(h["epoch"], h["train_loss"], h["val_nmse"]) for h in result["history"]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- augmentation -----------------------------------------------------------------------------
def _circular_convolve(image, psf):
    """Circular convolution with the PSF centred on (n//2, n//2) (the benchmark convention)."""
    k = np.fft.fft2(np.fft.ifftshift(psf, axes=(-2, -1)))
    return np.real(np.fft.ifft2(np.fft.fft2(image) * k))


@pytest.mark.parametrize("n", [8, 9])
def test_augmentation_is_a_consistent_symmetry(n):
    rng = np.random.default_rng(0)
    truth = rng.random((64, n, n))
    psf = rng.random((64, n, n))
    observed = _circular_convolve(truth, psf)
    obs2, psf2, truth2 = augment_batch(np.random.default_rng(1), observed, psf, truth)
    # observed stays truth (x) psf with the PSF re-centred on (n//2, n//2)
    np.testing.assert_allclose(obs2, _circular_convolve(truth2, psf2), atol=1e-9)
    # each stamp gets one of the 8 symmetries, and all of them occur
    seen = set()
    for i in range(64):
        matches = [c for c in range(8) if np.array_equal(truth2[i], _symmetry(truth[i], c))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))
    # seeded: same generator seed, same result
    again = augment_batch(np.random.default_rng(1), observed, psf, truth)
    np.testing.assert_array_equal(again[0], obs2)


def _symmetry(a, code):
    a = np.rot90(a, code % 4)
    return a[:, ::-1] if code >= 4 else a


# -- training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_training_lowers_loss_and_is_deterministic(framework, tmp_path):
    pytest.importorskip(framework)
    r1 = _train(framework, tmp_path / "a", 3)
    hist = r1["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert hist[-1]["val_nmse"] < hist[0]["val_nmse"]
    r2 = _train(framework, tmp_path / "b", 3)
    assert _losses(r2) == _losses(r1)  # same seed: identical run
    r3 = _train(framework, tmp_path / "c", 1, seed=1)
    assert r3["history"][0]["train_loss"] != hist[0]["train_loss"]  # the seed matters
    # best.npz is the best-on-validation checkpoint and reproduces its score
    flat, config, meta = load_weights(tmp_path / "a" / "best.npz")
    assert config == TINY and meta["epoch"] == r1["best_epoch"] and meta["framework"] == framework
    assert r1["best_val_nmse"] == min(h["val_nmse"] for h in hist)
    history_file = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history_file] == [0, 1, 2]


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_resume_matches_uninterrupted_run(framework, tmp_path):
    pytest.importorskip(framework)
    straight = _train(framework, tmp_path / "straight", 3)
    first = _train(framework, tmp_path / "resumed", 2)
    assert first["epochs_completed"] == 2 and first["resumed_from"] is None
    seen_epochs = []

    def batches(epoch):
        seen_epochs.append(epoch)
        return iter(TRAIN)

    resumed = train(
        framework, TINY, batches, lambda: iter(VAL), epochs=3, lr=LR, seed=0, out_dir=tmp_path / "resumed", resume=True
    )
    assert seen_epochs == [2]  # only the missing epoch ran
    assert resumed["resumed_from"] == 2 and resumed["epochs_completed"] == 3
    assert _losses(resumed)[:2] == _losses(first)
    np.testing.assert_allclose(np.array(_losses(resumed)), np.array(_losses(straight)), rtol=1e-6)
    a, _, _ = load_weights(tmp_path / "straight" / "best.npz")
    b, _, _ = load_weights(tmp_path / "resumed" / "best.npz")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7)
    # nothing left to do: resuming a finished run returns its history
    again = _train(framework, tmp_path / "resumed", 3, resume=True)
    assert _losses(again) == _losses(resumed)
    with pytest.raises(ValueError, match="different config"):
        train(
            framework,
            TINY.replace(cond_dim=4),
            batches,
            lambda: iter(VAL),
            epochs=4,
            out_dir=tmp_path / "resumed",
            resume=True,
        )


def test_early_stopping_and_best_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from deconvbench_baselines.deconvnet.plugin import DeconvNetTorch

    records = []
    # lr=0: the validation score never improves after epoch 0
    result = _train("torch", tmp_path, 10, lr=0.0, patience=2, progress=records.append)
    assert result["stopped_early"] and result["best_epoch"] == 0
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2] == [r["epoch"] for r in records]
    # the saved best weights reproduce the recorded validation NMSE through the plugin
    method = DeconvNetTorch(weights=str(tmp_path / "best.npz"))
    v = VAL[0]
    est = method.deconvolve(Batch(v["observed"], v["psf"], v["noise_sigma"], 0.2, 0.5))
    assert np.mean(nmse_per_stamp(est, v["truth"])) == pytest.approx(result["best_val_nmse"], rel=1e-5)


def test_bad_framework_and_batches(tmp_path):
    with pytest.raises(ValueError, match="framework"):
        train("tensorflow", TINY, lambda e: iter(TRAIN), lambda: iter(VAL), epochs=1, out_dir=tmp_path)
    pytest.importorskip("torch")
    bad = [{k: v for k, v in TRAIN[0].items() if k != "truth"}]
    with pytest.raises(ValueError, match="truth"):
        train("torch", TINY, lambda e: iter(bad), lambda: iter(VAL), epochs=1, out_dir=tmp_path)
