"""The Fourier grid of the project: padding, transforms, wavenumbers, kernel transforms.

One convention for every Fourier computation (the deconvolution baselines and the
metacal shear/reconvolution step):

* Stamps are ``(B, n, n)`` arrays indexed (row=y, col=x). Every profile is centred on
  pixel ``(n//2, n//2)`` (0-based), the FFT origin after ``numpy.fft.ifftshift``, for
  even and odd n.
* Work is done on a zero-padded ``N × N`` grid (:func:`padded_size`): a stamp is
  embedded so that its pixel ``(n//2, n//2)`` lands on ``(N//2, N//2)``
  (:func:`pad_centered`) and cropped back the same way (:func:`crop_centered`).
* Transforms are unnormalised real FFTs over the last two axes (``scipy.fft.rfft2``,
  numpy's sign ``f~(k) = Σ f(x) exp(−i k·x)``): a stamp's transform at k = 0 is its sum
  (flux); a PSF that sums to 1 has OTF(0) = 1.
* **Wavenumbers are angular, in rad/arcsec**: ``k = 2π · fftfreq(N, d=pixel_scale)``
  with ``pixel_scale`` in arcsec/pixel (Nyquist ``π/pixel_scale``). Pass
  ``pixel_scale=1`` for rad/pixel. :func:`k_grid` gives ``(ky, kx)`` broadcastable in
  the rfft layout ``(N, N//2+1)``.
* A transfer function is the continuous Fourier transform of a unit-flux profile at
  those wavenumbers: a round Gaussian of FWHM w has ``exp(−σ²|k|²/2)``, σ = w/2.3548
  (:func:`gaussian_ft`); the square pixel has ``sinc(kx p/2π) sinc(ky p/2π)`` with
  numpy's normalised sinc (:func:`pixel_ft`). Both accept a matrix M to evaluate at
  ``q = Mᵀk`` (the transform of the profile sheared by M).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.35482...

#: threads of scipy.fft where a caller leaves ``workers=None`` (-1: all cores); a worker
#: process of an executor sets it to its thread budget (:func:`set_fft_threads`)
_fft_threads = -1


def set_fft_threads(threads: int) -> None:
    """Threads of every scipy.fft call that leaves ``workers=None`` in this process (-1: all
    cores). The executors' worker processes set their ``--blas-threads`` here, so two
    workers on two cores do not each start one FFT thread per core."""
    global _fft_threads
    _fft_threads = int(threads)


def fft_threads(workers: int | None = None) -> int:
    """``workers`` if given, else the process's FFT thread count (:func:`set_fft_threads`)."""
    return _fft_threads if workers is None else workers


def as_stack(images, name: str = "images") -> np.ndarray:
    """``images`` as a C-contiguous float64 ``(B, n, n)`` array ((n, n) → (1, n, n));
    ValueError for any other shape."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} must have shape (B, n, n), got {arr.shape}")
    return np.ascontiguousarray(arr)


def padded_size(n: int, pad_factor: float) -> int:
    """Side ``N ≥ pad_factor · n`` of the padded grid: the next even fast FFT length."""
    if not pad_factor >= 1:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    size = int(sfft.next_fast_len(int(math.ceil(pad_factor * n)), real=True))
    while size % 2:
        size = int(sfft.next_fast_len(size + 1, real=True))
    return size


def pad_centered(images: np.ndarray, N: int) -> np.ndarray:
    """Zero-pad ``(B, n, n)`` to ``(B, N, N)`` with pixel (n//2, n//2) moved to (N//2, N//2)."""
    b, n = images.shape[0], images.shape[-1]
    if n == N:
        return np.array(images, dtype=np.float64, copy=True)
    out = np.zeros((b, N, N), dtype=np.float64)
    o = N // 2 - n // 2
    out[:, o : o + n, o : o + n] = images
    return out


def crop_centered(images: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pad_centered`: the ``(B, n, n)`` block around (N//2, N//2)."""
    o = images.shape[-1] // 2 - n // 2
    return np.ascontiguousarray(images[..., o : o + n, o : o + n])


def rfft2(x: np.ndarray, workers=None) -> np.ndarray:
    """Batched unnormalised real FFT over the last two axes."""
    return sfft.rfft2(x, axes=(-2, -1), workers=fft_threads(workers))


def irfft2(x: np.ndarray, N: int, workers=None) -> np.ndarray:
    """Inverse of :func:`rfft2` for an ``(…, N, N)`` real array."""
    return sfft.irfft2(x, s=(N, N), axes=(-2, -1), workers=fft_threads(workers))


def rfft2_padded(images: np.ndarray, N: int, workers=None, dtype=np.float64) -> np.ndarray:
    """``rfft2(pad_centered(images, N))`` ``(B, N, N//2+1)`` without transforming the zero
    rows: the x transforms run on the n stamp rows only, then one y transform per column.
    ``dtype`` float32 gives complex64 (half the memory traffic, ~1e-7 relative rounding)."""
    images = np.asarray(images)
    workers = fft_threads(workers)
    b, n = images.shape[0], images.shape[-1]
    o = N // 2 - n // 2
    rows = np.zeros((b, n, N), dtype=dtype)
    rows[:, :, o : o + n] = images
    half = sfft.rfft(rows, axis=-1, workers=workers)
    full = np.zeros((b, N, N // 2 + 1), dtype=half.dtype)
    full[:, o : o + n] = half
    return sfft.fft(full, axis=-2, workers=workers, overwrite_x=True)


def irfft2_cropped(spectrum: np.ndarray, N: int, n: int, workers=None, overwrite: bool = False) -> np.ndarray:
    """``crop_centered(irfft2(spectrum, N), n)`` ``(B, n, n)`` without the rows and columns
    that the crop drops: one y transform per column, x transforms on the kept rows only.
    ``overwrite``: the y transforms may run in place in ``spectrum`` (a caller's scratch
    array): the same numbers, and about half the time of writing them to a new array
    (scipy's strided transforms along the y axis)."""
    workers = fft_threads(workers)
    o = N // 2 - n // 2
    half = sfft.ifft(spectrum, axis=-2, workers=workers, overwrite_x=overwrite)[:, o : o + n]
    return np.ascontiguousarray(sfft.irfft(half, n=N, axis=-1, workers=workers)[:, :, o : o + n])


def otf(psf: np.ndarray, N: int) -> np.ndarray:
    """Optical transfer function ``(B, N, N//2+1)`` of centred ``(B, n, n)`` kernels on
    the N-grid (padded centred and ``ifftshift``-ed so that the centre pixel is the FFT
    origin: a symmetric kernel has a real OTF and convolving with it does not shift)."""
    padded = pad_centered(as_stack(psf, "psf"), N)
    return rfft2(np.fft.ifftshift(padded, axes=(-2, -1)))


@lru_cache(maxsize=64)
def _k_grid(N: int, pixel_scale: float, real: bool) -> tuple[np.ndarray, np.ndarray]:
    ky = 2.0 * np.pi * np.fft.fftfreq(N, d=pixel_scale)[:, None]
    kx = 2.0 * np.pi * (np.fft.rfftfreq(N, d=pixel_scale) if real else np.fft.fftfreq(N, d=pixel_scale))[None, :]
    ky.setflags(write=False)
    kx.setflags(write=False)
    return ky, kx


def k_grid(N: int, pixel_scale: float, real: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers (rad/arcsec) of an ``N × N`` FFT grid as broadcastable read-only
    ``(ky, kx)``: ``ky`` (N, 1) from ``fftfreq``, ``kx`` (1, N//2+1) from ``rfftfreq``
    (the ``rfft2`` layout) when ``real`` else (1, N)."""
    return _k_grid(int(N), float(pixel_scale), bool(real))


def radial_wavenumber(N: int, pixel_scale: float) -> np.ndarray:
    """``|k|`` (rad/arcsec) on the ``(N, N//2+1)`` rfft grid."""
    ky, kx = k_grid(N, pixel_scale)
    return np.hypot(ky, kx)


def _transform_k(kx, ky, matrix):
    """``q = Mᵀ k`` componentwise (``matrix`` None: identity)."""
    if matrix is None:
        return kx, ky
    m = np.asarray(matrix, dtype=np.float64)
    return m[0, 0] * kx + m[1, 0] * ky, m[0, 1] * kx + m[1, 1] * ky


def per_stamp(value, ndim: int) -> np.ndarray:
    """Scalar or (B,) → array broadcastable against (B, …) arrays with ``ndim`` trailing dims."""
    value = np.asarray(value, dtype=np.float64)
    return value.reshape(value.shape + (1,) * ndim)


def gaussian_ft(kx, ky, fwhm_arcsec, matrix=None) -> np.ndarray:
    """Transform of a unit-flux round Gaussian of FWHM ``fwhm_arcsec`` (scalar or (B,)) at
    ``q = Mᵀk``: ``exp(−σ²|q|²/2)``, σ = FWHM/2.3548. With M = S (a shear matrix) this is
    the transform of the sheared Gaussian. Shape ``broadcast(kx, ky)``, prefixed by (B,)
    for array FWHMs."""
    qx, qy = _transform_k(kx, ky, matrix)
    sigma = per_stamp(fwhm_arcsec, np.ndim(qx + qy)) / FWHM_PER_SIGMA
    return np.exp(-0.5 * sigma**2 * (qx**2 + qy**2))


def pixel_ft(kx, ky, pixel_scale: float, matrix=None) -> np.ndarray:
    """Transform of the unit-flux square pixel (top-hat of width ``pixel_scale`` arcsec) at
    ``q = Mᵀk``: ``sinc(qx p/2π) · sinc(qy p/2π)`` (numpy's normalised sinc)."""
    qx, qy = _transform_k(kx, ky, matrix)
    return np.sinc(qx * pixel_scale / (2.0 * np.pi)) * np.sinc(qy * pixel_scale / (2.0 * np.pi))


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
        ky, kx = k_grid(N, scale)
        out = gaussian_ft(kx, ky, fwhm) * pixel_ft(kx, ky, scale)
    elif kind == "drawn":
        out = rfft2(np.fft.ifftshift(draw_target(N, fwhm, scale))).real  # symmetric kernel: real
    else:
        raise ValueError(f"target must be 'analytic' or 'drawn', got {kind!r}")
    out = np.ascontiguousarray(out, dtype=np.float64)
    out.setflags(write=False)
    return out


def target_transfer(N: int, target_fwhm_arcsec: float, pixel_scale_arcsec: float, kind: str = "analytic") -> np.ndarray:
    """Transfer function ``(N, N//2+1)`` of the target T = Gaussian(FWHM) ⊗ pixel, real.

    ``kind='analytic'``: ``gaussian_ft · pixel_ft``, the continuous transform (no
    aliasing). ``kind='drawn'``: the DFT of T drawn by GalSim on the N×N grid (includes
    the aliasing of the sampled kernel). Cached (read-only array)."""
    return _target_transfer(int(N), float(target_fwhm_arcsec), float(pixel_scale_arcsec), kind)


def convolve(images: np.ndarray, transfer: np.ndarray, pad_factor: float = 2.0) -> np.ndarray:
    """Batched convolution of centred ``(B, n, n)`` images with a kernel given by its
    transfer function on the padded grid (``(N, N//2+1)`` or ``(B, N, N//2+1)``,
    N = :func:`padded_size` (n, pad_factor)); returns ``(B, n, n)``."""
    images = as_stack(images)
    n = images.shape[-1]
    N = padded_size(n, pad_factor)
    if transfer.shape[-2:] != (N, N // 2 + 1):
        raise ValueError(f"transfer has shape {transfer.shape}, expected (..., {N}, {N // 2 + 1})")
    return crop_centered(irfft2(rfft2(pad_centered(images, N)) * transfer, N), n)
