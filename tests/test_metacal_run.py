"""The metacal step of the harness: bias on generated data, failures, CLI, reference route."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deconvbench.harness import run_method
from deconvbench.metacal.estimators import ESTIMATORS, register_estimator, wmom
from deconvbench.metacal.measure import MetacalConfig, measure_batch
from deconvbench.methods import Batch, load_method
from deconvbench.store import open_dataset


def test_fft_on_noiseless_metacal_set_is_calibrated(smoke_metacal_file, tmp_path):
    """Harness self-test: exact deconvolution + batched metacal recovers the input shear.
    (64 stamps here; the full-size run is `deconvbench run --method fft --metacal`.)"""
    result = run_method(
        load_method("fft"), smoke_metacal_file, tmp_path / "r.json", batch_size=32, metacal=MetacalConfig()
    )
    block = result["metacal"]
    assert block["n_pairs"] == 32 and block["overall"]["n_excluded"] == 0
    # measured on smoke-metacal v3: m = 6.872e-5 (the estimator's floor; 6.765e-5 on v2), c, c1 ~ 2e-9,
    # R11 = 0.335085
    assert block["m"] == pytest.approx(6.872e-5, abs=1e-7), block["m"]
    assert abs(block["c"]) < 1e-8 and abs(block["c1"]) < 1e-8
    assert block["R11"] == pytest.approx(0.335085, rel=1e-5)
    # the estimator's own non-linearity (≈ 0.9 g² = 9e-5) is visible and reported, not subtracted
    assert block["m_floor_estimator"] == pytest.approx(9e-5)
    assert 0.2 < block["R11"] < 1.0 and block["alpha"] is None
    assert result["throughput"]["metacal_gal_per_s"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["metacal"]["estimator"] == "wmom"


def test_galsim_mcal_method_agrees_with_the_batched_path(smoke_metacal_file, tmp_path):
    """The registered per-object route and fft + batched shear ops measure the same bias on
    generated stamps. (Image-level agreement to < 1e-4 of the peak on analytic profiles is
    test_metacal_ops.py::test_batched_path_matches_galsim_reference_route; on generated
    stamps the two differ by the PSF flux outside the stamp, ~1e-3 for Moffat β = 2.5.)"""
    runs = {
        name: run_method(
            load_method(name), smoke_metacal_file, tmp_path / f"{name}.json", batch_size=64, metacal=MetacalConfig()
        )["metacal"]
        for name in ("fft", "galsim-mcal")
    }
    # measured on smoke-metacal v3: m 6.872e-5 vs 6.977e-5, R11 equal to 1e-6 relative, c 9e-10
    assert abs(runs["fft"]["m"] - runs["galsim-mcal"]["m"]) < 4e-6
    assert runs["fft"]["R11"] == pytest.approx(runs["galsim-mcal"]["R11"], rel=1e-5)
    assert abs(runs["galsim-mcal"]["c"]) < 1e-8


def test_estimator_nans_are_counted_and_excluded(smoke_metacal_file, tmp_path):
    """An estimator failing on some stamps: their groups are excluded and counted, never averaged."""

    def flaky(images, pixel_scale):
        out = wmom(images, pixel_scale)
        bad = np.arange(len(images)) % 16 == 3
        out["e1"] = np.where(bad, np.nan, out["e1"])
        out["flags"] = np.where(bad, 1, out["flags"])
        return out

    register_estimator("flaky-test", flaky)
    try:
        result = run_method(
            load_method("fft"),
            smoke_metacal_file,
            tmp_path / "r.json",
            batch_size=32,
            metacal=MetacalConfig(estimator="flaky-test"),
        )
    finally:
        ESTIMATORS.pop("flaky-test")
    overall = result["metacal"]["overall"]
    assert overall["n_invalid"] == 4 and overall["n_failed_measurement"] == 4
    assert overall["n_excluded"] == 16  # the 4 groups of the failed stamps
    assert overall["n_pairs"] == 24
    assert np.isfinite(overall["m"]) and abs(overall["m"]) < 1e-3


def test_fixnoise_field_is_shared_by_pairs_and_rotated_before_deconvolution(smoke_metacal_file):
    """The fixnoise field itself (not only the stored seeds): ±g stamps that share their data
    noise share it, other stamps do not, it has each stamp's sigma and is independent of the
    data noise; the term added is rot⁻¹(metacal(deconvolve(rot(field)))), ngmix's order."""
    from deconvbench.metacal.measure import fixnoise_fields, fixnoise_term
    from deconvbench.metacal.psf_fit import reconv_fwhm
    from deconvbench.metacal.shear_ops import metacal_images
    from deconvbench.sim.noise import noise_field

    with open_dataset(smoke_metacal_file) as ds:
        arrays = {k: ds.read(k, 0, 8) for k in ("observed", "psf")}
        params = ds.params()[:8]
        batch = Batch(
            **arrays,
            noise_sigma=np.full(8, 0.5),
            pixel_scale_arcsec=ds.pixel_scale_arcsec,
            target_fwhm_arcsec=ds.target_psf_fwhm_arcsec,
        )
    seeds = params["noise_seed"]
    fields = fixnoise_fields(batch.noise_sigma, seeds, batch.observed.shape)
    assert np.array_equal(fields[0], fields[1]) and np.array_equal(fields[2], fields[3])  # slots (+g, −g)
    assert not np.allclose(fields[0], fields[2]) and not np.allclose(fields[0], fields[4])
    assert np.std(fields) == pytest.approx(0.5, rel=0.02)
    data_noise = noise_field(int(seeds[0]), fields.shape[1:])
    assert abs(np.corrcoef(fields[0].ravel(), data_noise.ravel())[0, 1]) < 5 / np.sqrt(data_noise.size)  # 5σ
    fft = load_method("fft")
    config = MetacalConfig(fixnoise=True)
    reconv = reconv_fwhm(batch.psf, batch.pixel_scale_arcsec)
    term = fixnoise_term(fft, batch, reconv, config, seeds)
    rotated = Batch(
        observed=np.rot90(fields, 1, axes=(-2, -1)),
        psf=batch.psf,
        noise_sigma=batch.noise_sigma,
        pixel_scale_arcsec=batch.pixel_scale_arcsec,
        target_fwhm_arcsec=batch.target_fwhm_arcsec,
    )
    expected = metacal_images(
        fft.deconvolve(rotated),
        batch.pixel_scale_arcsec,
        batch.target_fwhm_arcsec,
        reconv,
        pad_factor=config.pad_factor,
    )
    for key, value in expected.items():
        assert np.allclose(term[key], np.rot90(value, -1, axes=(-2, -1)), rtol=0, atol=1e-12), key
    estimate = fft.deconvolve(batch)
    plain = measure_batch(fft, batch, estimate, MetacalConfig())
    fixed = measure_batch(fft, batch, estimate, config, noise_seed=seeds)
    again = measure_batch(fft, batch, estimate, config, noise_seed=seeds)
    assert np.array_equal(fixed["e1"], again["e1"])  # reproducible noise fields
    assert not np.allclose(fixed["e1"], plain["e1"])


def test_cli_metacal_table_and_result_block(tmp_path):
    import os

    env = {**os.environ, "DECONVBENCH_DATA": str(tmp_path / "data")}
    out = tmp_path / "res"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deconvbench.cli",
            "run",
            "--method",
            "fft",
            "--metacal",
            "--dataset",
            "smoke-metacal",
            "--split",
            "noiseless",
            "--n",
            "32",
            "--out",
            str(out / "fft.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "m ± σm" in proc.stdout and "|m|<1e-3" in proc.stdout
    block = json.loads((out / "fft.json").read_text())["metacal"]
    for key in (
        "m",
        "m_err",
        "c",
        "c_err",
        "alpha",
        "alpha_err",
        "R11",
        "R22",
        "n_pairs",
        "estimator",
        "by_snr",
        "overall",
    ):
        assert key in block
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "deconvbench.cli",
            "run",
            "--method",
            "fft",
            "--metacal",
            "--dataset",
            "smoke",
            "--split",
            "test",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert bad.returncode == 2 and "constant-shear" in bad.stderr and "Traceback" not in bad.stderr
