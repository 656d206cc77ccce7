"""Shear-bias statistics (synthetic data with known m, c) and a small end-to-end metacal
run on noiseless GalSim quartets."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from deconvbench.metacal.bias import estimate_bias, leakage_alpha
from deconvbench.metacal.estimators import response, wmom
from deconvbench.metacal.psf_fit import reconv_fwhm
from deconvbench.metacal.shear_ops import metacal_images

SLOTS = [(1.0, 0.0), (-1.0, 0.0), (1.0, 90.0), (-1.0, 90.0)]  # (shear sign, rotation)


def synthetic(n_groups, g, m, c1, c2, noise=0.0, seed=0):
    """Quartets with e = e_int(rotated) + R·((1+m) g ± , c): shape noise cancels exactly
    between the ±g and the 90°-rotated pairs; R is shared within a ±g pair."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_groups), 4)
    sign = np.tile([s for s, _ in SLOTS], n_groups)
    rot = np.tile([1.0, 1.0, -1.0, -1.0], n_groups)  # 90° rotation flips e
    e_int = rng.normal(0.0, 0.25, (n_groups, 2))[group] * rot[:, None]
    r = np.zeros((4 * n_groups, 2, 2))
    r[:, 0, 0] = np.repeat(rng.uniform(0.4, 0.9, 2 * n_groups), 2)
    r[:, 1, 1] = np.repeat(rng.uniform(0.4, 0.9, 2 * n_groups), 2)
    r[:, 0, 1] = r[:, 1, 0] = 0.01
    e = e_int.copy()
    e[:, 0] += r[:, 0, 0] * ((1.0 + m) * g * sign + c1)
    e[:, 1] += r[:, 1, 1] * c2
    e += rng.normal(0.0, noise, e.shape)
    return e, r, sign, group


def test_estimate_bias_recovers_known_m_and_c():
    e, r, sign, group = synthetic(200, 0.01, m=0.02, c1=3e-4, c2=-2e-4)
    res = estimate_bias(e, r, sign, group, 0.01, rng=1)
    assert res["m"] == pytest.approx(0.02, abs=1e-10)
    assert res["c1"] == pytest.approx(3e-4, abs=1e-12)
    assert res["c"] == pytest.approx(-2e-4, abs=1e-12)
    assert res["n_pairs"] == 400 and res["n_groups"] == 200 and res["n_excluded"] == 0
    assert 0.4 < res["R11"] < 0.9 and 0.4 < res["R22"] < 0.9


def test_bootstrap_errors_match_the_scatter():
    g, noise, n_groups = 0.01, 1e-3, 400
    e, r, sign, group = synthetic(n_groups, g, m=0.0, c1=0.0, c2=0.0, noise=noise, seed=3)
    res = estimate_bias(e, r, sign, group, g, n_boot=400, rng=2)
    # m: difference of ±g means, 2·n_groups stamps on each side
    expected_m_err = noise * np.sqrt(2.0 / (2 * n_groups)) / (2 * g * res["R11"])
    assert res["m_err"] == pytest.approx(expected_m_err, rel=0.2)
    assert abs(res["m"]) < 5 * res["m_err"] and abs(res["c"]) < 5 * res["c_err"]


@pytest.mark.parametrize("exclude, dropped", [("group", 8), ("pair", 4)])
def test_invalid_stamps_drop_their_pair_or_group(exclude, dropped):
    e, r, sign, group = synthetic(50, 0.01, m=-0.01, c1=1e-4, c2=5e-5)
    e[5, 0] = np.nan  # group 1, slot 1 -> pair (4, 5)
    valid = np.ones(len(e), dtype=bool)
    valid[10] = False  # group 2, slot 2 -> pair (10, 11)
    res = estimate_bias(e, r, sign, group, 0.01, valid=valid, exclude=exclude, rng=0)
    assert res["n_invalid"] == 2 and res["n_excluded"] == dropped
    assert np.isfinite(res["m"]) and res["m"] == pytest.approx(-0.01, abs=1e-10)
    if exclude == "group":  # quartets intact: c stays exact
        assert res["c"] == pytest.approx(5e-5, abs=1e-12) and res["c1"] == pytest.approx(1e-4, abs=1e-12)


def test_leakage_alpha():
    alpha, alpha_err = leakage_alpha(1e-3, 2e-4, 0.05)
    assert alpha == pytest.approx(0.02) and alpha_err == pytest.approx(0.004)
    e, r, sign, group = synthetic(20, 0.01, m=0.0, c1=2e-3, c2=0.0)
    res = estimate_bias(e, r, sign, group, 0.01, psf_e1=np.full(len(e), 0.05), rng=0)
    assert res["alpha"] == pytest.approx(2e-3 / 0.05)


def test_end_to_end_noiseless_metacal_wmom():
    """Exponential galaxies ⊗ Moffat PSF in (±g, 0°/90°) quartets, g = (0.01, 0);
    D = galaxy ⊗ target drawn directly (an exact deconvolver), batched metacal, wmom."""
    pixel, n, target, g = 0.2, 48, 0.5, 0.01
    rng = np.random.default_rng(7)
    deconvolved, psf_images, group, sign = [], [], [], []
    for k in range(16):
        hlr = rng.uniform(0.3, 0.8)
        e1, e2 = rng.normal(0.0, 0.2, 2)
        psf = galsim.Moffat(beta=rng.uniform(2.5, 4.5), fwhm=rng.uniform(0.6, 1.1))
        psf_image = psf.drawImage(nx=n, ny=n, scale=pixel, use_true_center=False).array
        for s, rot in SLOTS:
            galaxy = (
                galsim.Exponential(half_light_radius=hlr)
                .shear(g1=e1, g2=e2)
                .rotate(rot * galsim.degrees)
                .shear(g1=s * g, g2=0.0)
            )
            image = galsim.Convolve(galaxy, galsim.Gaussian(fwhm=target)).drawImage(
                nx=n, ny=n, scale=pixel, use_true_center=False
            )
            deconvolved.append(image.array)
            psf_images.append(psf_image / psf_image.sum())
            group.append(k)
            sign.append(s)
    mc = metacal_images(np.array(deconvolved), pixel, target, reconv_fwhm(np.array(psf_images), pixel))
    results = {mtype: wmom(images, pixel, 1.2) for mtype, images in mc.items()}
    e = np.stack([results["noshear"]["e1"], results["noshear"]["e2"]], axis=1)
    res = estimate_bias(e, response(results), np.array(sign), np.array(group), g, rng=0)
    assert res["n_pairs"] == 32 and res["n_excluded"] == 0
    # measured: m = 8.522e-5, the estimator's own O(g²) term; c, c1 ~ 1e-9
    assert res["m"] == pytest.approx(8.522e-5, abs=1e-7)
    assert abs(res["c"]) < 1e-8 and abs(res["c1"]) < 1e-8


@pytest.mark.parametrize(
    ("stats", "verdict"),
    [
        ({"m": 5e-4, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5}, "yes"),
        ({"m": 5e-4, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5, "c1": -3e-5, "c1_err": 1e-5}, "yes"),
        # the component-1 additive bias counts as much as component 2 (PSF leakage lands there)
        ({"m": 5e-4, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5, "c1": 8e-3, "c1_err": 1e-4}, "no"),
        ({"m": 5e-4, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5, "c1": 5e-5, "c1_err": 3e-4}, "σ too large"),
        ({"m": 5e-3, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5}, "no"),
        ({"m": 2e-3, "m_err": 2e-3, "c": 2e-5, "c_err": 1e-5}, "σ too large"),
        ({"m": 1.2e-3, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5}, "no"),
        ({"m": None, "c": 2e-5}, "–"),
        ({"m": 5e-4, "m_err": 1e-4, "c": 2e-5, "c_err": 1e-5, "c1": None}, "yes"),
    ],
)
def test_requirement_verdict_checks_m_and_both_additive_components(stats, verdict):
    from deconvbench.metacal.measure import requirement_verdict

    assert requirement_verdict(stats) == verdict
