"""The Fourier route of metacal + wmom (one forward FFT per stamp, moments as Fourier inner
products) against the image route (five metacal images + wmom on their pixels)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from deconvbench.harness import run_method
from deconvbench.metacal.estimators import wmom
from deconvbench.metacal.fourier_wmom import (
    band_of,
    frequency_indices,
    galaxy_spectrum,
    kernel_band,
    metacal_kernel_bases,
    metacal_wmom,
    phase_table,
    type_matrices,
    wavenumbers,
)
from deconvbench.metacal.measure import MetacalConfig, measure_deconvolved
from deconvbench.metacal.psf_fit import reconv_fwhm
from deconvbench.metacal.shear_ops import METACAL_TYPES, metacal_images
from deconvbench.methods import Batch, load_method
from deconvbench.store import open_dataset

from .test_metacal_offsets import offset_files  # noqa: F401  (fixture: 64 noiseless off-centre stamps)


@pytest.fixture(scope="module")
def smoke_metacal_snr50_file(tmp_path_factory):
    from deconvbench.cards import load_card
    from deconvbench.sim.generate import generate

    path = tmp_path_factory.mktemp("fourier") / "smoke-metacal-snr50.h5"
    generate(load_card("smoke-metacal"), "snr50", path)
    return path


def _batch(path) -> tuple[Batch, np.ndarray]:
    with open_dataset(path) as ds:
        batch = Batch(
            observed=ds.read("observed", 0, ds.n),
            psf=ds.read("psf", 0, ds.n),
            noise_sigma=ds.read("noise_sigma", 0, ds.n),
            pixel_scale_arcsec=ds.pixel_scale_arcsec,
            target_fwhm_arcsec=ds.target_psf_fwhm_arcsec,
        )
        truth = ds.read("truth", 0, ds.n).astype(np.float64)
    return batch, truth


@pytest.mark.parametrize("source", ["fft-snr50", "truth"])
def test_fourier_wmom_equals_wmom_on_metacal_images(smoke_metacal_snr50_file, source):
    """Every type, every stamp: e1, e2, centre and flux of the Fourier route equal wmom on the
    image route's metacal images (|Δe| ≤ 1.4e-9 at N = n on fft-deconvolved SNR 50 stamps of
    metacal-offsets, 5e-12 on truth; ~1e-12 on a 1.5 n grid, where the centre's tolerance of
    1e-9 pixel is what remains)."""
    batch, truth = _batch(smoke_metacal_snr50_file)
    pixel, target = batch.pixel_scale_arcsec, batch.target_fwhm_arcsec
    images = load_method("fft").deconvolve(batch) if source == "fft-snr50" else truth
    reconv = reconv_fwhm(batch.psf, pixel)
    reference = {k: wmom(v, pixel) for k, v in metacal_images(images, pixel, target, reconv, pad_factor=1.5).items()}
    for pad, tol in ((1.0, 1e-8 if source == "fft-snr50" else 1e-10), (1.5, 1e-10)):
        fourier = metacal_wmom(galaxy_spectrum(images, pixel, target, pad), images.shape[-1], pixel, reconv)
        for mtype in METACAL_TYPES:
            got, ref = fourier[mtype], reference[mtype]
            assert np.array_equal(got["flags"], ref["flags"]) and not got["flags"].any()
            for key in ("e1", "e2"):
                assert np.max(np.abs(got[key] - ref[key])) < tol, (pad, mtype, key)
            assert np.max(np.abs(got["x"] - ref["x"])) < 100 * tol
            assert np.max(np.abs(got["flux"] / ref["flux"] - 1.0)) < 100 * tol


def test_fourier_route_gives_the_image_route_m_on_offset_stamps(offset_files):  # noqa: F811
    """Noiseless fft on off-centre stamps: m of the two routes agree to 1e-9 (the issue asks
    2e-6), and the harness reports the measured truth floor next to m."""
    path = offset_files["ground"]
    runs = {
        route: run_method(
            load_method("fft"),
            path,
            path.with_name(f"route-{route}.json"),
            batch_size=32,
            metacal=MetacalConfig(route=route),
        )["metacal"]
        for route in ("fourier", "image")
    }
    assert abs(runs["fourier"]["m"] - runs["image"]["m"]) < 1e-9
    assert runs["fourier"]["R11"] == pytest.approx(runs["image"]["R11"], rel=1e-9)
    assert runs["fourier"]["m"] == pytest.approx(6.7888e-05, abs=1e-6)
    for block in runs.values():  # floor measured on the truth images of the same stamps
        assert block["m_floor_truth"] == pytest.approx(6.7959e-05, abs=1e-6)
        assert block["truth_floor"]["overall"]["n_pairs"] == 32
        assert "analytic" in block["m_floor_estimator_kind"]


def test_failed_stamps_are_flagged_like_the_image_route():
    """A NaN stamp and an empty stamp fail in both routes with the same flags."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:48, :48] - 24.0
    good = np.exp(-(x**2 + y**2) / (2 * 3.0**2)) + 0.0 * rng.normal(size=(48, 48))
    stamps = np.stack([good, np.full((48, 48), np.nan), np.zeros((48, 48))])
    config = MetacalConfig()
    fourier = measure_deconvolved(stamps, 0.2, 0.5, np.full(3, 0.9), config)
    image = measure_deconvolved(stamps, 0.2, 0.5, np.full(3, 0.9), replace(config, route="image"))
    assert np.array_equal(fourier["flags"], image["flags"]) and fourier["flags"][0] == 0
    assert np.all(fourier["flags"][1:] != 0) and np.isnan(fourier["e1"][1:]).all()
    assert fourier["R11"][0] == pytest.approx(image["R11"][0], rel=1e-10)


@pytest.mark.parametrize("size", [48, 49, 96])
def test_phase_table_equals_the_direct_exponential(size):
    """The integer-power phases of the sums equal exp(2πi k s/N) on every rfft row and column
    (negative frequencies included) to 1e-13, for shifts across and beyond the grid."""
    rng = np.random.default_rng(3)
    shifts = np.concatenate([rng.uniform(-4, size + 4, 64), [0.0, size / 2, -0.5]])
    for frequencies in frequency_indices(size):
        table = phase_table(shifts, frequencies.astype(complex), size)
        direct = np.exp(2j * np.pi * np.outer(shifts, frequencies) / size)
        assert table.shape == (len(shifts), len(frequencies))
        assert np.abs(table - direct).max() < 1e-13
    ky, kx = frequency_indices(size)
    assert ky.min() == -(size // 2) and kx.max() == size // 2


@pytest.mark.parametrize(
    "sigmas",
    [
        np.repeat([2.0, 2.5, 3.0], 8),  # metacal groups: consecutive runs, multiplied in place
        np.tile([2.0, 2.5, 2.0, 3.0, 2.5, 2.0], 4),  # few PSFs, scattered: gathered per PSF
        np.linspace(2.0, 3.0, 12),  # every stamp its own PSF: one broadcast product
    ],
)
def test_kernel_bases_equal_the_direct_product(sigmas):
    """``G̃(u) · exp(−(σ_Γ² + σ_w²)|L u|²/2)`` for every stamp and shear, whatever the order of
    the stamps' PSFs, on the band a batch uses (rows of negative frequency included)."""
    rng = np.random.default_rng(11)
    size, sigma_w = 48, 2.5
    mats = type_matrices(("noshear", "1p", "2m"), 0.01)
    band = kernel_band(size, sigmas.min() ** 2 + sigma_w**2, mats)
    assert len(band[0]) < size and band[0][-1] == size - 1  # a true band, wrapping round
    full = rng.normal(size=(len(sigmas), size, size // 2 + 1)) + 1j * rng.normal(
        size=(len(sigmas), size, size // 2 + 1)
    )
    spectrum = band_of(full, band)
    assert spectrum.flags.c_contiguous and np.array_equal(spectrum, full[:, band[0]][:, :, band[1]])
    bases = metacal_kernel_bases(spectrum, size, sigmas, sigma_w, mats, band=band)
    uy, ux, _ = wavenumbers(size, band=band)
    for t, matrix in enumerate(mats):
        kx = matrix[0, 0] * ux[None, :] + matrix[0, 1] * uy[:, None]
        ky = matrix[1, 0] * ux[None, :] + matrix[1, 1] * uy[:, None]
        for b, sigma in enumerate(sigmas):
            direct = spectrum[b] * np.exp(-0.5 * (sigma**2 + sigma_w**2) * (kx**2 + ky**2))
            assert np.abs(bases[t, b] - direct).max() <= 1e-15 * np.abs(direct).max()


def test_route_is_validated():
    with pytest.raises(ValueError, match="route"):
        MetacalConfig(route="gpu")


def test_jax_route_equals_numpy_route(smoke_metacal_snr50_file):
    """The JAX route (float64, jitted, on CPU) gives the numpy route's e, centre and flags on
    every type and stamp: the issue asks 1e-6, measured 7e-15."""
    pytest.importorskip("jax")
    from deconvbench.metacal.jax_wmom import JaxMetacal

    batch, truth = _batch(smoke_metacal_snr50_file)
    pixel, target = batch.pixel_scale_arcsec, batch.target_fwhm_arcsec
    reconv = reconv_fwhm(batch.psf, pixel)
    route = JaxMetacal("cpu")
    for images in (load_method("fft").deconvolve(batch), truth):
        numpy_results = metacal_wmom(galaxy_spectrum(images, pixel, target), images.shape[-1], pixel, reconv)
        jax_results = route.wmom(images, pixel, target, reconv)
        for mtype in METACAL_TYPES:
            assert np.array_equal(jax_results[mtype]["flags"], numpy_results[mtype]["flags"])
            for key in ("e1", "e2", "x", "y"):
                assert np.max(np.abs(jax_results[mtype][key] - numpy_results[mtype][key])) < 1e-10, (mtype, key)


def test_run_with_device_cpu_gives_the_numpy_bias(smoke_metacal_file, tmp_path):
    pytest.importorskip("jax")
    runs = {
        device: run_method(
            load_method("fft"),
            smoke_metacal_file,
            tmp_path / f"{device}.json",
            batch_size=32,
            metacal=MetacalConfig(device=device),
        )["metacal"]
        for device in (None, "cpu")
    }
    assert abs(runs["cpu"]["m"] - runs[None]["m"]) < 1e-12 and runs["cpu"]["device"] == "cpu"
    assert abs(runs["cpu"]["m_floor_truth"] - runs[None]["m_floor_truth"]) < 1e-12


def test_device_gpu_without_a_gpu_backend_is_one_line(smoke_metacal_file, tmp_path):
    jax = pytest.importorskip("jax")
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU backend is present")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deconvbench.cli",
            "run",
            "--method",
            "fft",
            "--metacal",
            "--data",
            str(smoke_metacal_file),
            "--device",
            "gpu",
            "--out",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no JAX gpu backend" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_fixnoise_fourier_route_equals_the_image_route(smoke_metacal_snr50_file):
    """fixnoise (ngmix's order: noise rotated by 90° before deconvolution, metacal images
    rotated back) on the Fourier route gives the image route's e and R stamp by stamp
    (measured |Δe| ≤ 2.3e-10, |ΔR| ≤ 8.6e-9 on fft at SNR 50, as without fixnoise), while
    the fixnoise term itself moves e by up to 4e-2."""
    from deconvbench.metacal.measure import measure_batch

    batch, _ = _batch(smoke_metacal_snr50_file)
    with open_dataset(smoke_metacal_snr50_file) as ds:
        seeds = ds.params()["noise_seed"]
    fft = load_method("fft")
    estimate = fft.deconvolve(batch)
    runs = {
        (route, fix): measure_batch(fft, batch, estimate, MetacalConfig(route=route, fixnoise=fix), noise_seed=seeds)
        for route in ("fourier", "image")
        for fix in (False, True)
    }
    fourier, image = runs["fourier", True], runs["image", True]
    assert np.array_equal(fourier["flags"], image["flags"]) and not fourier["flags"].any()
    for key in ("e1", "e2"):
        assert np.max(np.abs(fourier[key] - image[key])) < 1e-9, key
    for key in ("R11", "R12", "R21", "R22"):
        assert np.max(np.abs(fourier[key] - image[key])) < 5e-8, key
    assert np.max(np.abs(fourier["e1"] - runs["fourier", False]["e1"])) == pytest.approx(0.0429, rel=0.01)


def test_jax_fixnoise_equals_numpy_fixnoise(smoke_metacal_snr50_file):
    """fixnoise on the JAX route (noise spectrum added inside the jitted iteration) gives the
    numpy Fourier route's e, centres and flags on every type (issue: 1e-6; asserted 1e-10)."""
    pytest.importorskip("jax")
    from deconvbench.metacal.jax_wmom import JaxMetacal
    from deconvbench.metacal.measure import fixnoise_deconvolved

    batch, _ = _batch(smoke_metacal_snr50_file)
    with open_dataset(smoke_metacal_snr50_file) as ds:
        seeds = ds.params()["noise_seed"]
    pixel, target = batch.pixel_scale_arcsec, batch.target_fwhm_arcsec
    reconv = reconv_fwhm(batch.psf, pixel)
    fft = load_method("fft")
    images, noise = fft.deconvolve(batch), fixnoise_deconvolved(fft, batch, seeds)
    numpy_results = metacal_wmom(
        galaxy_spectrum(images, pixel, target),
        images.shape[-1],
        pixel,
        reconv,
        noise_spectrum=galaxy_spectrum(noise, pixel, target),
    )
    jax_results = JaxMetacal("cpu").wmom(images, pixel, target, reconv, noise_deconvolved=noise)
    plain = metacal_wmom(galaxy_spectrum(images, pixel, target), images.shape[-1], pixel, reconv)
    for mtype in METACAL_TYPES:
        assert np.array_equal(jax_results[mtype]["flags"], numpy_results[mtype]["flags"])
        for key in ("e1", "e2", "x", "y"):
            assert np.max(np.abs(jax_results[mtype][key] - numpy_results[mtype][key])) < 1e-10, (mtype, key)
        assert np.max(np.abs(jax_results[mtype]["e1"] - plain[mtype]["e1"])) > 1e-3  # the noise term is there
