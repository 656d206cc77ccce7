"""Reference rendering with GalSim's own ``drawImage`` at tight settings.

The same profiles as the fast renderer (:mod:`deconvbench.sim.render`: same ``params``
rows, same GalSim objects and accuracy settings), drawn the plain GalSim way: one
``drawImage`` per image, each convolution drawn by GalSim's FFT on a periodic grid of at
least ``REFERENCE_FFT_FACTOR`` × the fast renderer's padded grid (so that wrap-around
in the reference is negligible), folding its k-image to the pixel grid as GalSim does.
Slow (a large FFT per image); used by ``deconvbench validate-render`` and the tests.
"""

from __future__ import annotations

import galsim
import numpy as np

from ..cards import DatasetCard
from .galaxies import build_galaxy
from .psfs import build_psf, draw_method

REFERENCE_FFT_FACTOR = 4
MAX_FFT_SIZE = 4096  # GalSim's FFTs stay below 4096² complex (256 MB)


def centre_offset(stamp_size: int) -> tuple[float, float]:
    """Drawing offset (pixels) that puts the profile centre on pixel (n//2, n//2), 0-based.

    GalSim centres a profile on the image's true centre, which for even n lies between
    pixels; shifting by +0.5 px moves it onto pixel n//2 (the FFT origin)."""
    half = 0.5 if stamp_size % 2 == 0 else 0.0
    return (half, half)


def reference_gsparams(pad_size: int, fft_factor: int = REFERENCE_FFT_FACTOR) -> galsim.GSParams:
    """Drawing settings of the reference: FFT grids of at least ``fft_factor`` (default 4) ×
    the fast padded grid."""
    return galsim.GSParams(minimum_fft_size=fft_factor * pad_size, maximum_fft_size=MAX_FFT_SIZE, maxk_threshold=1e-5)


def draw_reference(
    profile: galsim.GSObject, stamp_size: int, pixel_scale: float, method: str, draw_gsparams: galsim.GSParams
) -> np.ndarray:
    """``profile`` drawn by GalSim ``drawImage`` (its FFT settings from ``draw_gsparams``)."""
    wrapped = galsim.Transform(profile, gsparams=draw_gsparams, propagate_gsparams=False)
    image = wrapped.drawImage(
        nx=stamp_size, ny=stamp_size, scale=pixel_scale, method=method, offset=centre_offset(stamp_size)
    )
    return image.array.astype(np.float64)


def convolve_with_galaxy(row, scale: float, others: list, tight: galsim.GSParams, fallback: galsim.GSParams) -> list:
    """``galaxy ⊗ other`` for each of ``others``, every part at GalSim settings ``tight``.

    GalSim cannot integrate the maxk of truncated Sérsic profiles of high index (n ≳ 4) to
    1e-7 of the flux ("Roundoff error ... in intGKP"). Such a galaxy is built with
    ``fallback`` (the fast renderer's 1e-5), and the convolutions keep it there
    (``propagate_gsparams=False``; ``others`` are still at ``tight``). Its maxk then lies far
    beyond the other profiles' (checked), so each product is still cut by the PSF alone."""
    galaxy = build_galaxy(row, scale, tight)
    try:
        _ = galaxy.maxk
    except RuntimeError:
        galaxy = build_galaxy(row, scale, fallback)
        others = [other.withGSParams(tight) for other in others]
        if galaxy.maxk < max(other.maxk for other in others):
            raise
        return [galsim.Convolve([galaxy, other], propagate_gsparams=False) for other in others]
    return [galsim.Convolve([galaxy, other]) for other in others]


def reference_stamps(
    card: DatasetCard, rows: np.ndarray, fft_factor: int = REFERENCE_FFT_FACTOR
) -> dict[str, np.ndarray]:
    """``noiseless``, ``truth`` and ``psf`` (float64) of ``rows`` (one PSF: ``rows[0]``'s),
    GalSim's FFTs on grids of at least ``fft_factor`` × the fast padded grid (a larger
    factor shows how far GalSim's own result still depends on its grid)."""
    from .render import gsparams, kgrid, target_psf

    gsp = gsparams()
    draw_gsp = reference_gsparams(kgrid(card).pad_size, fft_factor)
    n, scale = card.stamp.size, card.stamp.pixel_scale_arcsec
    psf = build_psf(rows[0], gsp)
    method = draw_method(rows[0], scale)
    target = target_psf(card, gsp.withParams(maxk_threshold=1e-7))
    psf_image = draw_reference(psf, n, scale, method, draw_gsp)
    psf_image /= psf_image.sum()
    out = {"noiseless": [], "truth": [], "psf": []}
    # The galaxy's own maxk (at maxk_threshold 1e-5) must not truncate the product:
    # GalSim cuts a convolution at the smallest maxk of its parts.
    galaxy_gsp = gsp.withParams(maxk_threshold=1e-7)
    for row in rows:
        noiseless, truth = convolve_with_galaxy(row, scale, [psf, target], galaxy_gsp, gsp)
        out["noiseless"].append(draw_reference(noiseless, n, scale, method, draw_gsp))
        out["truth"].append(draw_reference(truth, n, scale, "auto", draw_gsp))
        out["psf"].append(psf_image)
    return {key: np.stack(value) for key, value in out.items()}
