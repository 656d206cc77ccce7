"""Per-stamp, invertible input normalisation (framework-neutral numpy).

No dataset statistics are used: every stamp is normalised on its own, so a trained
model applies to any flux and noise level.

* image scale ``s`` (one number per stamp)::

      s = max(peak of the 3x3 box-smoothed observed image, noise_sigma)

  i.e. roughly the peak surface brightness of the galaxy, floored at the noise level
  so that pure-noise stamps are not blown up. ``x = observed / s`` is O(1), and the
  network is trained to output ``truth / s``; :func:`denormalise` multiplies back.
  Any positive ``s`` makes the map invertible; a stamp with no usable signal and no
  noise (all zeros, or a non-finite ``s``) gets ``s = 1``.
* PSF: ``psf / max(psf)`` (peak 1). This is a fixed rescaling of an image summing to
  1, *not* a z-score: shape and compactness are preserved (its sum is 1 / peak).
* noise: ``log10(max(noise_sigma / s, NOISE_FLOOR))``; noiseless stamps read
  ``log10(NOISE_FLOOR) = -4``, the noisiest (noise comparable to the peak) about 0.
"""

from __future__ import annotations

import numpy as np

NOISE_FLOOR = 1e-4


def _as_batch(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (B, n, n) or (n, n), got {a.shape}")
    return a


def box3_peak(images: np.ndarray) -> np.ndarray:
    """Maximum of the 3x3 box mean of each (B, H, W) image (edges zero-padded)."""
    x = np.asarray(images, dtype=np.float64)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    acc = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            acc += padded[:, dy : dy + h, dx : dx + w]
    return (acc / 9.0).reshape(len(x), -1).max(axis=1)


def image_scale(observed: np.ndarray, noise_sigma: np.ndarray | float) -> np.ndarray:
    """The per-stamp scale ``s`` (B,) float64, always finite and > 0."""
    observed = _as_batch(observed, "observed")
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (len(observed),))
    sigma = np.where(np.isfinite(sigma), sigma, 0.0)
    s = np.maximum(box3_peak(observed), sigma)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def normalise(observed, psf, noise_sigma):
    """Normalise a batch for the network.

    Parameters: ``observed`` (B, n, n), ``psf`` (B, n, n) (or (n, n) for one stamp),
    ``noise_sigma`` (B,) or scalar.

    Returns ``(x, psf_in, noise_in, scale)``: ``x`` (B, n, n) float32 = observed / s,
    ``psf_in`` (B, n, n) float32 = psf / max(psf), ``noise_in`` (B,) float32 =
    log10(max(noise_sigma / s, NOISE_FLOOR)), ``scale`` (B,) float64 = s.
    """
    observed = _as_batch(observed, "observed")
    psf = _as_batch(psf, "psf")
    if psf.shape != observed.shape:
        raise ValueError(f"psf shape {psf.shape} differs from observed shape {observed.shape}")
    b = len(observed)
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (b,))
    scale = image_scale(observed, sigma)
    x = (observed / scale[:, None, None]).astype(np.float32)
    peak = np.asarray(psf, dtype=np.float64).reshape(b, -1).max(axis=1)
    peak = np.where(np.isfinite(peak) & (peak > 0), peak, 1.0)
    psf_in = (psf / peak[:, None, None]).astype(np.float32)
    rel = np.where(np.isfinite(sigma), np.maximum(sigma, 0.0), 0.0) / scale
    noise_in = np.log10(np.maximum(rel, NOISE_FLOOR)).astype(np.float32)
    return x, psf_in, noise_in, scale


def normalise_target(truth: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``truth / s`` as float32: the training target matching :func:`normalise`."""
    truth = _as_batch(truth, "truth")
    return (truth / np.asarray(scale, dtype=np.float64)[:, None, None]).astype(np.float32)


def denormalise(y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of the image normalisation: ``y * s`` (B, n, n) float64."""
    y = _as_batch(y, "y")
    return np.asarray(y, dtype=np.float64) * np.asarray(scale, dtype=np.float64)[:, None, None]
