"""Rendering of one group of stamps with GalSim.

For each stamp (n×n, pixel scale from the card, centred on pixel (n//2, n//2)):

* ``noiseless`` = galaxy ⊗ PSF ⊗ pixel;
* ``observed``  = noiseless + noise (see :mod:`deconvbench.sim.noise`);
* ``truth``     = galaxy ⊗ Gaussian(target FWHM) ⊗ pixel;
* ``psf``       = PSF ⊗ pixel (the effective PSF), normalised to sum 1.

All images are drawn with GalSim's default (``method='auto'``: convolution with the
pixel), or ``'no_pixel'`` for empirical PSF models that include the pixel already; then
the target is still drawn with the pixel so that ``truth`` has the same convention for
every family. The unconvolved galaxy is never drawn. GalSim's FFT size is capped
(``MAX_FFT_SIZE``) so that a bad card fails with a clear message instead of eating memory.
"""

from __future__ import annotations

import contextlib
import math

import galsim
import numpy as np

from ..cards import DatasetCard
from ..errors import DeconvbenchError
from .galaxies import build_galaxy
from .noise import noise_field, poisson_noise, sigma_for_snr
from .psfs import build_psf, draw_method

MAX_FFT_SIZE = 4096  # 4096² complex128 = 256 MB per FFT at most


def gsparams() -> galsim.GSParams:
    return galsim.GSParams(maximum_fft_size=MAX_FFT_SIZE)


def centre_offset(stamp_size: int) -> tuple[float, float]:
    """Drawing offset (pixels) that puts the profile centre on pixel (n//2, n//2), 0-based.

    GalSim centres a profile on the image's true centre, which for even n lies between
    pixels; shifting by +0.5 px moves it onto pixel n//2 (the FFT origin)."""
    half = 0.5 if stamp_size % 2 == 0 else 0.0
    return (half, half)


def draw(profile: galsim.GSObject, stamp_size: int, pixel_scale: float, method: str) -> np.ndarray:
    image = profile.drawImage(
        nx=stamp_size, ny=stamp_size, scale=pixel_scale, method=method, offset=centre_offset(stamp_size)
    )
    return image.array.astype(np.float64)


@contextlib.contextmanager
def fft_size_errors():
    """Make GalSim raise (instead of warn and go on) when an FFT exceeds the cap."""
    previous = galsim.errors.raise_fft_size_error
    galsim.errors.raise_fft_size_error = True
    try:
        yield
    finally:
        galsim.errors.raise_fft_size_error = previous


def render_group(card: DatasetCard, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Render the stamps of ``rows`` (one group); fills ``noise_sigma`` and ``snr`` in place."""
    with fft_size_errors():
        return _render_group(card, rows)


def _render_group(card: DatasetCard, rows: np.ndarray) -> dict[str, np.ndarray]:
    n = card.stamp.size
    scale = card.stamp.pixel_scale_arcsec
    gsp = gsparams()
    target = galsim.Gaussian(fwhm=card.stamp.target_psf_fwhm_arcsec, gsparams=gsp)
    out = {key: np.zeros((len(rows), n, n), dtype=np.float32) for key in ("observed", "noiseless", "truth", "psf")}
    try:
        psf = build_psf(rows[0], gsp)  # a group shares its PSF
        method = draw_method(rows[0], scale)
        psf_image = draw(psf, n, scale, method)
        psf_image /= psf_image.sum()
        noise_sigma_by_seed: dict[int, float] = {}
        for i, row in enumerate(rows):
            galaxy = build_galaxy(row, scale, gsp)
            noiseless = draw(galsim.Convolve([galaxy, psf], gsparams=gsp), n, scale, method)
            truth = draw(galsim.Convolve([galaxy, target], gsparams=gsp), n, scale, "auto")
            seed = int(row["noise_seed"])
            # ±g stamps sharing a noise field share its sigma too (set by the first of them)
            if seed not in noise_sigma_by_seed:
                noise_sigma_by_seed[seed] = sigma_for_snr(noiseless, float(row["snr_level"]))
            sigma = noise_sigma_by_seed[seed]
            observed = noiseless + sigma * noise_field(seed, (n, n))
            if card.noise.poisson_source:
                observed = observed + poisson_noise(noiseless, card.noise.gain, seed ^ int(row["index"]))
            noiseless32 = noiseless.astype(np.float32)
            rows["noise_sigma"][i] = sigma
            rows["snr"][i] = (
                math.inf if sigma == 0 else float(np.sqrt(np.sum(noiseless32.astype(np.float64) ** 2)) / sigma)
            )
            out["observed"][i] = observed
            out["noiseless"][i] = noiseless32
            out["truth"][i] = truth
            out["psf"][i] = psf_image
    except galsim.GalSimFFTSizeError as exc:
        raise DeconvbenchError(
            f"group {int(rows[0]['group'])}: GalSim needs an FFT of {exc.size}² > {MAX_FFT_SIZE}² "
            "(galaxy or PSF too large or too cuspy for this card's stamp; check the card's ranges)"
        ) from None
    return out
