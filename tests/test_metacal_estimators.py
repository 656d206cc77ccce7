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
    assert np.allclose(reconv_fwhm(images, PIXEL, step=0.01), 1.02 * fwhm, rtol=1e-14)


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
