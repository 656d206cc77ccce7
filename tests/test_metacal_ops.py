"""Batched metacal image operations: shear algebra, exactness against GalSim, identity,
the per-object GalSim reference route, fixnoise."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from deconvbench.fourier import gaussian_ft as gaussian_kernel_ft
from deconvbench.fourier import k_grid, pixel_ft
from deconvbench.metacal.psf_fit import reconv_fwhm
from deconvbench.metacal.reference import galsim_metacal_images
from deconvbench.metacal.shear_ops import (
    METACAL_TYPES,
    elementary_shear_factors,
    metacal_images,
    metacal_shear,
    shear_images,
    shear_matrix,
)

from .galsim_draw import PIXEL, draw

TARGET = 0.5


def peak_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("g", [(0.01, 0.0), (0.0, -0.01), (0.007, -0.007), (0.3, 0.2), (0.0, 0.0)])
def test_shear_matrix_and_elementary_factors(g):
    matrix = shear_matrix(*g)
    assert np.allclose(matrix, galsim.Shear(g1=g[0], g2=g[1]).getMatrix(), rtol=0, atol=1e-15)
    inverse = np.linalg.inv(matrix)
    product = np.eye(2)
    factors = elementary_shear_factors(inverse)
    assert len(factors) <= 4
    for axis, u in factors:
        product = product @ (np.array([[1.0, u], [0.0, 1.0]]) if axis == "x" else np.array([[1.0, 0.0], [u, 1.0]]))
        if max(abs(x) for x in g) <= 0.01:
            assert abs(u) < 0.11  # small coefficients: O(sqrt(|g|))
    assert np.allclose(product, inverse, rtol=0, atol=1e-13)


def test_kernel_transforms():
    ky, kx = k_grid(8, PIXEL)
    assert ky.shape == (8, 1) and kx.shape == (1, 5)
    assert gaussian_kernel_ft(kx, ky, 0.7)[0, 0] == 1.0 and pixel_ft(kx, ky, PIXEL)[0, 0] == 1.0
    # the sheared Gaussian's transform is the Gaussian at Sᵀk, = GalSim's kValue
    sheared = galsim.Gaussian(fwhm=0.7).shear(g1=0.1, g2=-0.05)
    value = gaussian_kernel_ft(np.array(3.0), np.array(-2.0), 0.7, shear_matrix(0.1, -0.05))
    assert value == pytest.approx(sheared.kValue(3.0, -2.0).real, rel=1e-12)
    pixel = galsim.Pixel(PIXEL)
    assert pixel_ft(np.array(5.0), np.array(7.0), PIXEL) == pytest.approx(pixel.kValue(5.0, 7.0).real, rel=1e-12)


@pytest.mark.parametrize("n", [48, 53])
def test_metacal_of_gaussian_equals_galsim_rendering(n):
    """D = Gaussian galaxy ⊗ target: every metacal image equals GalSim's direct rendering
    of galaxy.shear(g) ⊗ Γ, without a further pixel (Γ is the new effective PSF, as in
    ngmix)."""
    galaxy = galsim.Gaussian(sigma=0.4).shear(g1=0.2, g2=-0.1)
    deconvolved = draw(galsim.Convolve(galaxy, galsim.Gaussian(fwhm=TARGET)), n)
    reconv = 0.7
    out = metacal_images(deconvolved[None], PIXEL, TARGET, reconv)
    assert set(out) == set(METACAL_TYPES)
    for mtype, image in out.items():
        g1, g2 = metacal_shear(mtype)
        ref = draw(galsim.Convolve(galaxy.shear(g1=g1, g2=g2), galsim.Gaussian(fwhm=reconv)), n, "no_pixel")
        assert image.shape == (1, n, n)
        assert peak_error(image[0], ref) < 1e-5, mtype


def test_metacal_moments_match_analytic_sheared_covariance():
    """Unweighted moments of the 1p/2p images = S Σ_gal Sᵀ + σ_Γ² I (no pixel term: Γ
    is drawn without the pixel)."""
    n, sigma_gal, reconv = 101, 1.0, 1.2
    deconvolved = draw(galsim.Convolve(galsim.Gaussian(sigma=sigma_gal), galsim.Gaussian(fwhm=TARGET)), n)
    out = metacal_images(deconvolved[None], PIXEL, TARGET, reconv, types=("1p", "2p", "noshear"))
    coord = (np.arange(n) - n // 2) * PIXEL
    x, y = coord[None, :], coord[:, None]
    sigma_g = reconv / 2.3548200450309493
    for mtype, image in out.items():
        img = image[0]
        flux = img.sum()
        measured = (
            np.array([[(img * x * x).sum(), (img * x * y).sum()], [(img * x * y).sum(), (img * y * y).sum()]]) / flux
        )
        s = shear_matrix(*metacal_shear(mtype))
        expected = sigma_gal**2 * s @ s.T + sigma_g**2 * np.eye(2)
        assert flux == pytest.approx(deconvolved.sum(), rel=1e-7)
        assert np.abs(measured - expected).max() / expected[0, 0] < 1e-6, mtype
        if mtype != "noshear":
            assert abs(measured[0, 0] - measured[1, 1]) + abs(measured[0, 1]) > 1e-2  # really sheared


@pytest.mark.parametrize("n", [48, 53])
def test_zero_shear_with_target_reconvolution_removes_only_the_pixel(n):
    """noshear with Γ = the target's Gaussian divides out the pixel and nothing else:
    D = galaxy ⊗ target ⊗ pixel becomes galaxy ⊗ target (drawn with 'no_pixel')."""
    galaxy = galsim.Convolve(
        galsim.Exponential(half_light_radius=0.4).shear(g1=0.1, g2=0.2), galsim.Gaussian(fwhm=TARGET)
    )
    out = metacal_images(draw(galaxy, n)[None], PIXEL, TARGET, TARGET, types=("noshear",))
    assert peak_error(out["noshear"][0], draw(galaxy, n, "no_pixel")) < 1e-5


def test_reconvolution_narrower_than_target_is_refused():
    with pytest.raises(ValueError):
        metacal_images(np.zeros((1, 16, 16)), PIXEL, TARGET, TARGET, types=("1p",))
    with pytest.raises(ValueError):
        metacal_images(np.zeros((1, 16, 16)), PIXEL, TARGET, 0.9 * TARGET, types=("noshear",))


def test_shear_images_is_exact_for_band_limited_profiles():
    n = 48
    profile = galsim.Gaussian(sigma=0.5).shear(g1=0.1, g2=0.2)
    image = draw(profile, n, "no_pixel")
    out = shear_images(image, 0.05, -0.03)
    ref = draw(profile.shear(g1=0.05, g2=-0.03), n, "no_pixel")
    assert peak_error(out[0], ref) < 1e-7


def test_batched_path_matches_galsim_reference_route():
    """Noiseless exponential galaxies ⊗ Moffat PSF: batched metacal of D = galaxy ⊗ target
    vs the per-object GalSim route from the observed stamp and PSF image.

    β = 4.5: the stamp holds all but ~1e-5 of the PSF flux (β = 3 loses ~5e-4 outside a
    48-pixel stamp, which the reference route turns into a flux error of that size)."""
    n = 48
    psf = galsim.Moffat(beta=4.5, fwhm=0.8)
    psf_image = draw(psf, n)
    psf_image /= psf_image.sum()
    reconv = float(reconv_fwhm(psf_image, PIXEL)[0])
    galaxies = [
        galsim.Exponential(half_light_radius=hlr).shear(g1=e1, g2=e2)
        for hlr, e1, e2 in [(0.3, 0.1, -0.2), (0.5, -0.3, 0.1), (0.2, 0.0, 0.3)]
    ]
    target = galsim.Gaussian(fwhm=TARGET)
    deconvolved = np.stack([draw(galsim.Convolve(g, target), n) for g in galaxies])
    batched = metacal_images(deconvolved, PIXEL, TARGET, reconv)
    for i, galaxy in enumerate(galaxies):
        observed = draw(galsim.Convolve(galaxy, psf), n)
        ref = galsim_metacal_images(observed, psf_image, PIXEL, reconv)
        for mtype in METACAL_TYPES:
            assert peak_error(batched[mtype][i], ref[mtype]) < 1e-4, (i, mtype)


class _Identity:
    """A 'deconvolver' returning its input (for tests of the fixnoise plumbing)."""

    name, device = "identity", "cpu"

    def deconvolve(self, batch):
        return np.asarray(batch.observed, dtype=np.float64)


def test_fixnoise_rotation_flips_the_applied_shear():
    """For odd n (rot90 about the centre pixel) the fixnoise term of 1p/2p is the 1m/2m
    metacal image of the same noise: the 90° rotation reverses the shear. With an identity
    deconvolver the field seen by metacal is the rotated field itself."""
    from deconvbench.metacal.measure import MetacalConfig, fixnoise_fields, fixnoise_term
    from deconvbench.methods import Batch

    n, seeds = 33, np.array([11, 12], dtype=np.uint64)
    sigma = np.array([1.0, 2.0])
    batch = Batch(
        observed=np.zeros((2, n, n)),
        psf=np.zeros((2, n, n)),
        noise_sigma=sigma,
        pixel_scale_arcsec=PIXEL,
        target_fwhm_arcsec=TARGET,
    )
    config = MetacalConfig()
    fixed = fixnoise_term(_Identity(), batch, np.full(2, 0.8), config, seeds)
    noise = fixnoise_fields(sigma, seeds, (2, n, n))
    direct = metacal_images(noise, PIXEL, TARGET, 0.8, pad_factor=config.pad_factor)
    for a, b in [("noshear", "noshear"), ("1p", "1m"), ("1m", "1p"), ("2p", "2m"), ("2m", "2p")]:
        assert peak_error(fixed[a], direct[b]) < 1e-5, a  # ~5e-7: stamp-edge cut of the noise
    assert peak_error(fixed["1p"], direct["1p"]) > 1e-3
