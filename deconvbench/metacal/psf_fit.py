"""Gaussian fit of PSF images (ngmix's "fitgauss" size), batched.

The PSF size used for metacal's reconvolution kernel is the FWHM of the best-fitting
elliptical Gaussian, found by *adaptive moments* (Bernstein & Jarvis 2002; GalSim's
``hsm.FindAdaptiveMom``): an elliptical Gaussian weight ``W`` of centroid ``μ`` and
covariance ``C`` is iterated until the W-weighted centroid equals ``μ`` and twice the
W-weighted covariance equals ``C``. At that fixed point ``W`` is the least-squares
Gaussian fit of the image (flat pixel weights). The reported size is
``σ = det(C)^(1/4)`` (GalSim's ``moments_sigma``) and ``FWHM = 2.3548 · σ · pixel_scale``.

Everything is vectorised over the batch: a fixed maximum number of iterations, stopping
early once every stamp has converged (relative change of C and μ below ``tol``). For a
PSF image of a Gaussian drawn with the pixel (``method='auto'``) the result is the FWHM of
the Gaussian best fitting the *pixel-convolved* profile, as in ngmix (which fits the PSF
image as given). Agrees with ``FindAdaptiveMom(img).moments_sigma · pixel_scale · 2.3548``
to ~1e-6 relative.
"""

from __future__ import annotations

import numpy as np

from .shear_ops import FWHM_PER_SIGMA


def _adaptive_moments(images: np.ndarray, max_iter: int, tol: float):
    """Adaptive moments (pixels): returns centroid (B,2) [x, y], covariance (B,2,2)
    [[xx, xy], [xy, yy]], converged flag (B,) and the number of iterations run."""
    b, ny, nx = images.shape
    y = np.arange(ny, dtype=np.float64)[None, :, None]
    x = np.arange(nx, dtype=np.float64)[None, None, :]
    # start: round weight of σ = n/8 pixels centred on (n//2, n//2)
    mx = np.full(b, float(nx // 2))
    my = np.full(b, float(ny // 2))
    cxx = np.full(b, (min(nx, ny) / 8.0) ** 2)
    cyy = cxx.copy()
    cxy = np.zeros(b)
    converged = np.zeros(b, dtype=bool)
    active = np.arange(b)  # stamps still iterating (converged or failed ones stop)
    it = 0
    for it in range(1, max_iter + 1):
        if active.size == 0:
            break
        img = images[active]
        c_xx, c_yy, c_xy = cxx[active], cyy[active], cxy[active]
        det = c_xx * c_yy - c_xy**2
        ixx, iyy, ixy = c_yy / det, c_xx / det, -c_xy / det  # C⁻¹
        dx = x - mx[active, None, None]
        dy = y - my[active, None, None]
        quad = ixx[:, None, None] * dx**2 + 2.0 * ixy[:, None, None] * dx * dy + iyy[:, None, None] * dy**2
        wimg = img * np.exp(-0.5 * quad)
        a = wimg.sum(axis=(1, 2))
        bx = (wimg * dx).sum(axis=(1, 2)) / a
        by = (wimg * dy).sum(axis=(1, 2)) / a
        mxx = (wimg * dx**2).sum(axis=(1, 2)) / a - bx**2
        myy = (wimg * dy**2).sum(axis=(1, 2)) / a - by**2
        mxy = (wimg * dx * dy).sum(axis=(1, 2)) / a - bx * by
        new = (mx[active] + bx, my[active] + by, 2.0 * mxx, 2.0 * myy, 2.0 * mxy)
        scale = np.sqrt(np.abs(c_xx * c_yy))
        with np.errstate(invalid="ignore", divide="ignore"):
            change = np.maximum.reduce(
                [np.abs(new[0] - mx[active]) / np.sqrt(scale), np.abs(new[1] - my[active]) / np.sqrt(scale),
                 np.abs(new[2] - c_xx) / scale, np.abs(new[3] - c_yy) / scale, np.abs(new[4] - c_xy) / scale]
            )
        mx[active], my[active], cxx[active], cyy[active], cxy[active] = new
        done = change < tol
        converged[active] = done
        bad = ~(np.isfinite(change) & (a > 0) & (new[2] * new[3] - new[4] ** 2 > 0))
        active = active[~(done | bad)]
    cov = np.stack([np.stack([cxx, cxy], -1), np.stack([cxy, cyy], -1)], -2)
    return np.stack([mx, my], -1), cov, converged, it


def fit_gaussian_fwhm(psf_images, pixel_scale: float, max_iter: int = 200, tol: float = 1e-10,
                      crop: int | None = 32) -> np.ndarray:
    """FWHM (arcsec) of the best-fit elliptical Gaussian of each PSF image.

    ``psf_images``: ``(B, n, n)`` (or ``(n, n)``), PSF ⊗ pixel, any normalisation;
    ``pixel_scale`` in arcsec/pixel. Returns ``(B,)`` float64
    ``FWHM = 2.3548 · det(C)^(1/4) · pixel_scale`` with ``C`` the adaptive-moment
    covariance (see module docstring); NaN where the iteration fails or does not converge
    within ``max_iter`` iterations.

    ``crop``: fit the central ``crop × crop`` pixels around (n//2, n//2) only (default 32;
    None: the whole stamp). The adaptive weight of a PSF of FWHM ≤ 6 pixels is below 1e-5
    of its peak beyond 16 pixels, so the crop changes the FWHM by < 1e-6 relative while
    making the fit ~2x faster on 48-pixel stamps."""
    images = np.asarray(psf_images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    n = images.shape[-1]
    if crop is not None and crop < n and images.shape[-2] == n:
        lo = n // 2 - crop // 2
        images = images[:, lo : lo + crop, lo : lo + crop]
    _, cov, converged, _ = _adaptive_moments(images, max_iter, tol)
    det = np.linalg.det(cov)
    sigma = np.where(converged & (det > 0), np.abs(det) ** 0.25, np.nan)
    return FWHM_PER_SIGMA * sigma * pixel_scale


def reconv_fwhm(psf_images, pixel_scale: float, step: float = 0.01) -> np.ndarray:
    """Metacal reconvolution FWHM (arcsec), ngmix "fitgauss": ``(1 + 2·step) ×``
    :func:`fit_gaussian_fwhm`. Shape ``(B,)``."""
    return (1.0 + 2.0 * step) * fit_gaussian_fwhm(psf_images, pixel_scale)
