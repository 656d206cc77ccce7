"""wmom's centring step for galaxies as large as the weight: the plain step of ``"newton"``
against the regularised Newton step of ``"regularised"`` (deconvbench.moments)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deconvbench.bias import BiasRun
from deconvbench.fourier import FWHM_PER_SIGMA
from deconvbench.leaderboard import canonical_name
from deconvbench.metacal.estimators import WMOM_WEIGHT_FWHM_ARCSEC, wmom
from deconvbench.metacal.fourier_wmom import galaxy_spectrum, metacal_wmom
from deconvbench.metacal.measure import MetacalConfig, measure_deconvolved
from deconvbench.metacal.shear_ops import METACAL_TYPES, metacal_images
from deconvbench.moments import FLAG_NOT_CONVERGED, newton_recentre_step, weighted_moments

PIXEL = 0.2
TARGET = 0.5
WEIGHT_SIGMA = WMOM_WEIGHT_FWHM_ARCSEC / FWHM_PER_SIGMA / PIXEL  # pixels


def gaussian_stamps(covariances, centres, n: int = 48) -> np.ndarray:
    """Unit-flux Gaussians of covariance C (pixels²) centred at ``centres`` (x, y pixels
    from (n//2, n//2)), sampled at the pixel centres (B, n, n)."""
    y, x = np.mgrid[:n, :n] - float(n // 2)
    out = []
    for (cxx, cyy, cxy), (mx, my) in zip(covariances, centres, strict=True):
        det = cxx * cyy - cxy**2
        dx, dy = x - mx, y - my
        quad = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
        out.append(np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(det)))
    return np.stack(out)


def weighted_covariance(cxx, cyy, cxy, sigma_w):
    """Covariance of a Gaussian of covariance C times the round weight of σ_w, (C⁻¹ + σ_w⁻²)⁻¹."""
    inverse = np.linalg.inv(np.array([[cxx, cxy], [cxy, cyy]])) + np.eye(2) / sigma_w**2
    return np.linalg.inv(inverse)


def test_large_galaxy_stalls_with_the_plain_step_and_converges_regularised():
    """A Gaussian twice the weight's size (J = 1/5, det J = 0.04 < 0.05), 0.4 px off: the plain
    step contracts the offset by 0.8 per iteration and is still moving after 30 iterations
    (flagged); the regularised step lands on the analytic fixed point (the galaxy's centre,
    weighted covariance (C⁻¹ + σ_w⁻²)⁻¹) to 1e-10."""
    s2 = (2.0 * WEIGHT_SIGMA) ** 2
    covariances = [(s2 * 1.1, s2 * 0.9, 0.05 * s2), (s2, s2, 0.0)]
    centres = [(0.4, -0.3), (-0.2, 0.25)]
    stamps = gaussian_stamps(covariances, centres)
    plain = weighted_moments(stamps, WEIGHT_SIGMA)
    assert np.all(plain["flags"] & FLAG_NOT_CONVERGED) and np.all(plain["n_iter"] == 30)
    res = weighted_moments(stamps, WEIGHT_SIGMA, centring="regularised")
    assert not res["flags"].any() and np.all(res["n_iter"] < 10)
    for i, ((cxx, cyy, cxy), (mx, my)) in enumerate(zip(covariances, centres, strict=True)):
        assert res["x"][i] - 24 == pytest.approx(mx, abs=1e-10)
        assert res["y"][i] - 24 == pytest.approx(my, abs=1e-10)
        m = weighted_covariance(cxx, cyy, cxy, WEIGHT_SIGMA)
        t = m[0, 0] + m[1, 1]
        assert res["e1"][i] == pytest.approx((m[0, 0] - m[1, 1]) / t, abs=1e-10)
        assert res["e2"][i] == pytest.approx(2 * m[0, 1] / t, abs=1e-10)
        assert res["T"][i] == pytest.approx(t, rel=1e-10)


def test_regularised_step_changes_nothing_where_newton_is_well_conditioned():
    """Galaxies up to the weight's size, with noise: the same centres and moments to the bit."""
    rng = np.random.default_rng(11)
    sizes = rng.uniform(0.3, 1.2, 64) * WEIGHT_SIGMA
    covariances = [
        (s * s * (1 + e), s * s * (1 - e), 0.0) for s, e in zip(sizes, rng.uniform(-0.3, 0.3, 64), strict=True)
    ]
    stamps = gaussian_stamps(covariances, rng.uniform(-1, 1, (64, 2)))
    stamps += rng.normal(0, 2e-4, stamps.shape)
    plain = weighted_moments(stamps, WEIGHT_SIGMA)
    regularised = weighted_moments(stamps, WEIGHT_SIGMA, centring="regularised")
    assert not plain["flags"].any()
    for key in ("x", "y", "e1", "e2", "T", "flux", "n_iter"):
        assert np.array_equal(plain[key], regularised[key]), key


def test_regularised_step_lifts_the_smallest_eigenvalue():
    """Where det J ≤ 0.05 the step is (J + μ)⁻¹ m₁ with λ_min(J + μ) = 0.1 (here J has
    eigenvalues −0.2 and 0.5: an indefinite J is lifted too); elsewhere it is Newton's."""
    sig2 = 4.0
    f, mx, my = 2.0, 0.3, -0.1
    m = (np.eye(2) - np.diag([-0.2, 0.5])) * sig2  # weighted covariance: J = diag(-0.2, 0.5)
    sums = (f, f * mx, f * my, f * (m[0, 0] + mx * mx), f * (m[1, 1] + my * my), f * (m[0, 1] + mx * my))
    sums = tuple(np.atleast_1d(np.float64(v)) for v in sums)
    step = newton_recentre_step(*sums, sig2, centring="regularised")
    lifted = np.diag([-0.2, 0.5]) + 0.3 * np.eye(2)
    expected = np.linalg.solve(lifted, [mx, my])
    assert np.allclose([step[0][0], step[1][0]], np.clip(expected, -1, 1), rtol=1e-12)
    plain = newton_recentre_step(*sums, sig2)
    assert (plain[0][0], plain[1][0]) == pytest.approx((mx, my), rel=1e-12)
    with pytest.raises(ValueError, match="centring"):
        newton_recentre_step(*sums, sig2, centring="damped")


def _large_and_small_galaxies() -> tuple[np.ndarray, np.ndarray]:
    """Deconvolved stamps (≈ galaxy ⊗ target): 12 Gaussians from 0.5× to 2.6× the weight's
    size, off-centre, with a little white noise; and Γ's FWHM per stamp (arcsec)."""
    rng = np.random.default_rng(5)
    sizes = np.linspace(0.5, 2.6, 12) * WEIGHT_SIGMA
    covariances = [(s * s * 1.08, s * s * 0.92, 0.03 * s * s) for s in sizes]
    stamps = gaussian_stamps(covariances, rng.uniform(-1, 1, (12, 2)))
    return stamps + rng.normal(0, 1e-5, stamps.shape), np.full(12, 0.85)


def test_fourier_route_with_the_regularised_step_equals_the_image_route():
    """Metacal + wmom on stamps up to 2.6× the weight: with "newton" the largest stall and
    are flagged on both routes; with "regularised" none is, and the Fourier route equals wmom
    on the image route's metacal images (|Δe| < 1e-8, the centres' tolerance), through
    MetacalConfig too."""
    stamps, reconv = _large_and_small_galaxies()
    spectrum = galaxy_spectrum(stamps, PIXEL, TARGET)
    images = metacal_images(stamps, PIXEL, TARGET, reconv, pad_factor=1.5)
    plain = metacal_wmom(spectrum, 48, PIXEL, reconv)
    assert any(plain[t]["flags"].any() for t in METACAL_TYPES)
    fourier = metacal_wmom(spectrum, 48, PIXEL, reconv, centring="regularised")
    for mtype in METACAL_TYPES:
        reference = wmom(images[mtype], PIXEL, centring="regularised")
        assert not fourier[mtype]["flags"].any() and not reference["flags"].any()
        for key in ("e1", "e2"):
            assert np.max(np.abs(fourier[mtype][key] - reference[key])) < 1e-8, (mtype, key)
        small = ~plain[mtype]["flags"].astype(bool)
        assert np.array_equal(fourier[mtype]["e1"][small], plain[mtype]["e1"][small])
    config = MetacalConfig(centring="regularised")
    routes = [
        measure_deconvolved(stamps, PIXEL, TARGET, reconv, MetacalConfig(route=r, centring="regularised"))
        for r in ("fourier", "image")
    ]
    assert not routes[0]["flags"].any() and not routes[1]["flags"].any()
    assert np.max(np.abs(routes[0]["R11"] - routes[1]["R11"])) < 1e-6
    assert config.to_dict()["centring"] == "regularised"


def test_jax_route_equals_numpy_with_the_regularised_step():
    pytest.importorskip("jax")
    from deconvbench.metacal.jax_wmom import JaxMetacal

    stamps, reconv = _large_and_small_galaxies()
    numpy_results = metacal_wmom(galaxy_spectrum(stamps, PIXEL, TARGET), 48, PIXEL, reconv, centring="regularised")
    jax_results = JaxMetacal("cpu").wmom(stamps, PIXEL, TARGET, reconv, centring="regularised")
    for mtype in METACAL_TYPES:
        assert np.array_equal(jax_results[mtype]["flags"], numpy_results[mtype]["flags"])
        assert not jax_results[mtype]["flags"].any()
        for key in ("e1", "e2", "x", "y"):
            assert np.max(np.abs(jax_results[mtype][key] - numpy_results[mtype][key])) < 1e-10, (mtype, key)


def test_centring_is_validated_and_recorded():
    with pytest.raises(ValueError, match="centring"):
        MetacalConfig(centring="damped")
    with pytest.raises(ValueError, match="wmom"):
        MetacalConfig(estimator="admom", centring="regularised")
    fields = dict(
        method="fft",
        method_params="{}",
        card="metacal-offsets",
        card_hash="h",
        split="snr50",
        n=1024,
        estimator="wmom",
        fixnoise=False,
        chunk_groups=64,
        n_boot=200,
        bootstrap_seed=0,
    )
    # the default leaves the identity of runs made before the option unchanged (their
    # checkpoints and saved states still resume and extend); another centring is a new run
    assert "centring" not in json.loads(BiasRun(**fields).key())
    assert json.loads(BiasRun(**fields, centring="regularised").key())["centring"] == "regularised"
    result = {
        "dataset": {"card": "metacal-offsets", "version": "2", "split": "snr50", "n": 1024},
        "method": {"name": "fft"},
        "metacal": {"estimator": "wmom", "centring": "regularised"},
    }
    assert canonical_name(result).endswith("_fft_regularised.json")


@pytest.mark.parametrize(
    "args, message",
    [
        (["bias", "--method", "fft", "--split", "noiseless", "--n", "8", "--centring", "damped"], "got 'damped'"),
        (["run", "--method", "fft", "--dataset", "smoke", "--centring", "regularised"], "--metacal runs only"),
        (
            ["bias", "--method", "fft", "--split", "noiseless", "--n", "8", "--estimator", "admom", "--centring",
             "regularised"],
            "wmom estimator only",
        ),
    ],
)  # fmt: skip
def test_bad_centring_is_a_one_line_error(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())
