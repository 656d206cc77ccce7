"""PSF Gaussian fit and shear estimators (wmom, admom), registry, response."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from deconvbench.metacal.estimators import (
    ESTIMATORS,
    admom,
    get_estimator,
    register_estimator,
    response,
    wmom,
)
from deconvbench.metacal.psf_fit import fit_gaussian_fwhm, reconv_fwhm

from .galsim_draw import PIXEL, draw

FWHM_PER_SIGMA = 2.3548200450309493


@pytest.mark.parametrize("n", [48, 53])
def test_fit_gaussian_fwhm_matches_galsim_hsm(n):
    psfs = [
        galsim.Moffat(beta=2.5, fwhm=0.6),
        galsim.Moffat(beta=3.5, fwhm=0.9).shear(g1=0.05, g2=0.02),
        galsim.Moffat(beta=4.5, fwhm=1.1).shear(g1=-0.03, g2=0.0),
        galsim.Gaussian(fwhm=0.7),
    ]
    images = np.stack([draw(p, n) for p in psfs])
    images /= images.sum(axis=(1, 2), keepdims=True)
    fwhm = fit_gaussian_fwhm(images, PIXEL)
    sigmas = [galsim.hsm.FindAdaptiveMom(galsim.Image(im, scale=PIXEL)).moments_sigma for im in images]
    ref = np.array(sigmas) * PIXEL * FWHM_PER_SIGMA
    assert fwhm.shape == (len(psfs),)
    assert np.abs(fwhm / ref - 1).max() < 1e-5
    # the Gaussian PSF image includes the pixel: the fit is wider than the Gaussian itself
    assert 0.7 < fwhm[3] < 0.7 * 1.02
    # round PSFs: Γ is (1 + 2·step) × the fit, no ellipticity widening
    gamma = reconv_fwhm(images, PIXEL, step=0.01)
    assert gamma[[0, 3]] == pytest.approx(1.02 * fwhm[[0, 3]], rel=1e-6)


def hsm_fitgauss_fwhm(image, step=0.01):
    """ngmix's fitgauss FWHM (arcsec) from GalSim HSM moments, written out independently:
    T = 2σ²/sqrt(1−|e|²) of the adaptive ellipse, λmax = T/2·(1+|e|),
    d = min(1 + 2(sqrt(λmax/(T/2)) − 1), 1.1), σ_Γ = sqrt(T·d/2)·(1 + 2·step)."""
    res = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=PIXEL))
    e = abs(res.observed_shape.e)
    t = 2 * res.moments_sigma**2 / np.sqrt(1 - e**2)
    d = min(1 + 2 * (np.sqrt(1 + e) - 1), 1.1)
    return np.sqrt(t * d / 2) * (1 + 2 * step) * PIXEL * FWHM_PER_SIGMA


def test_reconv_kernel_is_ngmix_fitgauss_widened_for_psf_ellipticity():
    """Γ follows ngmix's fitgauss (checked against GalSim HSM moments); its widening over
    the round fit is 1.95% for a Moffat sheared by 0.02 and 4.9% for one sheared by 0.05
    (the leakage split's PSFs)."""
    n = 48
    psfs = [galsim.Moffat(beta=3.0, fwhm=0.8).shear(g1=g, g2=0.0) for g in (0.0, 0.02, 0.05)]
    psfs.append(galsim.Moffat(beta=3.0, fwhm=0.8).shear(g1=0.3, g2=0.2))  # capped at d = 1.1
    images = np.stack([draw(p, n) for p in psfs])
    images /= images.sum(axis=(1, 2), keepdims=True)
    gamma = reconv_fwhm(images, PIXEL, step=0.01)
    ref = np.array([hsm_fitgauss_fwhm(im) for im in images])
    assert np.abs(gamma / ref - 1).max() < 2e-6
    widening = gamma / (1.02 * fit_gaussian_fwhm(images, PIXEL)) - 1
    assert widening[0] == pytest.approx(0.0, abs=1e-9)
    assert widening[1] == pytest.approx(0.01948, abs=2e-5)
    assert widening[2] == pytest.approx(0.04885, abs=2e-5)
    assert widening[3] > widening[2]


def test_wmom_round_sheared_and_failed_stamps():
    n = 48
    sigma = 0.5
    shear = galsim.Shear(g1=0.2, g2=-0.1)
    images = np.stack(
        [
            draw(galsim.Gaussian(sigma=sigma), n, "no_pixel"),
            draw(galsim.Gaussian(sigma=sigma).shear(shear), n, "no_pixel"),
            np.full((n, n), np.nan),
            -draw(galsim.Gaussian(sigma=sigma), n, "no_pixel"),
        ]
    )
    res = wmom(images, PIXEL, weight_fwhm_arcsec=1.2)
    assert abs(res["e1"][0]) < 1e-12 and abs(res["e2"][0]) < 1e-12
    # analytic: Gaussian (cov C) × weight (σ_w² I) is a Gaussian of cov (C⁻¹ + I/σ_w²)⁻¹
    s = shear.getMatrix()
    cov = np.linalg.inv(np.linalg.inv(sigma**2 * s @ s.T) + np.eye(2) / (1.2 / FWHM_PER_SIGMA) ** 2)
    trace = cov[0, 0] + cov[1, 1]
    assert res["e1"][1] == pytest.approx((cov[0, 0] - cov[1, 1]) / trace, abs=1e-8)
    assert res["e2"][1] == pytest.approx(2 * cov[0, 1] / trace, abs=1e-8)
    assert res["T"][1] == pytest.approx(trace, rel=1e-8)
    assert np.all(res["flags"][:2] == 0)
    assert np.all(res["flags"][2:] != 0) and np.all(np.isnan(res["e1"][2:])) and np.all(np.isnan(res["e2"][2:]))
    assert int(np.count_nonzero(res["flags"])) == 2


def test_wmom_weight_follows_the_galaxy():
    """The weight centres itself on the object: a sub-pixel or one-pixel offset leaves e
    and T unchanged (measured: 3e-9, GalSim's drawing accuracy) and the centre is reported in pixels."""
    n = 48
    # a metacal image: galaxy ⊗ round Gaussian Γ (well sampled, so sums over pixels do
    # not depend on the sub-pixel position)
    gal = galsim.Convolve(galsim.Exponential(half_light_radius=0.5).shear(g1=0.1, g2=-0.05), galsim.Gaussian(fwhm=0.8))
    offsets = [(0.0, 0.0), (0.37, -0.81), (1.0, 1.0), (-0.5, 0.25)]
    images = np.stack([draw(gal.shift(dx * PIXEL, dy * PIXEL), n, "no_pixel") for dx, dy in offsets])
    res = wmom(images, PIXEL)
    assert np.all(res["flags"] == 0)
    for key in ("e1", "e2", "T"):
        assert np.abs(res[key] - res[key][0]).max() < 1e-8 * max(1.0, abs(res[key][0])), key
    assert res["x"] - n // 2 == pytest.approx([o[0] for o in offsets], abs=1e-6)
    assert res["y"] - n // 2 == pytest.approx([o[1] for o in offsets], abs=1e-6)


def test_admom_agrees_with_galsim_hsm():
    """The batched adaptive moments against GalSim HSM, the independent check: e and σ
    agree to 1e-6 on offset, sheared galaxies and PSFs."""
    n = 48
    profiles = [
        galsim.Exponential(half_light_radius=0.5).shear(g1=0.2, g2=-0.1).shift(0.07, -0.11),
        galsim.Convolve(
            galsim.Sersic(n=2.5, half_light_radius=0.6).shear(g1=-0.3, g2=0.1), galsim.Moffat(beta=3.0, fwhm=0.8)
        ),
        galsim.Moffat(beta=2.5, fwhm=0.7).shear(g1=0.04, g2=0.03).shift(0.1, 0.0),
    ]
    images = np.stack([draw(p, n) for p in profiles])
    res = admom(images, PIXEL)
    assert np.all(res["flags"] == 0)
    for i, im in enumerate(images):
        hsm = galsim.hsm.FindAdaptiveMom(galsim.Image(im, scale=PIXEL))
        assert res["e1"][i] == pytest.approx(hsm.observed_shape.e1, abs=1e-6)
        assert res["e2"][i] == pytest.approx(hsm.observed_shape.e2, abs=1e-6)
        e2sum = hsm.observed_shape.e1**2 + hsm.observed_shape.e2**2
        t_hsm = 2 * (hsm.moments_sigma * PIXEL) ** 2 / np.sqrt(1 - e2sum)
        assert res["T"][i] == pytest.approx(t_hsm, rel=1e-6)
        assert res["x"][i] + 1 == pytest.approx(hsm.moments_centroid.x, abs=1e-5)  # GalSim is 1-based
        assert res["flux"][i] == pytest.approx(hsm.moments_amp, rel=1e-5)


def test_admom_gives_distortion_and_flags_failures():
    n = 48
    shear = galsim.Shear(g1=0.2, g2=-0.1)
    images = np.stack(
        [draw(galsim.Gaussian(sigma=0.5).shear(shear), n, "no_pixel"), np.full((n, n), np.nan), np.zeros((n, n))]
    )
    res = admom(images, PIXEL)
    assert res["e1"][0] == pytest.approx(shear.e1, abs=1e-5)  # distortion, not reduced shear
    assert res["e2"][0] == pytest.approx(shear.e2, abs=1e-5)
    assert res["T"][0] == pytest.approx(np.trace(0.25 * shear.getMatrix() @ shear.getMatrix().T), rel=1e-4)
    assert res["flags"][0] == 0
    assert np.all(res["flags"][1:] != 0) and np.all(np.isnan(res["e1"][1:]))


def test_registry():
    assert get_estimator("wmom") is wmom and get_estimator("admom") is admom
    with pytest.raises(KeyError):
        get_estimator("nope")

    def dummy(images, pixel_scale):
        return wmom(images, pixel_scale, weight_fwhm_arcsec=2.0)

    register_estimator("wmom2", dummy)
    try:
        assert get_estimator("wmom2") is dummy
    finally:
        ESTIMATORS.pop("wmom2")


def test_response_definition():
    res = {
        "1p": {"e1": np.array([0.011, 1.0]), "e2": np.array([0.002, 0.0])},
        "1m": {"e1": np.array([-0.009, 1.0]), "e2": np.array([0.0, np.nan])},
        "2p": {"e1": np.array([0.001, 0.0]), "e2": np.array([0.008, 0.0])},
        "2m": {"e1": np.array([0.0, 0.0]), "e2": np.array([-0.008, 0.0])},
    }
    r = response(res, step=0.01)
    assert r.shape == (2, 2, 2)
    assert np.allclose(r[0], [[1.0, 0.05], [0.1, 0.8]])
    assert np.isnan(r[1, 1, 0]) and r[1, 0, 0] == 0.0
