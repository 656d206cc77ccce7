"""Classical baselines (fft, wiener, richardson-lucy) on GalSim-drawn stamps."""

from __future__ import annotations

import functools
import json

import galsim
import numpy as np
import pytest

from deconvbench import fourier as F
from deconvbench.methods import Batch, Deconvolver, load_method
from deconvbench_baselines.fft import FFTDeconvolver
from deconvbench_baselines.richardson_lucy import RichardsonLucyDeconvolver
from deconvbench_baselines.wiener import WienerDeconvolver

SCALE = 0.2  # arcsec/pixel
METHODS = ("fft", "wiener", "richardson-lucy")


def _draw(profile: galsim.GSObject, n: int, method: str = "auto") -> np.ndarray:
    offset = (0.5, 0.5) if n % 2 == 0 else (0.0, 0.0)  # centre on pixel (n//2, n//2)
    return profile.drawImage(nx=n, ny=n, scale=SCALE, method=method, offset=offset).array.astype(np.float64)


@functools.cache
def _stamps(n: int, target_fwhm: float, psf_fwhm: tuple, hlr: tuple, count: int, seed: int):
    """Noiseless (observed, truth, psf) of exponential, truncated de Vaucouleurs and
    bulge+disk galaxies seen through sheared Moffat PSFs (read-only arrays)."""
    rng = np.random.default_rng(seed)
    target = galsim.Gaussian(fwhm=target_fwhm)
    obs, truth, psfs = [], [], []
    for i in range(count):
        r = rng.uniform(*hlr)
        kind = i % 3
        if kind == 0:
            gal = galsim.Exponential(half_light_radius=r)
        elif kind == 1:
            gal = galsim.DeVaucouleurs(half_light_radius=r, trunc=5 * r)
        else:
            bf = rng.uniform(0.2, 0.6)
            gal = galsim.Add(
                [
                    galsim.Exponential(half_light_radius=r, flux=1 - bf),
                    galsim.DeVaucouleurs(half_light_radius=0.5 * r, trunc=5 * r, flux=bf),
                ]
            )
        gal = gal.shear(g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3)).withFlux(rng.uniform(500, 5000))
        psf = galsim.Moffat(beta=rng.uniform(2.5, 4.5), fwhm=rng.uniform(*psf_fwhm)).shear(
            g1=rng.uniform(-0.05, 0.05), g2=rng.uniform(-0.05, 0.05)
        )
        obs.append(_draw(galsim.Convolve(gal, psf), n))
        truth.append(_draw(galsim.Convolve(gal, target), n))
        p = _draw(psf, n)
        psfs.append(p / p.sum())
    out = tuple(np.array(a) for a in (obs, truth, psfs))
    for a in out:
        a.setflags(write=False)
    return out


def _noisy(observed: np.ndarray, snr: np.ndarray, seed: int):
    """White Gaussian noise with sigma = sqrt(Σ noiseless²)/SNR per stamp."""
    sigma = np.sqrt(np.sum(observed**2, axis=(1, 2))) / snr
    noise = np.random.default_rng(seed).standard_normal(observed.shape)
    return observed + sigma[:, None, None] * noise, sigma


def _nmse(est, truth):
    return np.sum((est - truth) ** 2, axis=(1, 2)) / np.sum(truth**2, axis=(1, 2))


def _batch(obs, psf, sigma, target):
    return Batch(
        observed=obs,
        psf=psf,
        noise_sigma=np.broadcast_to(sigma, (len(obs),)),
        pixel_scale_arcsec=SCALE,
        target_fwhm_arcsec=target,
    )


# -- Fourier helpers -----------------------------------------------------------------


@pytest.mark.parametrize("n", [48, 53])
def test_fourier_helpers(n):
    rng = np.random.default_rng(0)
    x = rng.random((2, n, n))
    for N in (n, 2 * n, 2 * n + 1):
        np.testing.assert_array_equal(F.crop_centered(F.pad_centered(x, N), n), x)
    delta = np.zeros((1, n, n))
    delta[0, n // 2, n // 2] = 1.0
    N = F.padded_size(n, 2.0)
    assert 2 * n <= N
    np.testing.assert_allclose(F.otf(delta, N), 1.0, atol=1e-14)  # centred delta: no phase
    np.testing.assert_allclose(F.convolve(x, F.otf(delta, N)), x, atol=1e-12)
    # the analytic target transfer function agrees with the DFT of the drawn one
    ta = F.target_transfer(N, 0.6, SCALE, "analytic")
    td = F.target_transfer(N, 0.6, SCALE, "drawn")
    assert ta[0, 0] == pytest.approx(1.0) and td[0, 0] == pytest.approx(1.0)
    assert np.abs(ta - td).max() < 2e-3
    # a shifted kernel: convolution moves a centred delta by the kernel's offset
    kernel = np.zeros((1, n, n))
    kernel[0, n // 2 + 1, n // 2 - 2] = 1.0
    moved = F.convolve(delta, F.otf(kernel, N))
    assert np.unravel_index(np.argmax(moved[0]), (n, n)) == (n // 2 + 1, n // 2 - 2)


# -- fft -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [48, 53])
def test_fft_recovers_truth_noiseless_nyquist(n):
    # target FWHM 0.6" = 3 px: Nyquist-sampled; PSFs 0.6-0.9"
    obs, truth, psf = _stamps(n, 0.6, (0.6, 0.9), (0.2, 0.6), 12, 10 + n)
    est = FFTDeconvolver().deconvolve(_batch(obs, psf, 0.0, 0.6))
    err = _nmse(est, truth)
    print(f"\nfft noiseless, target 3 px, n={n}: NMSE max {err.max():.2e} median {np.median(err):.2e}")
    assert est.dtype == np.float64 and est.shape == obs.shape
    assert err.max() < 1e-4


def test_fft_noiseless_floor_narrow_target(record_property):
    # target 0.45" = 2.25 px, narrower than Nyquist sampling allows; PSFs 0.6-1.1"
    obs, truth, psf = _stamps(48, 0.45, (0.6, 1.1), (0.2, 0.8), 24, 7)
    est = FFTDeconvolver().deconvolve(_batch(obs, psf, 0.0, 0.45))
    err = _nmse(est, truth)
    floor = {"median": float(np.median(err)), "mean": float(err.mean()), "max": float(err.max())}
    record_property("fft_noiseless_floor_target_0.45", floor)
    print(f'\nfft noiseless NMSE floor (target 0.45", pixel 0.2", PSF 0.6-1.1"): {floor}')
    # measured: median 1.6e-4, mean 5.1e-4, max 3.3e-3 (24 stamps)
    assert np.isfinite(err).all()
    assert floor["median"] < 1e-3 and floor["max"] < 1e-2


def test_fft_cut_options():
    obs, truth, psf = _stamps(48, 0.6, (0.6, 0.9), (0.2, 0.6), 12, 58)
    batch = _batch(obs, psf, 0.0, 0.6)
    for kw in (dict(cut="taper"), dict(target="drawn"), dict(pad_factor=3.0)):
        assert _nmse(FFTDeconvolver(**kw).deconvolve(batch), truth).max() < 1e-4, kw
    with pytest.raises(ValueError):
        FFTDeconvolver(cut="soft")


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_fft_shared_psfs_in_any_order_match_stamp_by_stamp(precision):
    """Stamps sharing a PSF in consecutive runs (metacal groups: transfer functions
    broadcast in place) and in any other order (gathered) give each stamp the numbers it
    gets alone, to the bit."""
    obs, _, psf = _stamps(48, 0.6, (0.6, 0.9), (0.2, 0.6), 12, 58)
    grouped_psf = np.repeat(psf[:3], 4, axis=0)  # 3 PSFs, 4 consecutive stamps each
    method = FFTDeconvolver(precision=precision)
    alone = np.concatenate(
        [method.deconvolve(_batch(obs[i : i + 1], grouped_psf[i : i + 1], 0.0, 0.6)) for i in range(12)]
    )
    assert np.array_equal(method.deconvolve(_batch(obs, grouped_psf, 0.0, 0.6)), alone)
    order = np.random.default_rng(5).permutation(12)
    shuffled = method.deconvolve(_batch(obs[order], grouped_psf[order], 0.0, 0.6))
    assert np.array_equal(shuffled, alone[order])
    uneven = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # runs of 4, 4 and 1: not of equal length
    assert np.array_equal(method.deconvolve(_batch(obs[uneven], grouped_psf[uneven], 0.0, 0.6)), alone[uneven])


# -- wiener --------------------------------------------------------------------------


def test_wiener_beats_fft_at_low_snr(record_property):
    obs, truth, psf = _stamps(48, 0.5, (0.6, 1.1), (0.2, 0.8), 32, 3)
    snr = np.where(np.arange(32) % 2 == 0, 10.0, 20.0)
    noisy, sigma = _noisy(obs, snr, seed=4)
    batch = _batch(noisy, psf, sigma, 0.5)
    results = {}
    for name, method in (("fft", FFTDeconvolver()), ("wiener", WienerDeconvolver())):
        err = _nmse(method.deconvolve(batch), truth)
        results[name] = {f"snr{int(s)}": float(err[snr == s].mean()) for s in (10, 20)}
    results["observed"] = {f"snr{int(s)}": float(_nmse(noisy, truth)[snr == s].mean()) for s in (10, 20)}
    record_property("mean_nmse_low_snr", results)
    print(f"\nmean NMSE on 32 noisy stamps: {results}")
    for key in ("snr10", "snr20"):
        assert results["wiener"][key] < results["fft"][key]
        assert results["wiener"][key] < results["observed"][key]
        assert results["wiener"][key] < 1.0


@pytest.mark.parametrize("n", [48, 53])
def test_wiener_noiseless_reduces_to_fft(n):
    obs, truth, psf = _stamps(n, 0.6, (0.6, 0.9), (0.2, 0.6), 12, 10 + n)
    batch = _batch(obs, psf, 0.0, 0.6)
    w = WienerDeconvolver().deconvolve(batch)
    f = FFTDeconvolver().deconvolve(batch)
    assert _nmse(w, f).max() < 1e-4
    assert _nmse(w, truth).max() < 1e-4


def test_wiener_fit_recovers_exponential_power():
    # truth = exponential discs of one size: |G~|² = (1 + k² r_s²)^-3 exactly
    hlr = 0.5
    target = galsim.Gaussian(fwhm=0.5)
    truth = np.stack(
        [_draw(galsim.Convolve(galsim.Exponential(half_light_radius=hlr, flux=f), target), 48) for f in (1, 3)]
    )
    batch = _batch(truth, truth, 0.0, 0.5)
    w = WienerDeconvolver().fit([(batch, truth)])
    r_s = galsim.Exponential(half_light_radius=hlr).scale_radius
    assert w.fitted and w.params()["fitted"]
    assert w.beta == pytest.approx(3.0, abs=0.15)
    assert w.r0_arcsec == pytest.approx(r_s, rel=0.05)
    g = WienerDeconvolver(model="gaussian").fit(
        [(batch, np.stack([_draw(galsim.Convolve(galsim.Gaussian(sigma=0.4), target), 48)]))]
    )
    assert g.r0_arcsec == pytest.approx(0.4, rel=0.02)  # power exp(-k² sigma²)
    json.dumps(w.params())


# -- richardson-lucy -----------------------------------------------------------------


@pytest.mark.parametrize("n", [48, 53])
def test_richardson_lucy_noiseless(n):
    obs, truth, psf = _stamps(n, 0.5, (0.6, 1.1), (0.2, 0.8), 12, 20 + n)
    est = RichardsonLucyDeconvolver().deconvolve(_batch(obs, psf, 0.0, 0.5))
    assert est.dtype == np.float64 and est.shape == obs.shape and np.isfinite(est).all()
    flux_err = est.sum(axis=(1, 2)) / truth.sum(axis=(1, 2)) - 1
    assert np.abs(flux_err).max() < 0.03
    assert np.all(_nmse(est, truth) < _nmse(obs, truth))
    assert _nmse(est, truth).mean() < 0.3 * _nmse(obs, truth).mean()
    # single-precision iterations (default) agree with double precision
    double = RichardsonLucyDeconvolver(precision="double").deconvolve(_batch(obs, psf, 0.0, 0.5))
    assert _nmse(est, double).max() < 1e-8


def test_richardson_lucy_noisy_and_degenerate_pixels():
    obs, truth, psf = _stamps(48, 0.5, (0.6, 1.1), (0.2, 0.8), 8, 5)
    noisy, sigma = _noisy(obs, np.full(8, 20.0), seed=6)
    noisy = noisy.copy()
    noisy[0] = 0.0  # an empty stamp
    noisy[1] = -np.abs(noisy[1])  # only non-positive pixels
    noisy[3, 20:23, 30:34] = np.nan  # masked pixels are treated as unobserved
    psf = psf.copy()
    psf[2] -= 2e-4  # negative PSF lobes (as in PSFEx models)
    for method in (RichardsonLucyDeconvolver(), RichardsonLucyDeconvolver(damping=1.0, start="flat")):
        est = method.deconvolve(_batch(noisy, psf, sigma, 0.5))
        assert np.isfinite(est).all() and est.dtype == np.float64
        assert np.abs(est[0]).max() < 1e-6 * np.nanmax(np.abs(noisy))
        good = slice(4, 8)
        assert np.all(_nmse(est[good], truth[good]) < _nmse(noisy[good], truth[good]))
        clean = np.where(np.isfinite(noisy[3]), noisy[3], 0.0)
        assert _nmse(est[3:4], truth[3:4])[0] < _nmse(clean[None], truth[3:4])[0]
    zero = RichardsonLucyDeconvolver().deconvolve(_batch(np.zeros((1, 48, 48)), psf[:1], 0.0, 0.5))
    assert np.isfinite(zero).all()


# -- every baseline --------------------------------------------------------------------


@pytest.mark.parametrize("n", [48, 53])
@pytest.mark.parametrize("name", METHODS)
def test_baseline_contract(name, n):
    obs, truth, psf = _stamps(n, 0.5, (0.6, 1.1), (0.2, 0.8), 6, 40 + n)
    noisy, sigma = _noisy(obs, np.array([10.0, 20.0, 40.0, 80.0, 200.0, np.inf]), seed=n)
    method = load_method(name)
    assert isinstance(method, Deconvolver)
    assert method.device == "cpu" and method.name == name
    assert type(method).requires == () and type(method).description
    json.dumps(method.params())
    # float32 inputs as stored in the datasets
    batch = _batch(noisy.astype(np.float32), psf.astype(np.float32), sigma, 0.5)
    est = method.deconvolve(batch)
    assert est.dtype == np.float64 and est.shape == (6, n, n)
    assert np.isfinite(est).all()
    # the noiseless stamp is deconvolved better than doing nothing; estimates stay centred
    assert _nmse(est[-1:], truth[-1:])[0] < _nmse(obs[-1:], truth[-1:])[0]
    peak = np.unravel_index(np.argmax(est[-1]), (n, n))
    assert abs(peak[0] - n // 2) <= 1 and abs(peak[1] - n // 2) <= 1
