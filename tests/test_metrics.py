"""Metrics: hand-computed values, scikit-image SSIM, HSM shapes, aggregation."""

from __future__ import annotations

import json
import math

import galsim
import numpy as np
import pytest

from deconvbench.metrics import (
    METRICS,
    adaptive_moments,
    aggregate,
    centroid_error,
    flux_error,
    nmse,
    psnr,
    shape_errors,
    snr_labels,
    ssim,
    stamp_metrics,
)
from deconvbench.metrics.image import weighted_centroids
from deconvbench.metrics.shapes import FLAG_NONFINITE, FLAG_NONPOSITIVE_FLUX

TRUTH3 = np.array([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]])


def _draw(profile: galsim.GSObject, n: int = 48, scale: float = 0.2, method: str = "auto") -> np.ndarray:
    offset = (0.5, 0.5) if n % 2 == 0 else (0.0, 0.0)
    return profile.drawImage(nx=n, ny=n, scale=scale, method=method, offset=offset).array.astype(np.float64)


# -- image metrics: hand-computed ------------------------------------------------------


def test_nmse_psnr_flux_by_hand():
    est = TRUTH3.copy()
    est[1, 1] = 3.0  # -1 at the centre
    est[2, 2] = 1.0  # +1 in a corner: same flux
    # Σ(est-truth)² = 2, Σtruth² = 1+1+16+1+1 = 20
    assert nmse(est, TRUTH3) == pytest.approx(0.1, abs=1e-15)
    # peak² / mse = 16 / (2/9) = 72
    assert psnr(est, TRUTH3) == pytest.approx(10 * math.log10(72.0), abs=1e-12)
    assert flux_error(est, TRUTH3) == pytest.approx(0.0, abs=1e-15)
    # twice the truth: NMSE 1, flux +100 %; mse = 20/9, psnr = 10 log10(16·9/20)
    assert nmse(2 * TRUTH3, TRUTH3) == pytest.approx(1.0)
    assert flux_error(2 * TRUTH3, TRUTH3) == pytest.approx(1.0)
    assert psnr(2 * TRUTH3, TRUTH3) == pytest.approx(10 * math.log10(16 * 9 / 20))
    # batched: one value per stamp, float64 (B,)
    batch = np.stack([est, 2 * TRUTH3, TRUTH3])
    truth = np.stack([TRUTH3] * 3)
    np.testing.assert_allclose(nmse(batch, truth), [0.1, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(flux_error(batch, truth), [0.0, 1.0, 0.0], atol=1e-15)
    assert nmse(batch, truth).dtype == np.float64 and nmse(batch, truth).shape == (3,)
    assert isinstance(nmse(est, TRUTH3), float)


def test_centroid_by_hand():
    truth = TRUTH3  # symmetric about (x, y) = (1, 1)
    delta = np.zeros((3, 3))
    delta[1, 2] = 1.0  # one pixel at x = 2, y = 1: centroid (2, 1) whatever the weight
    assert centroid_error(delta, truth) == pytest.approx(1.0, abs=1e-12)
    pair = np.zeros((3, 3))
    pair[1, 1] = pair[1, 2] = 1.0  # symmetric about x = 1.5: fixed point x = 1.5
    assert centroid_error(pair, truth, weight_sigma=1.0) == pytest.approx(0.5, abs=1e-9)
    # unequal pair a=1 at x=0, b=3 at x=2; a very wide weight is unweighted: x = 2·3/4 = 1.5
    uneven = np.zeros((3, 3))
    uneven[1, 0], uneven[1, 2] = 1.0, 3.0
    assert centroid_error(uneven, truth, weight_sigma=1e6) == pytest.approx(0.5, abs=1e-9)
    # diagonal shift by one pixel: sqrt(2)
    diag = np.zeros((3, 3))
    diag[2, 2] = 1.0
    assert centroid_error(diag, truth) == pytest.approx(math.sqrt(2.0), abs=1e-12)
    # an estimate without positive flux has no centroid: NaN, not 0
    assert math.isnan(centroid_error(np.zeros((3, 3)), truth))


def test_weighted_centroid_of_shifted_galaxy():
    gal = galsim.Exponential(half_light_radius=0.5).shear(g1=0.2, g2=-0.1)
    psf = galsim.Gaussian(fwhm=0.5)
    n = 48
    truth = _draw(galsim.Convolve(gal, psf), n)
    shifted = _draw(galsim.Convolve(gal, psf).shift(0.3 * 0.2, -0.7 * 0.2), n)  # (dx, dy) px
    c = weighted_centroids(np.stack([truth, shifted]), weight_sigma=4.0)
    np.testing.assert_allclose(c[0], [n // 2, n // 2], atol=2e-4)
    np.testing.assert_allclose(c[1], [n // 2 + 0.3, n // 2 - 0.7], atol=2e-3)
    assert centroid_error(shifted, truth) == pytest.approx(math.hypot(0.3, 0.7), abs=2e-3)


def test_identical_images():
    rng = np.random.default_rng(1)
    truth = rng.random((4, 16, 16)) + 0.5
    np.testing.assert_array_equal(nmse(truth, truth), 0.0)
    np.testing.assert_allclose(ssim(truth, truth), 1.0, atol=1e-12)
    assert np.all(np.isposinf(psnr(truth, truth)))
    np.testing.assert_array_equal(flux_error(truth, truth), 0.0)
    np.testing.assert_allclose(centroid_error(truth, truth), 0.0, atol=1e-12)


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    cases = []
    # random fields, a galaxy with noise, an odd size, a non-square stamp
    cases.append((rng.normal(size=(5, 48, 48)), None))
    gal = _draw(galsim.Convolve(galsim.Exponential(half_light_radius=0.6), galsim.Moffat(beta=3, fwhm=0.8)), 53)
    truths = np.stack([gal * f for f in (1.0, 10.0, 100.0)])
    cases.append((truths, truths + rng.normal(scale=0.3 * gal.max(), size=truths.shape)))
    cases.append((rng.random((3, 13, 21)), None))
    for truth, est in cases:
        if est is None:
            est = truth + 0.5 * rng.normal(size=truth.shape)
        ours = ssim(est, truth)
        ref = np.array(
            [
                skm.structural_similarity(
                    truth[i],
                    est[i],
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=float(truth[i].max() - truth[i].min()),
                )
                for i in range(truth.shape[0])
            ]
        )
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    # explicit data_range
    t, e = cases[0][0][:2], cases[0][0][:2] * 0.9
    ref = [
        skm.structural_similarity(
            t[i], e[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=7.0
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ssim(e, t, data_range=7.0), ref, atol=1e-6, rtol=0)


def test_metric_input_validation():
    with pytest.raises(ValueError):
        nmse(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError):
        ssim(np.zeros((1, 8, 8)), np.ones((1, 8, 8)))  # smaller than the 11×11 window
    # non-finite estimates give NaN, never a number
    est = TRUTH3.copy()
    est[0, 0] = np.nan
    assert math.isnan(nmse(est, TRUTH3))
    assert math.isnan(flux_error(est, TRUTH3))


# -- shapes --------------------------------------------------------------------------


def test_shape_errors_sheared_gaussian():
    round_gal = galsim.Gaussian(sigma=0.5)  # 2.5 px
    g = 0.1
    truth = np.stack([_draw(round_gal, method="no_pixel")] * 3)
    est = np.stack(
        [
            _draw(round_gal.shear(g1=g), method="no_pixel"),
            _draw(round_gal.shear(g2=-g), method="no_pixel"),
            _draw(round_gal.dilate(1.1), method="no_pixel"),
        ]
    )
    res = shape_errors(est, truth)
    e = 2 * g / (1 + g * g)  # distortion of a round profile sheared by g
    np.testing.assert_allclose(res["de1"], [e, 0.0, 0.0], atol=2e-4)
    np.testing.assert_allclose(res["de2"], [0.0, -e, 0.0], atol=2e-4)
    # GalSim's shear preserves area, so sigma = det(M)^(1/4) is unchanged; dilation by 1.1
    np.testing.assert_allclose(res["size_err"], [0.0, 0.0, 0.1], atol=2e-4)
    assert not res["failed"].any()
    mom = adaptive_moments(truth[0])
    assert mom["sigma"][0] == pytest.approx(2.5, rel=1e-3)
    assert mom["flags"][0] == 0


def test_shape_failures_are_nan_and_flagged():
    good = _draw(galsim.Gaussian(sigma=0.5))
    nan_stamp = good.copy()
    nan_stamp[3, 4] = np.nan
    est = np.stack([good, nan_stamp, np.zeros_like(good)])
    truth = np.stack([good, good, good])
    mom = adaptive_moments(est)
    assert list(mom["flags"][:2]) == [0, FLAG_NONFINITE]
    assert mom["flags"][2] == FLAG_NONPOSITIVE_FLUX  # an empty stamp cannot be measured
    assert np.isnan(mom["e1"][1:]).all() and np.isnan(mom["sigma"][1:]).all()
    res = shape_errors(est, truth)
    assert list(res["failed"]) == [False, True, True]
    for key in ("de1", "de2", "size_err"):
        assert np.isfinite(res[key][0]) and np.isnan(res[key][1:]).all()
    # a failed truth fails the stamp too
    res = shape_errors(truth, est)
    assert list(res["failed"]) == [False, True, True]
    # cached truth moments give the same answer
    cached = shape_errors(est, truth, truth_moments=adaptive_moments(truth))
    for key in ("de1", "de2", "size_err"):
        np.testing.assert_allclose(cached[key], shape_errors(est, truth)[key], equal_nan=True)


# -- stamp_metrics and aggregate -----------------------------------------------------


def test_stamp_metrics_keys_and_failures():
    good = _draw(galsim.Convolve(galsim.Exponential(half_light_radius=0.4), galsim.Gaussian(fwhm=0.5)))
    truth = np.stack([good] * 3)
    est = np.stack([good, 1.05 * good, good])
    est[2, 0, 0] = np.nan
    m = stamp_metrics(est, truth)
    assert tuple(m) == METRICS
    for key, value in m.items():
        assert value.shape == (3,), key
    assert m["nmse"][0] == 0 and m["nmse"][1] == pytest.approx(0.0025)
    assert m["flux_err"][1] == pytest.approx(0.05)
    assert m["e_err"][1] == pytest.approx(0.0, abs=1e-6) and m["size_err"][1] == pytest.approx(0.0, abs=1e-6)
    assert list(m["shape_failed"]) == [False, False, True]
    assert np.isnan(m["nmse"][2]) and np.isnan(m["de1"][2])


def test_aggregate_groups_and_json():
    nan, inf = np.nan, np.inf
    per = {
        "nmse": np.array([0.1, 0.3, nan, 0.5, 0.7, inf, nan]),
        "psnr": np.array([10.0, 20.0, 30.0, 40.0, inf, 60.0, nan]),
        "shape_failed": np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, nan]),  # as stored by the harness
    }
    # stamp 6: the method failed (every metric NaN): not evaluated
    snr = np.array([10.0, 10.0, 20.0, 20.0, inf, 199.99999, 10.0])
    family = np.array([b"moffat", b"ground", b"moffat", b"ground", b"moffat", b"ground", b"moffat"])
    out = aggregate(per, {"snr": snr_labels(snr), "psf_family": family})
    json.dumps(out, allow_nan=False)  # plain floats, NaN -> None
    overall = out["overall"]
    assert (overall["n"], overall["count"]) == (7, 6)
    assert overall["nmse"] == {"mean": pytest.approx(0.4), "median": pytest.approx(0.4), "count": 4, "failures": 2}
    assert overall["psnr"]["failures"] == 1 and overall["psnr"]["mean"] == pytest.approx(32.0)
    assert overall["shape_failed"] == {"mean": pytest.approx(0.5), "median": 0.0, "count": 6, "failures": 3}
    # stamps with a NaN/inf metric or a failed shape: 1 (shape), 2 (nmse NaN), 4 (shape), 5 (nmse inf, shape)
    assert overall["failures"] == 4
    assert set(out) == {"overall", "by_snr", "by_psf_family"}
    by_snr = out["by_snr"]
    assert list(by_snr) == ["10", "20", "200", "noiseless"]
    assert (by_snr["10"]["n"], by_snr["10"]["count"]) == (3, 2)
    assert by_snr["10"]["nmse"]["mean"] == pytest.approx(0.2)
    assert by_snr["20"]["nmse"] == {"mean": 0.5, "median": 0.5, "count": 1, "failures": 1}
    assert by_snr["noiseless"]["psnr"] == {"mean": None, "median": None, "count": 0, "failures": 1}
    assert list(out["by_psf_family"]) == ["ground", "moffat"]
    assert out["by_psf_family"]["ground"]["shape_failed"]["failures"] == 2
    # booleans straight from stamp_metrics work too
    bools = aggregate({"nmse": np.array([0.1, 0.2]), "shape_failed": np.array([False, True])})
    assert bools["overall"]["shape_failed"]["mean"] == 0.5 and bools["overall"]["failures"] == 1
    for value in _walk(out):
        assert value is None or isinstance(value, (str, int, float, bool))
        assert not isinstance(value, np.generic)
    with pytest.raises(ValueError):
        aggregate(per, {"snr": snr[:3]})


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    else:
        yield obj
