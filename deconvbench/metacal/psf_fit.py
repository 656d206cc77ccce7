"""The metacal reconvolution kernel Γ: ngmix's "fitgauss" definition, batched.

For each PSF image (PSF ⊗ pixel, as stored), following ngmix
(``metacal.fitgauss_target_psf.get_fitgauss_target_psf`` and ``_do_dilate``):

1. adaptive moments of the PSF image (:func:`deconvbench.moments.adaptive_moments`, the
   least-squares elliptical Gaussian fit): covariance C (pixels²), ``T = tr C``;
2. ellipticity widening: ``d₀ = sqrt(λ_max(C) / (T/2))`` (≥ 1; 1 for a round PSF),
   ``d = 1 + 2(d₀ − 1)``, capped at 1.1; ``T_Γ = T · d`` (ngmix multiplies T, not σ², by d);
3. the round Gaussian of ``σ = sqrt(T_Γ / 2)``, dilated by ``1 + 2|step|`` (ngmix
   dilates by the metacal step, also for the noshear image).

Γ is the new *effective* PSF: ngmix draws it without a further pixel (the pixel is
already in the fitted PSF image), and so does :func:`deconvbench.metacal.shear_ops.metacal_images`.
FWHM in arcsec = ``2.3548 · σ · pixel_scale``. The fit crops the central 32×32 pixels:
the adaptive weight of a PSF of FWHM ≤ 6 pixels is below 1e-5 of its peak beyond 16
pixels (change of the FWHM < 1e-6 relative).
"""

from __future__ import annotations

import numpy as np

from ..fourier import FWHM_PER_SIGMA
from ..moments import adaptive_moments

#: ngmix's cap on the ellipticity widening factor d
MAX_ELLIPTICITY_DILATION = 1.1

PSF_FIT_CROP = 32

#: iterations of the PSF's adaptive fit: aberrated, diffraction-limited PSFs converge
#: linearly and slowly (on metacal-space, 7 of 256 PSFs need more than 200 plain iterations
#: and one more than 200 accelerated ones; all converge within 1000); a converged fit is
#: the same to the bit whatever the cap
PSF_FIT_MAX_ITER = 1000


def ellipticity_dilation(cxx, cyy, cxy) -> np.ndarray:
    """ngmix's widening factor d of T for a PSF of covariance ``[[cxx, cxy], [cxy, cyy]]``:
    ``d = min(1 + 2(sqrt(λ_max/(T/2)) − 1), 1.1)``; (B,) arrays in, (B,) out."""
    cxx, cyy, cxy = (np.asarray(v, dtype=np.float64) for v in (cxx, cyy, cxy))
    t = cxx + cyy
    lam_max = 0.5 * t + np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy**2)
    with np.errstate(invalid="ignore", divide="ignore"):  # a failed fit (T = 0 or NaN) gives NaN
        d0 = np.sqrt(lam_max / (0.5 * t))
    return np.minimum(1.0 + 2.0 * (d0 - 1.0), MAX_ELLIPTICITY_DILATION)


def psf_gaussian_fit(psf_images, pixel_scale: float) -> dict[str, np.ndarray]:
    """Adaptive-moment Gaussian fit of PSF images ``(B, n, n)``: the dict of
    :func:`deconvbench.moments.adaptive_moments` (pixels) plus ``fwhm_arcsec``
    (``2.3548 · det(C)^{1/4} · pixel_scale``, NaN where the fit fails)."""
    res = adaptive_moments(psf_images, crop=PSF_FIT_CROP, max_iter=PSF_FIT_MAX_ITER)
    res["fwhm_arcsec"] = FWHM_PER_SIGMA * res["sigma"] * pixel_scale
    return res


def fit_gaussian_fwhm(psf_images, pixel_scale: float) -> np.ndarray:
    """FWHM (arcsec) ``2.3548 · det(C)^{1/4} · pixel_scale`` of the best-fit elliptical
    Gaussian of each PSF image (GalSim's ``moments_sigma`` convention); (B,), NaN where
    the fit fails."""
    return psf_gaussian_fit(psf_images, pixel_scale)["fwhm_arcsec"]


def reconv_fwhm(psf_images, pixel_scale: float, step: float = 0.01) -> np.ndarray:
    """FWHM (arcsec) of the round reconvolution Gaussian Γ (ngmix "fitgauss", see the
    module docstring): ``2.3548 · sqrt(T·d/2) · (1 + 2|step|) · pixel_scale``. (B,), NaN
    where the PSF fit fails."""
    images = np.asarray(psf_images)
    if images.ndim == 2:
        images = images[None]
    # distinct stamps are found in the stamps' own dtype (float32 → float64 is one-to-one):
    # only they are converted
    first, inverse = unique_stamps(images)
    unique = np.asarray(images[first], dtype=np.float64)
    res = adaptive_moments(unique, crop=PSF_FIT_CROP, accelerate=True, max_iter=PSF_FIT_MAX_ITER)
    ok = res["flags"] == 0
    d = ellipticity_dilation(res["Ixx"], res["Iyy"], res["Ixy"])
    sigma = np.sqrt(res["T"] * d / 2.0)
    return np.where(ok, FWHM_PER_SIGMA * sigma * (1.0 + 2.0 * abs(step)) * pixel_scale, np.nan)[inverse]


def unique_stamps(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first occurrence of each distinct stamp (bit-identical pixels) and
    the map back, ``images[first][inverse] == images``: stamps of a group share their PSF
    image, which is then fitted once. Runs of equal neighbours (the stamps of a group are
    consecutive) are found by one vectorised comparison; only the first stamp of each run
    is looked up (by its bytes)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    same_as_previous = np.zeros(len(images), dtype=bool)
    # bitwise equality (NaN-safe, like the hashes): compare the raw bytes, as unsigned
    # integers of the pixels' width (8× fewer comparisons than byte by byte for float64)
    width = flat.dtype.itemsize if flat.dtype.itemsize in (1, 2, 4, 8) else 1
    words = flat.view(f"u{width}").reshape(len(images), -1)
    same_as_previous[1:] = (words[1:] == words[:-1]).all(axis=1)
    raw = flat.view(np.uint8).reshape(len(images), -1)
    heads = np.flatnonzero(~same_as_previous)
    run_of = np.cumsum(~same_as_previous) - 1  # run index of every stamp
    # the run heads' bytes are the keys: the dict hashes them and compares equal hashes
    # byte by byte, so equal keys are equal stamps
    index: dict[bytes, int] = {}
    head_ids = np.array([index.setdefault(raw[h].tobytes(), len(index)) for h in heads], dtype=np.int64)
    inverse = head_ids[run_of]
    first = np.zeros(len(index), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(images))[::-1]
    return first, inverse
