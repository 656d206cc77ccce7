"""Drawing the parameters of every stamp from a card, deterministically.

Randomness derives only from (split seed, group index): the group's generator is
``numpy.random.default_rng(SeedSequence(split.seed, spawn_key=(group,)))``, so a stamp is
the same whatever the number of workers or the order of generation, and a prefix of a
split (``--n``) equals the start of the full split.

A *group* is one stamp for a deconvolution card, and 4 stamps for a metacal card
(same galaxy and PSF; slots (+g, 0°), (−g, 0°), (+g, 90°), (−g, 90°); noise shared by
+g/−g of the same rotation). SNR level and PSF family are assigned round-robin by group
index (level = levels[group % L], family = families[(group // L) % F], profile =
profiles[(group // (L·F)) % P] when the weights are equal, else drawn), so even a tiny
split covers every level, family and profile, uncorrelated with each other.
"""

from __future__ import annotations

import math

import numpy as np

from ..cards import DatasetCard
from .psfs import ABERRATIONS

PARAMS_DTYPE = np.dtype(
    [
        ("index", "i8"),
        ("group", "i8"),
        ("slot", "i1"),
        ("snr_level", "f8"),
        ("snr", "f8"),
        ("noise_sigma", "f8"),
        ("noise_seed", "u8"),
        ("gal_profile", "S16"),
        ("gal_flux", "f8"),
        ("gal_hlr_arcsec", "f8"),
        ("gal_g1", "f8"),
        ("gal_g2", "f8"),
        ("gal_bulge_fraction", "f8"),
        ("gal_bulge_hlr_arcsec", "f8"),
        ("gal_trunc_arcsec", "f8"),
        ("gal_knots_n", "i4"),
        ("gal_knots_flux_fraction", "f8"),
        ("gal_knots_seed", "u8"),
        ("rotation_deg", "f8"),
        ("shear_g1", "f8"),
        ("shear_g2", "f8"),
        ("offset_x_pix", "f8"),
        ("offset_y_pix", "f8"),
        ("psf_family", "S16"),
        ("psf_fwhm_arcsec", "f8"),
        ("psf_g1", "f8"),
        ("psf_g2", "f8"),
        ("psf_beta", "f8"),
        ("psf_lam_over_diam_arcsec", "f8"),
        ("psf_obscuration", "f8"),
    ]
    + [(f"psf_{name}", "f8") for name in ABERRATIONS]
    + [
        ("psfex_model", "S64"),
        ("psfex_x", "f8"),
        ("psfex_y", "f8"),
        ("psfex_pixel_scale_arcsec", "f8"),
    ]
)


def group_size(card: DatasetCard) -> int:
    return 4 if card.kind == "metacal" else 1


def group_rng(split_seed: int, group: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(split_seed, spawn_key=(group,)))


def _uniform(rng: np.random.Generator, rng_range) -> float:
    return float(rng.uniform(rng_range.min, rng_range.max))


def _lognormal(rng: np.random.Generator, dist) -> float:
    # Truncated by redrawing (bounded loop; falls back to clipping).
    for _ in range(100):
        value = float(np.exp(rng.normal(math.log(dist.median), dist.sigma)))
        if dist.min <= value <= dist.max:
            return value
    return float(np.clip(value, dist.min, dist.max))


def _choose(rng: np.random.Generator, weights: dict[str, float], round_robin_index: int) -> str:
    names = list(weights)
    values = np.array([weights[name] for name in names], dtype=float)
    if np.allclose(values, values[0]):
        return names[round_robin_index % len(names)]
    return names[int(rng.choice(len(names), p=values / values.sum()))]


def _shape(rng: np.random.Generator, sigma: float, g_max: float) -> tuple[float, float]:
    """Intrinsic reduced shear: Gaussian per component with ``sigma``, |g| < g_max (redraw)."""
    for _ in range(100):
        g1, g2 = rng.normal(0.0, sigma, size=2)
        if math.hypot(g1, g2) < g_max:
            return float(g1), float(g2)
    return 0.0, 0.0


def draw_group(card: DatasetCard, split: str, group: int) -> np.ndarray:
    """Parameters of the stamps of one group (structured array of ``PARAMS_DTYPE``)."""
    spec = card.split(split)
    levels = card.snr_levels(split)
    rng = group_rng(spec.seed, group)
    size = group_size(card)
    rows = np.zeros(size, dtype=PARAMS_DTYPE)

    # --- galaxy (shared by the group) ---
    gal = card.galaxy
    n_families = len(card.psf.families)
    profile = _choose(rng, gal.profiles, group // (len(levels) * n_families))
    hlr = _lognormal(rng, gal.half_light_radius_arcsec)
    flux = _lognormal(rng, gal.flux)
    g1, g2 = _shape(rng, gal.shape_sigma, gal.shape_max)
    bulge_fraction = _uniform(rng, gal.bulge_fraction)
    bulge_hlr = hlr * _uniform(rng, gal.bulge_to_disk_size)
    knots_n = int(round(_uniform(rng, gal.knots_number)))
    knots_fraction = _uniform(rng, gal.knots_flux_fraction)
    knots_seed = int(rng.integers(1, 2**31 - 1))
    max_off = card.stamp.max_offset_pixels
    offset = rng.uniform(-max_off, max_off, size=2) if max_off > 0 else np.zeros(2)

    # --- PSF (shared by the group) ---
    psf = card.psf
    family = _choose(rng, psf.families, group // len(levels))
    psf_fwhm = _uniform(rng, psf.fwhm_arcsec)
    if spec.psf_shear is not None:
        psf_g1, psf_g2 = spec.psf_shear
    else:
        amplitude = float(rng.uniform(0.0, psf.ellipticity_max))
        angle = float(rng.uniform(0.0, math.pi))
        psf_g1, psf_g2 = amplitude * math.cos(2 * angle), amplitude * math.sin(2 * angle)
    beta = _uniform(rng, psf.moffat_beta)
    lod = _uniform(rng, psf.lam_over_diam_arcsec)
    obscuration = _uniform(rng, psf.obscuration)
    aberration_rms = _uniform(rng, psf.aberration_rms_waves)
    aberrations = rng.normal(0.0, 1.0, size=len(ABERRATIONS))
    aberrations *= aberration_rms / max(math.sqrt(np.mean(aberrations**2)), 1e-12)
    psfex_model = psf.psfex_models[int(rng.integers(len(psf.psfex_models)))] if psf.psfex_models else ""
    psfex_x = float(rng.uniform(0.0, psf.psfex_field_pixels[0]))
    psfex_y = float(rng.uniform(0.0, psf.psfex_field_pixels[1]))

    # --- noise ---
    snr_level = levels[group % len(levels)]
    noise_seeds = rng.integers(1, 2**63 - 1, size=2, dtype=np.uint64)

    rows["group"] = group
    rows["index"] = group * size + np.arange(size)
    rows["slot"] = np.arange(size)
    rows["snr_level"] = snr_level
    rows["gal_profile"] = profile
    rows["gal_flux"] = flux
    rows["gal_hlr_arcsec"] = hlr
    rows["gal_g1"], rows["gal_g2"] = g1, g2
    rows["gal_bulge_fraction"] = bulge_fraction
    rows["gal_bulge_hlr_arcsec"] = bulge_hlr
    rows["gal_trunc_arcsec"] = gal.devaucouleurs_trunc_factor * (
        bulge_hlr if profile == "bulge+disk" else hlr
    )
    rows["gal_knots_n"] = knots_n
    rows["gal_knots_flux_fraction"] = knots_fraction
    rows["gal_knots_seed"] = knots_seed
    rows["offset_x_pix"], rows["offset_y_pix"] = offset
    rows["psf_family"] = family
    rows["psf_fwhm_arcsec"] = psf_fwhm
    rows["psf_g1"], rows["psf_g2"] = psf_g1, psf_g2
    rows["psf_beta"] = beta
    rows["psf_lam_over_diam_arcsec"] = lod
    rows["psf_obscuration"] = obscuration
    for name, value in zip(ABERRATIONS, aberrations):
        rows[f"psf_{name}"] = value
    rows["psfex_model"] = psfex_model
    rows["psfex_x"], rows["psfex_y"] = psfex_x, psfex_y
    rows["psfex_pixel_scale_arcsec"] = psf.psfex_pixel_scale_arcsec

    if card.kind == "metacal":
        sign = np.array([1.0, -1.0, 1.0, -1.0])
        rows["shear_g1"] = sign * card.shear.g1
        rows["shear_g2"] = sign * card.shear.g2
        rows["rotation_deg"] = np.array([0.0, 0.0, 90.0, 90.0])
        rows["noise_seed"] = noise_seeds[[0, 0, 1, 1]]
    else:
        rows["noise_seed"] = noise_seeds[0]
    return rows
