"""DeconvFilter (learned Fourier filter), the metacal-aware losses and device selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deconvbench.errors import MethodError  # noqa: E402
from deconvbench.metacal.shear_ops import shear_images  # noqa: E402
from deconvbench.methods import Batch  # noqa: E402
from deconvbench_baselines.deconvnet import losses  # noqa: E402
from deconvbench_baselines.deconvnet.device import canonical_device, torch_device  # noqa: E402
from deconvbench_baselines.deconvnet.filter_model import (  # noqa: E402
    FilterConfig,
    build_torch_model,
    load_filter_weights,
    save_filter_weights,
    torch_state_to_flat,
)
from deconvbench_baselines.deconvnet.filter_plugin import DeconvFilterTorch  # noqa: E402
from deconvbench_baselines.fft import FFTDeconvolver  # noqa: E402

PIXEL, TARGET, N = 0.2, 0.5, 32


def _gaussians(rng, b, fwhm_range, e_max, n=N):
    """(b, n, n) unit-flux elliptical Gaussians centred on (n//2, n//2) (pixel-centre sampled)."""
    y, x = np.mgrid[:n, :n] - n // 2
    out = np.empty((b, n, n))
    for i in range(b):
        sigma = rng.uniform(*fwhm_range) / 2.3548 / PIXEL
        e1, e2 = rng.uniform(-e_max, e_max, 2)
        a = np.array([[1 + e1, e2], [e2, 1 - e1]]) * sigma**2
        inv = np.linalg.inv(a)
        r2 = inv[0, 0] * x**2 + 2 * inv[0, 1] * x * y + inv[1, 1] * y**2
        out[i] = np.exp(-0.5 * r2)
    return out / out.sum(axis=(1, 2), keepdims=True)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(15)
    psf = _gaussians(rng, 6, (0.7, 0.9), 0.05)
    galaxy = 1000.0 * _gaussians(rng, 6, (0.8, 1.2), 0.3)
    sigma = np.array([0.0, 0.0, 1.0, 2.0, 5.0, 10.0])
    observed = galaxy + sigma[:, None, None] * rng.standard_normal(galaxy.shape)
    return Batch(observed=observed, psf=psf, noise_sigma=sigma, pixel_scale_arcsec=PIXEL, target_fwhm_arcsec=TARGET)


def _plugin(tmp_path, config: FilterConfig, seed: int = 3, scale_last: float = 1.0) -> DeconvFilterTorch:
    torch.manual_seed(seed)
    model = build_torch_model(config)
    with torch.no_grad():  # a visibly non-trivial W
        model.mlp[-1].weight.normal_(0.0, scale_last)
        model.mlp[-1].bias.normal_(0.0, scale_last)
    path = tmp_path / f"filter-{seed}.npz"
    save_filter_weights(path, torch_state_to_flat(model), config, {"pixel_scale_arcsec": PIXEL})
    return DeconvFilterTorch(weights=str(path), device="cpu")


def test_filter_with_w_one_is_the_fft_deconvolution(tmp_path, batch):
    method = _plugin(tmp_path, FilterConfig(q_flat=1e9))
    assert np.all(method.filter_weights(batch) == 1.0)
    ref = FFTDeconvolver().deconvolve(batch)
    assert np.max(np.abs(method.deconvolve(batch) - ref)) < 1e-12 * np.abs(ref).max()


def test_filter_is_linear_in_the_image(tmp_path, batch):
    method = _plugin(tmp_path, FilterConfig(q_flat=0.5, use_noise_input=False))
    rng = np.random.default_rng(1)
    x, y = batch.observed, rng.standard_normal(batch.observed.shape)

    def run(images):
        return method.deconvolve(dataclasses.replace(batch, observed=images))

    combo = run(2.5 * x - 0.7 * y)
    expected = 2.5 * run(x) - 0.7 * run(y)
    assert np.max(np.abs(combo - expected)) < 1e-10 * np.abs(expected).max()
    # and the filter is not the identity: W < 1 somewhere beyond q_flat
    assert method.filter_weights(batch).min() < 0.5


def test_filter_is_flat_inside_q_flat_and_isotropic(tmp_path, batch):
    method = _plugin(tmp_path, FilterConfig(q_flat=2.0))
    from deconvbench_baselines.deconvnet.filter_model import prepare

    W = method.filter_weights(batch)
    q = prepare(batch.observed, batch.psf, batch.noise_sigma, PIXEL, TARGET, method.config)["q"]
    noisy = batch.noise_sigma > 0
    assert np.all(W[q <= 2.0] == 1.0) and np.all(W > 0)
    assert np.all(W[noisy][q[noisy] > 2.0] < 1.0)
    assert np.all(W[~noisy] == 1.0)  # the Wiener form: no noise, no filtering
    # W depends on |k| only: the (ky, kx) and (kx, ky) modes agree (the rfft half-plane
    # holds kx >= 0; compare row j, column i with row i, column j for i, j < N/2)
    m = W.shape[-1] - 1
    assert np.allclose(W[:, :m, :m], np.swapaxes(W[:, :m, :m], -1, -2), rtol=0, atol=1e-14)


def test_noiseless_stamps_get_the_fft_deconvolution(tmp_path, batch):
    method = _plugin(tmp_path, FilterConfig(q_flat=0.0))
    noiseless = dataclasses.replace(batch, noise_sigma=np.zeros(len(batch.noise_sigma)))
    ref = FFTDeconvolver().deconvolve(noiseless)
    assert np.max(np.abs(method.deconvolve(noiseless) - ref)) < 1e-12 * np.abs(ref).max()


def test_filter_weights_round_trip(tmp_path):
    config = FilterConfig(q_flat=1.5, n_nodes=4, hidden=8)
    model = build_torch_model(config)
    path = tmp_path / "w.npz"
    save_filter_weights(path, torch_state_to_flat(model), config, {"dataset": "x"})
    flat, config2, meta = load_filter_weights(path)
    assert config2 == config and meta == {"dataset": "x"}
    assert set(flat) == set(model.state_dict())
    with pytest.raises(ValueError, match="not a DeconvFilter weights file"):
        np.savez(tmp_path / "bad.npz", a=np.zeros(2))
        load_filter_weights(tmp_path / "bad.npz")


# -- losses -------------------------------------------------------------------------------
def test_nmse_and_flux_losses():
    truth = torch.rand(3, 8, 8, dtype=torch.float64) + 0.1
    assert float(losses.nmse_loss(truth, truth)) == 0.0
    assert float(losses.nmse_loss(1.1 * truth, truth)) == pytest.approx(0.01, rel=1e-12)
    spec = torch.fft.rfft2(truth)
    assert float(losses.flux_loss(1.1 * spec, spec)) == pytest.approx(0.01, rel=1e-12)
    assert float(losses.flux_loss(spec, spec)) == 0.0


def test_band_loss_weights_the_error_by_the_metacal_band():
    spec = torch.fft.rfft2(torch.rand(2, 16, 16, dtype=torch.float64))
    w = torch.zeros(16, 9, dtype=torch.float64)
    w[:2, :2] = 1.0
    assert float(losses.band_loss(spec, spec, w)) == 0.0
    assert float(losses.band_loss(torch.zeros_like(spec), spec, w)) == pytest.approx(1.0, rel=1e-12)
    wrong = spec.clone()
    wrong[:, 8:, 5:] = 0  # an error outside the band costs nothing
    assert float(losses.band_loss(wrong, spec, w)) == 0.0


def _smooth(images, anisotropy: float) -> np.ndarray:
    """Fourier smoothing exp(-(kx² (1+a) + ky² (1-a)) s²/2), s = 1.5 px."""
    k = 2 * np.pi * np.fft.fftfreq(images.shape[-1])
    ky, kx = k[:, None], k[None, :]
    kernel = np.exp(-0.5 * 1.5**2 * (kx**2 * (1 + anisotropy) + ky**2 * (1 - anisotropy)))
    return np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))) * kernel).real


def test_equivariance_loss_is_zero_for_an_equivariant_map_only():
    rng = np.random.default_rng(2)
    images = 1000.0 * _gaussians(rng, 4, (1.0, 1.4), 0.3)

    def loss(f, g=(0.05, 0.02)):
        sheared_then_f = f(shear_images(images, *g))
        f_then_sheared = shear_images(f(images), *g)
        return float(losses.equivariance_loss(torch.from_numpy(sheared_then_f), torch.from_numpy(f_then_sheared)))

    assert loss(lambda a: 3.0 * a) < 1e-28  # linear and pointwise: commutes with any shear (measured 2e-31)
    # smoothing does not, isotropic or not (the kernel itself would have to be sheared):
    # measured 3.0e-4 (anisotropic) and 2.6e-4 (round): why W = 1 inside the metacal band
    assert loss(lambda a: np.fft.fftshift(_smooth(a, 0.5), axes=(-2, -1))) > 1e-4
    assert loss(lambda a: np.fft.fftshift(_smooth(a, 0.0), axes=(-2, -1))) > 1e-4


# -- devices ------------------------------------------------------------------------------
def test_device_names():
    assert canonical_device("gpu") == "cuda" and canonical_device("AUTO") == "auto"
    with pytest.raises(MethodError, match="device must be one of"):
        canonical_device("tpu")
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_one_clear_error(tmp_path):
    with pytest.raises(MethodError, match="no CUDA GPU"):
        torch_device("cuda")
    with pytest.raises(MethodError, match="no CUDA GPU"):
        _plugin(tmp_path, FilterConfig()).__class__(weights=str(tmp_path / "filter-3.npz"), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    "args",
    [
        ["run", "--method", "deconvnet-torch", "--option", "deconvnet-torch.device=cuda"],
        ["run", "--method", "deconvnet-jax", "--option", "deconvnet-jax.device=gpu"],
        ["train", "--method", "deconvfilter", "--device", "cuda", "--epochs", "1"],
        ["train", "--method", "deconvnet-torch", "--device", "cuda", "--epochs", "1"],
    ],
)
def test_cli_cuda_without_gpu_exits_2_with_one_line(args, smoke_test_file, tmp_path):
    import subprocess
    import sys

    if args[0] == "run":
        args = [*args, "--data", str(smoke_test_file), "--out", str(tmp_path / "r.json")]
    else:
        args = [*args, "--dataset", "smoke", "--out", str(tmp_path / "t")]
    proc = subprocess.run([sys.executable, "-m", "deconvbench.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], proc.stderr


# -- training -----------------------------------------------------------------------------
def _synthetic_batches(seed: int, b: int = 16):
    """Gaussian galaxies: noiseless = galaxy ⊗ PSF, truth = galaxy ⊗ target (Gaussians add
    covariances; the target's pixel is ignored at this accuracy), noise at SNR ~ 20-200."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:N, :N] - N // 2

    def draw(cov):
        inv = np.linalg.inv(cov)
        r2 = inv[:, 0, 0, None, None] * x**2 + 2 * inv[:, 0, 1, None, None] * x * y + inv[:, 1, 1, None, None] * y**2
        img = np.exp(-0.5 * r2)
        return img / img.sum(axis=(1, 2), keepdims=True)

    def cov(fwhm_px, e):
        s2 = (fwhm_px / 2.3548) ** 2
        rows = [np.stack([1 + e[:, 0], e[:, 1]], -1), np.stack([e[:, 1], 1 - e[:, 0]], -1)]
        return s2[:, None, None] * np.stack(rows, -2)

    gal = cov(rng.uniform(3, 6, b), rng.uniform(-0.3, 0.3, (b, 2)))
    psf = cov(np.full(b, 4.0), rng.uniform(-0.05, 0.05, (b, 2)))
    target = cov(np.full(b, TARGET / PIXEL), np.zeros((b, 2)))
    noiseless = 1000.0 * draw(gal + psf)
    sigma = np.sqrt((noiseless**2).sum(axis=(1, 2))) / rng.choice([20.0, 50.0, 200.0], b)
    return {
        "observed": noiseless + sigma[:, None, None] * rng.standard_normal(noiseless.shape),
        "noiseless": noiseless,
        "truth": 1000.0 * draw(gal + target),
        "psf": draw(psf),
        "noise_sigma": sigma,
    }


def test_training_lowers_the_objective_and_is_deterministic(tmp_path):
    from deconvbench_baselines.deconvnet.filter_train import train_filter
    from deconvbench_baselines.deconvnet.losses import LossWeights

    train_data = [_synthetic_batches(s) for s in (1, 2)]
    val_data = [_synthetic_batches(9)]
    config = FilterConfig(q_flat=0.0, n_nodes=6, hidden=8)
    runs = []
    for k in range(2):
        runs.append(
            train_filter(
                config,
                LossWeights(band_weight=10.0),
                lambda epoch: train_data,
                lambda: val_data,
                epochs=4,
                pixel_scale=PIXEL,
                target_fwhm=TARGET,
                lr=1e-2,
                seed=5,
                out_dir=tmp_path / f"run{k}",
            )
        )
    history = runs[0]["history"]
    assert history[-1]["val_objective"] < history[0]["val_objective"]
    assert all(record["val_band"] is not None for record in history)
    a, _, meta = load_filter_weights(tmp_path / "run0" / "best.npz")
    b, _, _ = load_filter_weights(tmp_path / "run1" / "best.npz")
    assert all(np.array_equal(a[key], b[key]) for key in a)
    assert meta["loss"]["band_weight"] == 10.0 and meta["epoch"] == runs[0]["best_epoch"]


# -- the shipped weights ------------------------------------------------------------------
def test_shipped_weights_card_and_smoke_numbers(smoke_test_file, tmp_path):
    import json

    from deconvbench.harness import run_method
    from deconvbench.methods import load_method
    from deconvbench_baselines.deconvnet.filter_plugin import default_filter_weights_path

    path = default_filter_weights_path("ground-v3")
    _, config, metadata = load_filter_weights(path)
    assert metadata["dataset"] == "ground-v3" and metadata["pixel_scale_arcsec"] == 0.2
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["config"] == config.to_dict()
    for key in ("command", "validation", "measured", "hardware", "wall_time_s", "best_epoch"):
        assert key in card
    for split in ("noiseless", "snr50", "snr20", "leakage"):
        assert card["measured"][split]["m"] is not None
    result = run_method(load_method("deconvfilter", device="cpu"), smoke_test_file, tmp_path / "r.json", batch_size=64)
    assert result["failures"]["stamps_failed"] == 0
    # pinned to the measured value (shipped weights, published smoke split)
    assert result["metrics"]["overall"]["nmse"]["mean"] == pytest.approx(SMOKE_NMSE, rel=1e-6)


SMOKE_NMSE = 6.912204195694842  # measured with the shipped weights (float64 throughout)


def test_a_diverged_training_stops_and_keeps_its_best_epoch(tmp_path):
    """A non-finite training loss ends the run (it never recovers); the history stays
    strict JSON (null, not NaN) and best.npz is the last finite best epoch."""
    import json

    from deconvbench_baselines.deconvnet.filter_train import train_filter
    from deconvbench_baselines.deconvnet.losses import LossWeights

    good = [_synthetic_batches(1)]
    bad = _synthetic_batches(2)
    bad["observed"] = np.full_like(bad["observed"], np.nan)
    result = train_filter(
        FilterConfig(q_flat=0.0, n_nodes=6, hidden=8),
        LossWeights(),
        lambda epoch: good if epoch == 0 else [bad],
        lambda: [_synthetic_batches(9)],
        epochs=5,
        pixel_scale=PIXEL,
        target_fwhm=TARGET,
        lr=1e-2,
        out_dir=tmp_path,
    )
    assert result["epochs_completed"] == 2 and result["stopped_early"] and result["best_epoch"] == 0
    history = json.loads((tmp_path / "history.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert history[1]["diverged"] is True and history[1]["train_loss"] is None
    assert load_filter_weights(tmp_path / "best.npz")[2]["epoch"] == 0


def test_other_geometry_is_refused_with_the_fitting_shipped_weights_named(tmp_path):
    from deconvbench_baselines.deconvnet.plugin import shipped_weights_for

    ground = DeconvFilterTorch(device="cpu")  # shipped ground-v3 weights (0.2", target 0.5")
    stamps = np.zeros((2, N, N))
    psf = np.full((2, N, N), 1.0 / N**2)
    space_like = Batch(observed=stamps, psf=psf, noise_sigma=np.ones(2), pixel_scale_arcsec=0.1, target_fwhm_arcsec=0.2)
    fitting = shipped_weights_for("deconvfilter", 0.1, 0.2)
    assert fitting == ["space-v3"]
    with pytest.raises(MethodError, match="were trained for pixel_scale_arcsec=0.2") as info:
        ground.deconvolve(space_like)
    for dataset in fitting:
        assert f"--option deconvfilter.dataset={dataset}" in str(info.value)
    assert shipped_weights_for("deconvfilter", 0.2, 0.5) == ["ground-v3"]
    out = DeconvFilterTorch(device="cpu", allow_out_of_family=True)
    assert out.deconvolve(space_like).shape == stamps.shape and out.params()["allow_out_of_family"] is True
    with pytest.raises(MethodError, match="allow_out_of_family"):
        DeconvFilterTorch(device="cpu", allow_out_of_family="yes")


@pytest.mark.parametrize("dataset", ["ground-v3", "space-v3", "superbit-v3"])
def test_every_deconvolution_card_has_shipped_weights_with_a_model_card(dataset):
    """Weights for each card, trained on that card (geometry recorded), with per-SNR
    validation metrics and the measured test metrics in the model card."""
    import json

    from deconvbench.cards import load_card
    from deconvbench_baselines.deconvnet.filter_plugin import default_filter_weights_path

    path = default_filter_weights_path(dataset)
    _, config, metadata = load_filter_weights(path)
    card = load_card(dataset)
    assert metadata["dataset"] == dataset
    assert metadata["pixel_scale_arcsec"] == pytest.approx(card.stamp.pixel_scale_arcsec)
    assert metadata["target_fwhm_arcsec"] == pytest.approx(card.stamp.target_psf_fwhm_arcsec)
    model_card = json.loads(path.with_suffix(".json").read_text())
    assert model_card["config"] == config.to_dict() and config.q_flat == 3.0
    by_snr = model_card["validation"]["by_snr"]
    assert set(by_snr) == {"10", "20", "40", "80", "200", "noiseless"}
    assert all(np.isfinite(block["nmse_mean"]) for block in by_snr.values())
    assert set(model_card["measured"]["nmse"]) == set(by_snr)
    assert model_card["stopped_early"] or model_card["epochs_completed"] == 20
