"""Direct Fourier deconvolution: D~ = I~ · T~ / P~ (no regularisation but a cut).

``I`` is the observed stamp, ``P`` the effective PSF (sum 1, centred on pixel (n//2, n//2)),
``T`` the target: round Gaussian of FWHM ``batch.target_fwhm_arcsec`` ⊗ pixel. The
result estimates ``truth = galaxy ⊗ T``. Both ``I`` and ``P`` are zero-padded, centred,
to a grid of side N = ``pad_factor``·n (rounded up to a fast FFT length) so that the
deconvolution kernel does not wrap around the stamp, then the result is cropped back to
n×n. Where the PSF transfer function is small, |P~(k)| < ``threshold``·max|P~|, the
ratio T~/P~ is set to 0 (``cut='hard'``) or rolled off smoothly (``cut='taper'``: a
cos² roll-off in log|P~| between ``threshold`` and 4·``threshold``·max|P~|).

This is exact for noiseless, band-limited (well-sampled) images and amplifies noise
without limit otherwise: it is the "no prior" reference of the benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deconvbench import fourier as F
from deconvbench.metacal.psf_fit import unique_stamps
from deconvbench.methods import Batch


def cut_window(otf: np.ndarray, threshold: float, cut: str) -> np.ndarray:
    """Weight in [0, 1] applied to T~/P~ given the per-stamp OTF (B, N, N//2+1)."""
    mag = np.abs(otf)
    ref = threshold * mag.max(axis=(-2, -1), keepdims=True)
    if cut == "hard":
        return (mag >= ref).astype(np.float64)
    if cut == "taper":
        # 0 below ref, 1 above 4·ref, cos² in log|P~| in between
        with np.errstate(divide="ignore"):
            t = np.clip(np.log(np.maximum(mag, 1e-300) / ref) / np.log(4.0), 0.0, 1.0)
        return np.sin(0.5 * np.pi * t) ** 2
    raise ValueError(f"cut must be 'hard' or 'taper', got {cut!r}")


class FFTDeconvolver:
    """Direct Fourier division by the PSF, times the target transfer function."""

    description = "Direct Fourier deconvolution I~·T~/P~ with a cut where |P~| is small (no noise model)"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        threshold: float = 1e-3,
        pad_factor: float = 2.0,
        cut: str = "hard",
        target: str = "analytic",
        precision: str = "float64",
        name: str = "fft",
    ):
        """
        Parameters
        ----------
        threshold : relative cut on |P~| (default 1e-3 of the stamp's max |P~|, i.e. of
            its flux 1); frequencies below it are zeroed (or tapered).
        pad_factor : the padded FFT grid has side >= pad_factor·n (default 2).
        cut : ``'hard'`` (default) sets T~/P~ to 0 below the threshold; ``'taper'`` rolls
            it off smoothly between threshold and 4·threshold.
        target : ``'analytic'`` (default) Gaussian × pixel sinc transfer function, or
            ``'drawn'``: the DFT of the target drawn by GalSim on the padded grid.
        precision : ``'float64'`` (default) or ``'float32'``: the dtype of the FFTs (the
            transfer function is computed in float64 either way; the output is float64).
            float32 transforms cost about half as much; their rounding (~1e-7 of the
            stamp's largest Fourier mode, amplified by 1/|P~| ≤ 1/threshold) stays at high k.
        """
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if cut not in ("hard", "taper"):
            raise ValueError(f"cut must be 'hard' or 'taper', got {cut!r}")
        if target not in ("analytic", "drawn"):
            raise ValueError(f"target must be 'analytic' or 'drawn', got {target!r}")
        if precision not in ("float64", "float32"):
            raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
        F.padded_size(8, pad_factor)  # validates pad_factor
        self.threshold = float(threshold)
        self.pad_factor = float(pad_factor)
        self.cut = cut
        self.target = target
        self.precision = precision
        self.name = name
        self.device = "cpu"

    def params(self) -> dict[str, Any]:
        params = {"threshold": self.threshold, "pad_factor": self.pad_factor, "cut": self.cut, "target": self.target}
        if self.precision != "float64":  # the default is not recorded: older result files stay comparable
            params["precision"] = self.precision
        return params

    def deconvolve(self, batch: Batch) -> np.ndarray:
        """Estimate of ``truth`` for each stamp: float64 (B, n, n), same flux units."""
        obs = F.as_stack(batch.observed, "observed")
        n = obs.shape[-1]
        N = F.padded_size(n, self.pad_factor)
        dtype = np.float32 if self.precision == "float32" else np.float64
        spectrum = F.rfft2_padded(obs, N, dtype=dtype)
        unique, inverse = self._unique_transfer(batch, N)
        unique = unique.astype(spectrum.dtype, copy=False)
        per_psf = len(inverse) // max(len(unique), 1)
        if per_psf * len(unique) == len(inverse) and np.array_equal(inverse, np.arange(len(inverse)) // per_psf):
            # stamps of a PSF are consecutive runs of equal length (metacal groups): multiply
            # in place by broadcasting, without a (B, N, N//2+1) copy of the transfer functions
            grouped = spectrum.reshape((len(unique), per_psf) + spectrum.shape[1:])
            grouped *= unique[:, None]
        else:
            spectrum *= unique[inverse]
        return F.irfft2_cropped(spectrum, N, n, overwrite=True).astype(np.float64, copy=False)

    def transfer(self, batch: Batch, N: int) -> np.ndarray:
        """``window · T~/P~`` per stamp ``(B, N, N//2+1)``, computed once per distinct PSF
        image (stamps of a metacal group share theirs); the same numbers as per stamp."""
        unique, inverse = self._unique_transfer(batch, N)
        return unique[inverse]

    def _unique_transfer(self, batch: Batch, N: int) -> tuple[np.ndarray, np.ndarray]:
        """``window · T~/P~`` of each distinct PSF image ``(U, N, N//2+1)`` and the map
        ``(B,)`` from stamps to them."""
        psf = F.as_stack(batch.psf, "psf")
        first, inverse = unique_stamps(psf)
        P = F.otf(psf[first], N)
        T = F.target_transfer(N, batch.target_fwhm_arcsec, batch.pixel_scale_arcsec, self.target)
        window = cut_window(P, self.threshold, self.cut)
        safe = np.where(window > 0, P, 1.0)
        return window * T / safe, inverse
