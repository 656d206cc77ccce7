"""Shared Fourier helpers of the classical baselines (batched, float64).

Conventions
-----------
* Stamps are (B, n, n) arrays indexed (row=y, col=x). Every profile (galaxy, PSF,
  target) is centred on pixel (n//2, n//2), 0-based, which is the FFT origin after
  ``numpy.fft.ifftshift``; this holds for even and odd n.
* Work is done on a zero-padded N×N grid (N >= n, see :func:`padded_size`): a stamp is
  embedded so that its pixel (n//2, n//2) lands on (N//2, N//2), and cropped back the
  same way, so positions are preserved for any parities of n and N.
* Transforms are unnormalised real FFTs over the last two axes (``scipy.fft.rfft2``):
  a stamp's transform at k = 0 is its sum (flux); a PSF that sums to 1 has OTF(0) = 1.
* Frequencies ``f`` are in cycles/pixel (Nyquist = 0.5). A transfer function is the
  continuous Fourier transform of a profile, evaluated at the DFT frequencies; e.g. the
  pixel (top-hat of width 1 pixel) has ``sinc(fx) sinc(fy)`` with numpy's normalised
  ``sinc(x) = sin(pi x)/(pi x)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

#: threads used by scipy.fft (-1: all cores)
FFT_WORKERS = -1


def as_stack(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Return ``images`` as a C-contiguous float64 (B, n, n) array ((n, n) -> (1, n, n))."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} must have shape (B, n, n), got {arr.shape}")
    return np.ascontiguousarray(arr)


def padded_size(n: int, pad_factor: float) -> int:
    """Side N >= pad_factor·n of the padded grid, rounded up to a fast FFT length."""
    if pad_factor < 1:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    return int(sfft.next_fast_len(int(math.ceil(pad_factor * n)), real=True))


def _offset(n: int, N: int) -> int:
    return N // 2 - n // 2


def pad_centered(images: np.ndarray, N: int) -> np.ndarray:
    """Zero-pad (B, n, n) to (B, N, N) with pixel (n//2, n//2) moved to (N//2, N//2)."""
    B, n, _ = images.shape
    if N == n:
        return np.array(images, dtype=np.float64, copy=True)
    out = np.zeros((B, N, N), dtype=np.float64)
    o = _offset(n, N)
    out[:, o : o + n, o : o + n] = images
    return out


def crop_centered(images: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pad_centered`: the (B, n, n) block around (N//2, N//2)."""
    N = images.shape[-1]
    o = _offset(n, N)
    return np.ascontiguousarray(images[..., o : o + n, o : o + n])


def rfft2(x: np.ndarray) -> np.ndarray:
    """Batched unnormalised real FFT over the last two axes."""
    return sfft.rfft2(x, axes=(-2, -1), workers=FFT_WORKERS)


def irfft2(x: np.ndarray, N: int) -> np.ndarray:
    """Inverse of :func:`rfft2` for an (…, N, N) real array."""
    return sfft.irfft2(x, s=(N, N), axes=(-2, -1), workers=FFT_WORKERS)


def otf(psf: np.ndarray, N: int) -> np.ndarray:
    """Optical transfer function (B, N, N//2+1) of centred (B, n, n) kernels on the N-grid.

    The kernel is padded centred and ``ifftshift``-ed so that its centre pixel is the
    FFT origin: a symmetric kernel has a real OTF, and convolving with it does not shift.
    """
    padded = pad_centered(as_stack(psf, "psf"), N)
    return rfft2(np.fft.ifftshift(padded, axes=(-2, -1)))


@lru_cache(maxsize=32)
def _freqs(N: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(N)[:, None]
    fx = np.fft.rfftfreq(N)[None, :]
    fy.setflags(write=False)
    fx.setflags(write=False)
    return fy, fx


def freq_grids(N: int) -> tuple[np.ndarray, np.ndarray]:
    """(fy, fx) broadcastable grids (N, 1) and (1, N//2+1), cycles/pixel, rfft layout."""
    return _freqs(N)


def radial_freq(N: int) -> np.ndarray:
    """|f| (cycles/pixel) on the (N, N//2+1) rfft grid."""
    fy, fx = _freqs(N)
    return np.hypot(fy, fx)


def pixel_transfer(N: int) -> np.ndarray:
    """Transfer function of the square pixel (top-hat of width 1 pixel): sinc(fx)·sinc(fy)."""
    fy, fx = _freqs(N)
    return np.sinc(fy) * np.sinc(fx)


def gaussian_transfer(N: int, sigma_pixels: float) -> np.ndarray:
    """Transfer function exp(-2 pi² sigma² |f|²) of a unit-flux round Gaussian (sigma in pixels)."""
    fy, fx = _freqs(N)
    return np.exp(-2.0 * math.pi**2 * sigma_pixels**2 * (fy**2 + fx**2))


def target_sigma_pixels(target_fwhm_arcsec: float, pixel_scale_arcsec: float) -> float:
    """Gaussian sigma (pixels) of the target PSF of FWHM ``target_fwhm_arcsec``."""
    return float(target_fwhm_arcsec) * FWHM_TO_SIGMA / float(pixel_scale_arcsec)


def draw_target(N: int, target_fwhm_arcsec: float, pixel_scale_arcsec: float) -> np.ndarray:
    """The target (round Gaussian ⊗ pixel) drawn by GalSim (``method='auto'``) on an
    N×N grid centred on pixel (N//2, N//2), normalised to sum 1."""
    import galsim  # local import: only this option needs it

    offset = (0.5, 0.5) if N % 2 == 0 else (0.0, 0.0)
    image = galsim.Gaussian(fwhm=float(target_fwhm_arcsec)).drawImage(
        nx=N, ny=N, scale=float(pixel_scale_arcsec), method="auto", offset=offset
    )
    arr = image.array.astype(np.float64)
    return arr / arr.sum()


@lru_cache(maxsize=32)
def _target_transfer(N: int, fwhm: float, scale: float, kind: str) -> np.ndarray:
    if kind == "analytic":
        out = gaussian_transfer(N, target_sigma_pixels(fwhm, scale)) * pixel_transfer(N)
    elif kind == "drawn":
        kernel = draw_target(N, fwhm, scale)
        out = rfft2(np.fft.ifftshift(kernel)).real  # symmetric kernel: real transform
    else:
        raise ValueError(f"target must be 'analytic' or 'drawn', got {kind!r}")
    out = np.ascontiguousarray(out, dtype=np.float64)
    out.setflags(write=False)
    return out


def target_transfer(N: int, target_fwhm_arcsec: float, pixel_scale_arcsec: float, kind: str = "analytic") -> np.ndarray:
    """Transfer function (N, N//2+1) of the target T = Gaussian(FWHM) ⊗ pixel, real.

    ``kind='analytic'``: exp(-2 pi² sigma² |f|²)·sinc(fx)·sinc(fy), the continuous
    transform (no aliasing). ``kind='drawn'``: the DFT of T drawn by GalSim on the
    N×N grid (includes the aliasing of the sampled kernel). Cached (read-only array).
    """
    return _target_transfer(int(N), float(target_fwhm_arcsec), float(pixel_scale_arcsec), kind)


def convolve(images: np.ndarray, transfer: np.ndarray, pad_factor: float = 2.0) -> np.ndarray:
    """Batched convolution of centred (B, n, n) ``images`` with a kernel given by its
    transfer function on the padded grid (``transfer`` of shape (N, N//2+1) or
    (B, N, N//2+1), N = :func:`padded_size` (n, pad_factor)); returns (B, n, n)."""
    images = as_stack(images)
    n = images.shape[-1]
    N = padded_size(n, pad_factor)
    if transfer.shape[-2:] != (N, N // 2 + 1):
        raise ValueError(f"transfer has shape {transfer.shape}, expected (..., {N}, {N // 2 + 1})")
    out = irfft2(rfft2(pad_centered(images, N)) * transfer, N)
    return crop_centered(out, n)
