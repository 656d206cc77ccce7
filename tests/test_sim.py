"""Generator physics: analytic Gaussian case, GalSim re-rendering, noise, centring."""

from __future__ import annotations

import math

import galsim
import numpy as np
import pytest

from deconvbench.sim.generate import generate
from deconvbench.sim.render import render_group
from deconvbench.sim.sampling import draw_group
from deconvbench.store import open_dataset

from .conftest import make_card


def moments(image: np.ndarray):
    """Unweighted flux, centroid (row, col) and second moments (pixels)."""
    n = image.shape[-1]
    y, x = np.mgrid[0:n, 0:n].astype(float)
    flux = image.sum()
    xc, yc = (image * x).sum() / flux, (image * y).sum() / flux
    ixx = (image * (x - xc) ** 2).sum() / flux
    iyy = (image * (y - yc) ** 2).sum() / flux
    ixy = (image * (x - xc) * (y - yc)).sum() / flux
    return flux, yc, xc, ixx, iyy, ixy


def gaussian_card(size: int):
    return make_card(
        stamp={"size": size, "pixel_scale_arcsec": 0.2, "target_psf_fwhm_arcsec": 0.5, "max_offset_pixels": 0.0},
        galaxy={
            "profiles": {"gaussian": 1.0},
            "shape_sigma": 0.0,
            "half_light_radius_arcsec": {"median": 0.5, "sigma": 0.0, "min": 0.1, "max": 2.0},
            "flux": {"median": 1000.0, "sigma": 0.0, "min": 1.0, "max": 1e5},
        },
        psf={"families": {"gaussian": 1.0}, "fwhm_arcsec": {"min": 0.8, "max": 0.8}, "ellipticity_max": 0.0},
        noise={"snr_levels": [math.inf]},
    )


@pytest.mark.parametrize("size", [64, 65])
def test_gaussian_galaxy_gaussian_psf_is_analytic(size):
    card = gaussian_card(size)
    rows = draw_group(card, "test", 0)
    images = render_group(card, rows)
    scale = 0.2
    sigma_gal = 0.5 / math.sqrt(2 * math.log(2)) / scale  # hlr → sigma, pixels
    sigma_psf = 0.8 / (2 * math.sqrt(2 * math.log(2))) / scale
    sigma_target = 0.5 / (2 * math.sqrt(2 * math.log(2))) / scale
    pixel_var = 1.0 / 12.0  # top-hat pixel response, per axis
    for key, sigma_kernel in (("noiseless", sigma_psf), ("truth", sigma_target)):
        flux, yc, xc, ixx, iyy, ixy = moments(images[key][0].astype(np.float64))
        expected = sigma_gal**2 + sigma_kernel**2 + pixel_var
        assert flux == pytest.approx(1000.0, rel=1e-3), key
        assert abs(yc - size // 2) < 0.01 and abs(xc - size // 2) < 0.01, (key, yc, xc)
        assert ixx == pytest.approx(expected, rel=2e-3), key
        assert iyy == pytest.approx(expected, rel=2e-3), key
        assert abs(ixy) < 1e-3 * expected
    psf = images["psf"][0].astype(np.float64)
    flux, yc, xc, ixx, _, _ = moments(psf)
    assert flux == pytest.approx(1.0, abs=1e-6)
    assert abs(yc - size // 2) < 0.01 and abs(xc - size // 2) < 0.01
    assert ixx == pytest.approx(sigma_psf**2 + pixel_var, rel=2e-3)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (size // 2, size // 2)


def _direct_galsim(row, n, scale, target_fwhm):
    """Re-render a stamp from its params row with plain GalSim calls (no deconvbench code),
    at tight settings: FFT grids of 512² (no wrap-around), k-space out to 1e-6 of the flux."""
    gsp = galsim.GSParams(minimum_fft_size=512, maxk_threshold=1e-6)
    hlr, flux = row["gal_hlr_arcsec"], row["gal_flux"]
    profile = row["gal_profile"].decode()
    if profile == "bulge+disk":
        bf = row["gal_bulge_fraction"]
        gal = galsim.Exponential(half_light_radius=hlr, flux=(1 - bf) * flux, gsparams=gsp) + galsim.DeVaucouleurs(
            half_light_radius=row["gal_bulge_hlr_arcsec"], flux=bf * flux, trunc=row["gal_trunc_arcsec"], gsparams=gsp
        )
    else:
        kf = row["gal_knots_flux_fraction"]
        gal = galsim.Exponential(half_light_radius=hlr, flux=(1 - kf) * flux, gsparams=gsp) + galsim.RandomKnots(
            int(row["gal_knots_n"]),
            half_light_radius=hlr,
            flux=kf * flux,
            rng=galsim.BaseDeviate(int(row["gal_knots_seed"])),
            gsparams=gsp,
        )
    gal = gal.shear(g1=row["gal_g1"], g2=row["gal_g2"]).rotate(row["rotation_deg"] * galsim.degrees)
    gal = gal.shear(g1=row["shear_g1"], g2=row["shear_g2"])
    gal = gal.shift(row["offset_x_pix"] * scale, row["offset_y_pix"] * scale)
    assert row["psf_family"].decode() == "moffat"
    psf = galsim.Moffat(beta=row["psf_beta"], fwhm=row["psf_fwhm_arcsec"], gsparams=gsp).shear(
        g1=row["psf_g1"], g2=row["psf_g2"]
    )
    offset = (0.5, 0.5) if n % 2 == 0 else (0.0, 0.0)
    kw = dict(nx=n, ny=n, scale=scale, offset=offset)
    noiseless = galsim.Convolve(gal, psf).drawImage(**kw).array
    truth = galsim.Convolve(gal, galsim.Gaussian(fwhm=target_fwhm, gsparams=gsp)).drawImage(**kw).array
    psf_image = psf.drawImage(**kw).array
    return noiseless, truth, psf_image / psf_image.sum()


def test_stamps_equal_direct_galsim_rendering(smoke_test_file):
    with open_dataset(smoke_test_file) as ds:
        params = ds.params()
        moffat = params["psf_family"] == b"moffat"
        picks = [
            i
            for profile in (b"bulge+disk", b"disk+knots")
            for i in np.flatnonzero(moffat & (params["gal_profile"] == profile))[:2]
        ]
        assert len(picks) == 4
        for i in picks:
            noiseless, truth, psf = _direct_galsim(
                params[i], ds.stamp_size, ds.pixel_scale_arcsec, ds.target_psf_fwhm_arcsec
            )
            # the contract: max |fast − GalSim| ≤ 1e-4 of the peak (measured: ≤ 2e-5)
            np.testing.assert_allclose(
                ds.read("noiseless", i, i + 1)[0], noiseless, rtol=0, atol=1e-4 * noiseless.max()
            )
            np.testing.assert_allclose(ds.read("truth", i, i + 1)[0], truth, rtol=0, atol=1e-4 * truth.max())
            np.testing.assert_allclose(ds.read("psf", i, i + 1)[0], psf, rtol=0, atol=1e-4 * psf.max())


def test_noise_has_unit_variance_and_snr_is_matched_filter(smoke_test_file):
    with open_dataset(smoke_test_file) as ds:
        observed = ds.read("observed").astype(np.float64)
        noiseless = ds.read("noiseless").astype(np.float64)
        sigma = ds.read("noise_sigma")
        snr = ds.read("snr")
        params = ds.params()
    noisy = sigma > 0
    assert noisy.sum() > 40 and (~noisy).sum() > 5
    residual = (observed[noisy] - noiseless[noisy]) / sigma[noisy, None, None]
    assert residual.mean() == pytest.approx(0.0, abs=0.01)
    assert residual.var() == pytest.approx(1.0, abs=0.01)  # 50+ stamps × 2304 px: σ(var) ≈ 0.004
    per_stamp_var = residual.reshape(noisy.sum(), -1).var(axis=1)
    assert np.all(np.abs(per_stamp_var - 1) < 0.15)
    expected_snr = np.sqrt((noiseless**2).sum(axis=(1, 2)))[noisy] / sigma[noisy]
    np.testing.assert_allclose(snr[noisy], expected_snr, rtol=1e-9)
    np.testing.assert_allclose(snr[noisy], params["snr_level"][noisy], rtol=1e-6)
    assert np.all(np.isinf(snr[~noisy]))
    np.testing.assert_array_equal(observed[~noisy], noiseless[~noisy])


def test_every_family_and_level_is_in_smoke(smoke_test_file):
    from deconvbench.cards import load_card

    card = load_card("smoke")
    with open_dataset(smoke_test_file) as ds:
        params = ds.params()
    assert {f.decode() for f in params["psf_family"]} == set(card.psf.families)
    assert set(params["snr_level"].tolist()) == set(card.noise.snr_levels)


def test_psfs_are_normalised_and_centred(smoke_test_file):
    with open_dataset(smoke_test_file) as ds:
        psf = ds.read("psf").astype(np.float64)
        n = ds.stamp_size
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, atol=1e-5)
    peaks = np.array([np.unravel_index(np.argmax(p), p.shape) for p in psf])
    assert np.all(np.abs(peaks - n // 2) <= 1)


def test_metacal_groups_share_galaxy_psf_and_noise(data_root):
    card = make_card("smoke-metacal", splits={"snr50": {"n": 8, "seed": 7, "snr_levels": [50.0]}})
    path = data_root / "mcal-groups.h5"
    generate(card, "snr50", path)
    with open_dataset(path) as ds:
        params = ds.params()
        noise = ds.read("observed").astype(np.float64) - ds.read("noiseless")
        psf = ds.read("psf")
    np.testing.assert_array_equal(params["shear_g1"][:4], [0.01, -0.01, 0.01, -0.01])
    np.testing.assert_array_equal(params["rotation_deg"][:4], [0, 0, 90, 90])
    scale = params["noise_sigma"][0]
    assert scale > 0 and params["noise_sigma"][1] == scale  # ±g share the noise field and sigma
    np.testing.assert_allclose(noise[0], noise[1], atol=1e-5 * scale * 50)  # float32 storage rounding only
    np.testing.assert_allclose(noise[2], noise[3], atol=1e-5 * scale * 50)
    assert not np.allclose(noise[0], noise[2], atol=0.1 * scale)
    np.testing.assert_array_equal(psf[0], psf[3])
    assert params["gal_hlr_arcsec"][0] == params["gal_hlr_arcsec"][3]
    assert params["group"][4] == 1 and params["gal_hlr_arcsec"][4] != params["gal_hlr_arcsec"][0]


def test_fft_size_guard_gives_clear_error():
    from deconvbench.errors import DeconvbenchError

    card = make_card(
        stamp={"size": 32, "pixel_scale_arcsec": 0.01, "target_psf_fwhm_arcsec": 0.05},
        galaxy={"half_light_radius_arcsec": {"median": 20.0, "sigma": 0.0, "min": 10.0, "max": 30.0}},
        psf={"families": {"moffat": 1.0}},
    )
    with pytest.raises(DeconvbenchError, match="FFT"):
        render_group(card, draw_group(card, "test", 0))
