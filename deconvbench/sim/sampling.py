"""Drawing the parameters of every stamp from a card, deterministically and stably.

Randomness derives only from (split seed, stream name, galaxy or PSF index) through
:func:`deconvbench.sim.registry.substream`: a stamp is the same whatever the number of
workers or the order of generation, a prefix of a split (``--n``) equals the start of the
full split, and each quantity has its own stream, so adding a profile, a family or a
draw changes nothing else (see :mod:`deconvbench.sim.registry`).

Indices: galaxy ``g`` (the ``group`` column) gives one stamp for a deconvolution card and
4 stamps for a metacal card (same galaxy and PSF; slots (+g, 0°), (−g, 0°), (+g, 90°),
(−g, 90°); noise shared by +g/−g of the same rotation). Galaxies ``p·G … p·G+G−1`` share
PSF ``p`` (``G = psf.galaxies_per_psf``). SNR levels are assigned round-robin (level =
levels[g mod L]); with equal weights PSF families too (family = families[(p // max(1,
L // G)) mod F]), so even a tiny split covers every level and family, uncorrelated with
each other; with unequal weights the family is drawn from the ``assign-family`` stream.
The galaxy profile is always drawn with the card's weights from the ``assign-profile``
stream, so that it does not depend on the number of families.
"""

from __future__ import annotations

import math

import numpy as np

from ..cards import DatasetCard
from .registry import galaxy_profile, params_dtype, psf_family, substream


def stamps_per_galaxy(card: DatasetCard) -> int:
    return 4 if card.kind == "metacal" else 1


group_size = stamps_per_galaxy  # the unit of ``--n``


def card_params_dtype(card: DatasetCard) -> np.dtype:
    """The card's ``params`` table: common columns + those of its profiles and families."""
    return params_dtype(card.galaxy.profiles, card.psf.families)


def _lognormal(rng: np.random.Generator, dist) -> float:
    # Truncated by redrawing (bounded loop; falls back to clipping).
    for _ in range(100):
        value = float(np.exp(rng.normal(math.log(dist.median), dist.sigma)))
        if dist.min <= value <= dist.max:
            return value
    return float(np.clip(value, dist.min, dist.max))


def _choose(rng_factory, weights: dict[str, float], round_robin_index: int) -> str:
    names = list(weights)
    values = np.array([weights[name] for name in names], dtype=float)
    if np.allclose(values, values[0]):
        return names[round_robin_index % len(names)]
    return names[int(rng_factory().choice(len(names), p=values / values.sum()))]


def _draw_choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    values = np.array([weights[name] for name in names], dtype=float)
    return names[int(rng.choice(len(names), p=values / values.sum()))]


def _shape(rng: np.random.Generator, sigma: float, g_max: float) -> tuple[float, float]:
    """Intrinsic reduced shear: Gaussian per component with ``sigma``, |g| < g_max (redraw)."""
    for _ in range(100):
        g1, g2 = rng.normal(0.0, sigma, size=2)
        if math.hypot(g1, g2) < g_max:
            return float(g1), float(g2)
    return 0.0, 0.0


def _family_block(card: DatasetCard, n_levels: int) -> int:
    """PSFs per round-robin family block: enough galaxies to span every SNR level."""
    return max(1, n_levels // card.psf.galaxies_per_psf)


def draw_psf(card: DatasetCard, split: str, psf_index: int) -> dict:
    """Family, shear and family parameters of PSF ``psf_index`` of ``split``."""
    spec = card.split(split)
    levels = card.snr_levels(split)
    psf = card.psf
    family = _choose(
        lambda: substream(spec.seed, "assign-family", psf_index),
        psf.families,
        psf_index // _family_block(card, len(levels)),
    )
    if spec.psf_shear is not None:
        g1, g2 = spec.psf_shear
    else:
        rng = substream(spec.seed, "psf-shape", psf_index)
        amplitude = float(rng.uniform(0.0, psf.ellipticity_max))
        angle = float(rng.uniform(0.0, math.pi))
        g1, g2 = amplitude * math.cos(2 * angle), amplitude * math.sin(2 * angle)
    values = {"psf_family": family, "psf_g1": g1, "psf_g2": g2}
    values.update(psf_family(family).draw(substream(spec.seed, family, psf_index), psf, values))
    return values


def draw_galaxy(card: DatasetCard, split: str, galaxy: int) -> dict:
    """Profile, size, flux, shape, offset, profile parameters and noise seeds of one galaxy."""
    spec = card.split(split)
    levels = card.snr_levels(split)
    gal = card.galaxy
    profile = _draw_choice(substream(spec.seed, "assign-profile", galaxy), gal.profiles)
    rng = substream(spec.seed, "galaxy", galaxy)
    values = {
        "gal_profile": profile,
        "gal_hlr_arcsec": _lognormal(rng, gal.half_light_radius_arcsec),
        "gal_flux": _lognormal(rng, gal.flux),
        "snr_level": levels[galaxy % len(levels)],
    }
    values["gal_g1"], values["gal_g2"] = _shape(substream(spec.seed, "shape", galaxy), gal.shape_sigma, gal.shape_max)
    max_off = card.stamp.max_offset_pixels
    offset = substream(spec.seed, "offset", galaxy).uniform(-max_off, max_off, size=2) if max_off > 0 else (0.0, 0.0)
    values["offset_x_pix"], values["offset_y_pix"] = float(offset[0]), float(offset[1])
    values.update(galaxy_profile(profile).draw(substream(spec.seed, profile, galaxy), gal, values))
    values["noise_seeds"] = substream(spec.seed, "noise", galaxy).integers(1, 2**63 - 1, size=2, dtype=np.uint64)
    return values


def draw_galaxies(card: DatasetCard, split: str, first: int, count: int) -> np.ndarray:
    """``params`` rows of galaxies ``first … first+count−1`` (stamps in index order)."""
    per = stamps_per_galaxy(card)
    g_per_psf = card.psf.galaxies_per_psf
    rows = np.zeros(count * per, dtype=card_params_dtype(card))
    psfs: dict[int, dict] = {}
    for k, galaxy in enumerate(range(first, first + count)):
        psf_index = galaxy // g_per_psf
        if psf_index not in psfs:
            psfs[psf_index] = draw_psf(card, split, psf_index)
        values = draw_galaxy(card, split, galaxy)
        seeds = values.pop("noise_seeds")
        sl = slice(k * per, (k + 1) * per)
        for name, value in {**values, **psfs[psf_index]}.items():
            rows[name][sl] = value
        rows["group"][sl] = galaxy
        rows["psf_index"][sl] = psf_index
        rows["index"][sl] = galaxy * per + np.arange(per)
        rows["slot"][sl] = np.arange(per)
        if card.kind == "metacal":
            sign = np.array([1.0, -1.0, 1.0, -1.0])
            rows["shear_g1"][sl] = sign * card.shear.g1
            rows["shear_g2"][sl] = sign * card.shear.g2
            rows["rotation_deg"][sl] = (0.0, 0.0, 90.0, 90.0)
            rows["noise_seed"][sl] = seeds[[0, 0, 1, 1]]
        else:
            rows["noise_seed"][sl] = seeds[0]
    return rows


def draw_group(card: DatasetCard, split: str, group: int) -> np.ndarray:
    """``params`` rows of one galaxy (1 stamp, or 4 for a metacal card)."""
    return draw_galaxies(card, split, group, 1)
