"""Per-stamp image metrics of an estimate against the truth, batched.

Every function takes ``est`` and ``truth`` of the same shape, (B, n, n) or (n, n), indexed
(row=y, col=x), in the same flux units (counts per pixel), and returns one value per
stamp: a float64 (B,) array, or a Python float for a single (n, n) stamp. Nothing is
averaged over the batch here (see :mod:`deconvbench.metrics.aggregate`). Degenerate
cases give inf or NaN (never a silent 0), e.g. ``nmse`` of an all-zero truth; non-finite
pixels in ``est`` give NaN.

* :func:`nmse` — Σ(est − truth)² / Σ truth² (0 is perfect).
* :func:`psnr` — 10 log10(peak² / mean((est − truth)²)) in dB, ``peak = max(truth)`` of
  each stamp (the truth is a galaxy on a zero background, so its maximum is also its
  dynamic range); +inf for a perfect estimate.
* :func:`ssim` — structural similarity with an 11×11 Gaussian window (sigma 1.5 px,
  truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population covariances and
  ``data_range = max(truth) − min(truth)`` per stamp, averaged over the pixels at least
  5 px from the border; equal to ``skimage.metrics.structural_similarity(truth, est,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...)``.
* :func:`flux_error` — (Σ est − Σ truth) / Σ truth (relative).
* :func:`centroid_error` — distance (pixels) between the Gaussian-weighted centroids of
  est and truth, see :func:`weighted_centroids`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # as scikit-image: window radius int(3.5·1.5 + 0.5) = 5 px
SSIM_K1 = 0.01
SSIM_K2 = 0.03

CENTROID_ITERATIONS = 20


def _stack(images: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (B, ny, nx) or (ny, nx), got {np.shape(images)}")
    return arr


def _pair(est: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    single = np.ndim(est) == 2 and np.ndim(truth) == 2
    e, t = _stack(est, "est"), _stack(truth, "truth")
    if e.shape != t.shape:
        raise ValueError(f"est and truth shapes differ: {e.shape} vs {t.shape}")
    return e, t, single


def _out(values: np.ndarray, single: bool):
    values = np.asarray(values, dtype=np.float64)
    return float(values[0]) if single else values


def _per_stamp(value, B: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(B, float(arr))
    if arr.shape != (B,):
        raise ValueError(f"{name} must be a scalar or have shape ({B},), got {arr.shape}")
    return arr


def nmse(est: np.ndarray, truth: np.ndarray):
    """Normalised mean squared error Σ(est − truth)² / Σ truth² per stamp (dimensionless)."""
    e, t, single = _pair(est, truth)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.sum((e - t) ** 2, axis=(-2, -1)) / np.sum(t**2, axis=(-2, -1))
    return _out(values, single)


def psnr(est: np.ndarray, truth: np.ndarray):
    """Peak signal-to-noise ratio in dB: 10 log10(max(truth)² / mean((est − truth)²)).

    The peak is the maximum of each truth stamp (not a fixed data range): +inf for a
    perfect estimate, NaN if max(truth) <= 0."""
    e, t, single = _pair(est, truth)
    peak = t.max(axis=(-2, -1))
    mse = np.mean((e - t) ** 2, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 10.0 * np.log10(peak**2 / mse)
    values = np.where(peak > 0, values, np.nan)
    return _out(values, single)


def ssim(est: np.ndarray, truth: np.ndarray, data_range=None):
    """Mean structural similarity per stamp (1 for identical images).

    Gaussian window sigma 1.5 px (truncated at 3.5 sigma, reflecting borders), K1 = 0.01,
    K2 = 0.03, population (co)variances; the SSIM map is averaged over pixels at least
    5 px from the border. ``data_range`` defaults to max(truth) − min(truth) of each
    stamp (scalar or (B,) to override); a zero range gives NaN unless the images agree.
    Matches ``skimage.metrics.structural_similarity(truth_b, est_b, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)`` stamp by stamp.
    """
    e, t, single = _pair(est, truth)
    B, ny, nx = t.shape
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(ny, nx) < 2 * pad + 1:
        raise ValueError(f"ssim needs stamps of at least {2 * pad + 1}×{2 * pad + 1} pixels, got {ny}×{nx}")
    if data_range is None:
        rng = t.max(axis=(-2, -1)) - t.min(axis=(-2, -1))
    else:
        rng = _per_stamp(data_range, B, "data_range")
    c1 = ((SSIM_K1 * rng) ** 2)[:, None, None]
    c2 = ((SSIM_K2 * rng) ** 2)[:, None, None]

    def filt(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect", axes=(-2, -1))

    ux, uy = filt(t), filt(e)
    vx = filt(t * t) - ux * ux
    vy = filt(e * e) - uy * uy
    vxy = filt(t * e) - ux * uy
    with np.errstate(divide="ignore", invalid="ignore"):
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    values = s[:, pad : ny - pad, pad : nx - pad].mean(axis=(-2, -1), dtype=np.float64)
    return _out(values, single)


def flux_error(est: np.ndarray, truth: np.ndarray):
    """Relative flux error (Σ est − Σ truth) / Σ truth per stamp."""
    e, t, single = _pair(est, truth)
    ft = t.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (e.sum(axis=(-2, -1)) - ft) / ft
    return _out(values, single)


def rms_size(images: np.ndarray) -> np.ndarray:
    """Unweighted rms radius per axis, sqrt(Σ r² I⁺ / (2 Σ I⁺)) in pixels, of the positive
    part I⁺ of each stamp about its unweighted centroid ((B,); NaN without positive flux)."""
    im = np.clip(_stack(images, "images"), 0.0, None)
    _, ny, nx = im.shape
    y = np.arange(ny, dtype=np.float64)[:, None]
    x = np.arange(nx, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = im.sum(axis=(-2, -1))
        cx = (im * x).sum(axis=(-2, -1)) / f
        cy = (im * y).sum(axis=(-2, -1)) / f
        r2 = (x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2
        return np.sqrt((im * r2).sum(axis=(-2, -1)) / (2 * f))


def default_weight_sigma(truth: np.ndarray) -> np.ndarray:
    """Centroid weight sigma (pixels) per stamp: 2 × :func:`rms_size` of the truth,
    clipped to [1, n/4]; n/4 where the truth has no positive flux."""
    t = _stack(truth, "truth")
    n = min(t.shape[-2:])
    size = rms_size(t)
    size = np.where(np.isfinite(size), size, n / 8.0)
    return np.clip(2.0 * size, 1.0, n / 4.0)


def weighted_centroids(images: np.ndarray, weight_sigma, n_iter: int = CENTROID_ITERATIONS) -> np.ndarray:
    """Adaptive Gaussian-weighted centroids (x=col, y=row), 0-based pixels, shape (B, 2).

    The centroid c solves c = Σ r w(r − c) I / Σ w(r − c) I with a round Gaussian weight
    w of sigma ``weight_sigma`` (pixels, scalar or (B,)), by ``n_iter`` fixed-point
    iterations from the stamp centre (n//2, n//2). For a profile symmetric about its
    centre the fixed point is that centre, whatever the weight; the weight keeps the noise
    of the sky out. NaN where the weighted flux is not positive or a pixel is non-finite.
    """
    im = _stack(images, "images")
    B, ny, nx = im.shape
    sig = _per_stamp(weight_sigma, B, "weight_sigma")[:, None, None]
    y = np.arange(ny, dtype=np.float64)[None, :, None]
    x = np.arange(nx, dtype=np.float64)[None, None, :]
    cx = np.full((B, 1, 1), float(nx // 2))
    cy = np.full((B, 1, 1), float(ny // 2))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(max(int(n_iter), 1)):
            # separable weight: exp(-dx²/2s²) · exp(-dy²/2s²)
            wx = np.exp(-0.5 * ((x - cx) / sig) ** 2)  # (B, 1, nx)
            wy = np.exp(-0.5 * ((y - cy) / sig) ** 2)  # (B, ny, 1)
            wi = im * wy * wx
            f = wi.sum(axis=(-2, -1), keepdims=True)
            new_cx = (wi * x).sum(axis=(-2, -1), keepdims=True) / f
            new_cy = (wi * y).sum(axis=(-2, -1), keepdims=True) / f
            bad = ~(np.isfinite(new_cx) & np.isfinite(new_cy) & (f > 0))
            cx = np.where(bad, np.nan, new_cx)
            cy = np.where(bad, np.nan, new_cy)
    return np.stack([cx[:, 0, 0], cy[:, 0, 0]], axis=-1)


def centroid_error(est: np.ndarray, truth: np.ndarray, weight_sigma=None, n_iter: int = CENTROID_ITERATIONS):
    """Distance (pixels) between the adaptive Gaussian-weighted centroids of est and truth.

    Both use the same weight sigma per stamp: ``weight_sigma`` (pixels, scalar or (B,)),
    by default 2 × the truth's unweighted rms radius, clipped to [1, n/4] (see
    :func:`default_weight_sigma`): wide enough to see the whole galaxy, narrow enough to
    ignore most of the sky noise of an estimate.
    """
    e, t, single = _pair(est, truth)
    sig = default_weight_sigma(t) if weight_sigma is None else _per_stamp(weight_sigma, t.shape[0], "weight_sigma")
    ce = weighted_centroids(e, sig, n_iter)
    ct = weighted_centroids(t, sig, n_iter)
    values = np.hypot(ce[:, 0] - ct[:, 0], ce[:, 1] - ct[:, 1])
    return _out(values, single)
