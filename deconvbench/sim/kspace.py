"""Fourier-space stamp drawing: the pure array math of the fast renderer.

Conventions. A stamp is n×n pixels of ``pixel_scale`` arcsec, the profile centre on
pixel (n//2, n//2) (0-based row, col). Drawing happens on a padded periodic grid of
N×N pixels (N ≥ pad_factor·n, see :func:`padded_size`) so that flux wrapping around the
grid edge stays far below the stamp's peak. Its Fourier grid has spacing
``dk = 2π/(N·pixel_scale)`` (radians/arcsec); k-images are drawn out to ``m`` times the
pixel Nyquist frequency π/pixel_scale on an M = m·N grid and *folded* (aliased) back to
N×N before the inverse FFT, which is exactly what sampling the continuous profile at
the pixel centres does (GalSim's ``drawImage`` folds the same way).

Layouts. A *half* k-image has shape (..., M, M//2+1): rows ky = (r − M//2)·dk
(centred), columns kx = c·dk for c = 0…M//2 (the profile is real, so the other half is
the complex conjugate). Values follow GalSim: F(k) = ∫ f(x) exp(−i k·x) d²x, F(0) = flux.
With the pixel response included, ``irfft2`` of the folded transform gives counts per
pixel (GalSim's ``drawImage`` convention); without it (``no_pixel``) it gives surface
brightness × pixel area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np


def _is_smooth(n: int, primes: tuple[int, ...] = (2, 3, 5)) -> bool:
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def fast_even_length(size: int) -> int:
    """Smallest even N ≥ ``size`` with no prime factor above 7 (a fast FFT length for pocketfft)."""
    n = size + size % 2
    while not _is_smooth(n, (2, 3, 5, 7)):
        n += 2
    return n


def padded_size(stamp_size: int, pad_factor: float) -> int:
    """Smallest even 2·3·5-smooth N ≥ pad_factor × stamp_size (a fast FFT length)."""
    n = max(int(math.ceil(pad_factor * stamp_size)), stamp_size)
    n += n % 2
    while not _is_smooth(n):
        n += 2
    return n


@dataclass(frozen=True)
class KGrid:
    """The padded drawing grid of one stamp geometry."""

    stamp_size: int
    pixel_scale: float
    pad_size: int

    @property
    def dk(self) -> float:
        """Fourier grid spacing (radians/arcsec)."""
        return 2.0 * math.pi / (self.pad_size * self.pixel_scale)

    @property
    def nyquist(self) -> float:
        """Pixel Nyquist frequency π/pixel_scale (radians/arcsec)."""
        return math.pi / self.pixel_scale

    def fold_factor(self, maxk: float) -> int:
        """Smallest m with m·Nyquist ≥ maxk: the k-grid is M = m·N wide."""
        return max(1, int(math.ceil(maxk / self.nyquist - 1e-9)))


def half_kimage(profile: galsim.GSObject, size: int, dk: float) -> np.ndarray:
    """GalSim's own k-image of ``profile`` on the half grid (size, size//2+1)."""
    image = galsim.ImageCD(galsim.BoundsI(0, size // 2, -(size // 2), size // 2 - 1), scale=dk)
    profile.drawKImage(image=image, recenter=False)
    return image.array


def points_half_kimage(xy: np.ndarray, flux: np.ndarray, size: int, dk: float) -> np.ndarray:
    """Transform of point sources Σ_j flux_j δ(x − xy_j) on the half grid (separable sum)."""
    if len(flux) == 0:
        return np.zeros((size, size // 2 + 1), dtype=np.complex128)
    ky = (np.arange(size) - size // 2) * dk
    kx = np.arange(size // 2 + 1) * dk
    phase_y = np.exp(-1j * np.outer(ky, xy[:, 1])) * flux  # (size, J)
    phase_x = np.exp(-1j * np.outer(kx, xy[:, 0]))  # (size//2+1, J)
    return phase_y @ phase_x.T


def pixel_half_kimage(size: int, dk: float, pixel_scale: float) -> np.ndarray:
    """Transform of the square pixel response (unit flux): sinc(kx·s/2π)·sinc(ky·s/2π)."""
    ky = (np.arange(size) - size // 2) * dk
    kx = np.arange(size // 2 + 1) * dk
    return np.outer(np.sinc(ky * pixel_scale / (2 * np.pi)), np.sinc(kx * pixel_scale / (2 * np.pi)))


def crop_half(half: np.ndarray, size: int) -> np.ndarray:
    """The central (size, size//2+1) part of a larger half k-image (same dk)."""
    big = half.shape[-2]
    if big == size:
        return half
    start = big // 2 - size // 2
    return half[..., start : start + size, : size // 2 + 1]


def embed_half(half: np.ndarray, size: int) -> np.ndarray:
    """A half k-image placed in the centre of a larger (size, size//2+1) grid of zeros."""
    small = half.shape[-2]
    if small == size:
        return half
    out = np.zeros(half.shape[:-2] + (size, size // 2 + 1), dtype=np.complex128)
    start = size // 2 - small // 2
    out[..., start : start + small, : small // 2 + 1] = half
    return out


def support_size(half: np.ndarray, dk: float, threshold: float) -> int:
    """Even width of the smallest centred square holding every |F(k)| > threshold·|F(0)|."""
    size = half.shape[-2]
    amplitude = np.abs(half)
    keep = amplitude > threshold * amplitude[size // 2, 0]
    rows, cols = np.nonzero(keep)
    reach = max(int(np.max(np.abs(rows - size // 2))), int(np.max(cols))) if len(rows) else 0
    return min(size, 2 * (reach + 1))


def fold_to_rfft(half: np.ndarray, pad_size: int) -> np.ndarray:
    """Fold a centred half k-image of any even width S onto the N-periodic grid.

    Returns (..., N, N//2+1) in ``irfft2`` layout: rows in FFT order, columns kx = 0…N//2.
    Every alias k + (a, b)·N·dk with kx in [−S/2, S/2) is summed once (as on a full
    S×S grid); negative kx are read as F(−k) = conj F(k)."""
    size = half.shape[-2]
    n = pad_size
    width = half.shape[-1]  # size//2 + 1
    # rows: centred row r holds ky = r − S/2, i.e. FFT row (r − S/2) mod N
    rows = np.zeros(half.shape[:-2] + (n, width), dtype=np.complex128)
    r = 0
    while r < size:
        target = (r - size // 2) % n
        length = min(n - target, size - r)
        rows[..., target : target + length, :] += half[..., r : r + length, :]
        r += length
    out = np.zeros(half.shape[:-2] + (n, n // 2 + 1), dtype=np.complex128)
    flip = (n - np.arange(n)) % n  # FFT row of −ky
    a = 0
    while a * n - n // 2 <= size // 2:
        lo, hi = a * n, min(a * n + n // 2 + 1, size // 2)  # kx = c + aN < S/2
        if hi > lo:
            out[..., : hi - lo] += rows[..., lo:hi]
        if a >= 1:  # kx = −(aN − c) ≥ −S/2, read at +(aN − c) and −ky
            cmin = max(0, a * n - size // 2)
            block = rows[..., a * n - n // 2 : a * n - cmin + 1][..., flip, ::-1]
            out[..., cmin : n // 2 + 1] += np.conj(block)
        a += 1
    return out


def profile_samples(fine_half: np.ndarray) -> np.ndarray:
    """Real-space samples (L, L) of a profile from its centred half k-image (L, L//2+1), the
    origin on sample (L//2, L//2): the profile aliased with the period of that k-step, as
    ``irfft2`` gives it (the input of :func:`cut_half`)."""
    size = fine_half.shape[-2]
    samples = np.fft.irfft2(np.fft.ifftshift(fine_half, axes=-2), s=(size, size), axes=(-2, -1))
    return np.fft.fftshift(samples, axes=(-2, -1))


def cut_half(samples: np.ndarray, width: int) -> np.ndarray:
    """The centred half k-image (width, width//2+1) of ``samples`` (from :func:`profile_samples`)
    cut to their central width × width: the profile truncated to that square, its transform
    on the k-step of that period (the same normalisation for every width)."""
    centre = samples.shape[-1] // 2
    block = samples[..., centre - width // 2 : centre + width // 2, centre - width // 2 : centre + width // 2]
    return np.fft.fftshift(np.fft.rfft2(np.fft.ifftshift(block, axes=(-2, -1)), axes=(-2, -1)), axes=-2)


def truncated_half(fine_half: np.ndarray, support: int) -> np.ndarray:
    """The transform of a profile cut to one period of the padded grid, on that grid's k-step.

    ``fine_half``: the profile's centred half k-image (4S, 2S+1) on a 4× finer k-step dk/4
    (so that its real-space period is 4× the padded grid's: the profile barely wraps), out to
    the same reach as the kernel, S = ``support`` modes of dk. Its real-space samples (step:
    padded grid / S) are cut to the central S × S of them, one padded grid period, and
    transformed back: the centred half (S, S//2+1) at dk. A galaxy ⊗ this kernel on the
    periodic padded grid is GalSim's galaxy ⊗ profile at every pixel for the galaxy light
    within half a period of it, with nothing wrapped in from beyond (its value at k = 0 is
    the profile's flux within the period: the rest falls outside any stamp). The same
    samples cut to 2S or 4S give the kernel of a 2× or 4× padded grid (:func:`cut_half`)."""
    return cut_half(profile_samples(fine_half), support)


def to_stamps(folded: np.ndarray, pad_size: int, stamp_size: int) -> np.ndarray:
    """Inverse FFT of folded transforms and crop to n×n with the origin on pixel (n//2, n//2).

    ``np.fft.irfft2`` is the inverse FFT along y of every column, then along x of every
    row; here the x transforms run on the n kept rows only: the same numbers to the bit
    (tested), without the N − n rows the crop drops."""
    idx = (np.arange(stamp_size) - stamp_size // 2) % pad_size
    columns = np.fft.ifft(folded, n=pad_size, axis=-2)
    return np.fft.irfft(columns[..., idx, :], n=pad_size, axis=-1)[..., idx]
