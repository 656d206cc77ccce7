"""Richardson-Lucy deconvolution (batched FFT convolutions), reconvolved with the target.

RL deconvolves the observed stamp ``y`` to a *delta* PSF: the estimate ``x >= 0`` of the
pixel-sampled galaxy is updated multiplicatively, ``niter`` times (default 30)::

    model = P ⊗ x + b
    x    <- x · [P* ⊗ (M · y' / model)] / [P* ⊗ M]

where ``P*`` is the flipped PSF (its conjugate transform), ``M`` the mask of the observed
pixels inside the zero-padded FFT grid (pixels outside the stamp, and non-finite pixels of
``y``, carry no data: this "masked" RL has no wrap-around and no edge darkening; ``x`` is
kept to the n×n stamp). The final ``x`` is convolved with the target ``T`` (Gaussian ⊗
pixel, analytic transfer function), so that the result estimates ``truth = galaxy ⊗ T``.

Positivity and noise. RL needs non-negative data. Noisy stamps are white-noise fields of
standard deviation ``sigma`` around zero in the sky, and clipping them at zero would add
a large positive flux (about 0.4 sigma per sky pixel). Instead a pedestal
``b = background_sigmas · sigma`` (default 3 sigma) is added to the data and to the model
(the standard RL-with-background), ``y' = max(y + b, floor)``, where ``floor`` is a tiny
positive number (1e-12 of the stamp's peak |y|): only pixels more than 3 sigma below zero
are clipped (0.13 % of sky pixels, a negligible flux bias). Noiseless stamps (sigma = 0)
have b = 0 and only their (numerical) negative pixels clipped. The model is floored the
same way, so zero or negative pixels never produce NaN. RL with a fixed iteration count
is regularised by early stopping only: more iterations sharpen and amplify noise.

Start. RL's multiplicative updates only slowly move flux out of pixels that start high.
From a flat start, the sky keeps a large positive flux after 30 iterations on noisy stamps
(+100 % or more of the galaxy flux at SNR 10-20). The default start is therefore the
thresholded observed image ``x0 = max(y - start_sigmas·sigma, 0) + 1e-3·mean(y)``
(``start='threshold'``, ``start_sigmas = 3``): on ground-, space- and SuperBIT-like
stamps it keeps the median flux error within ~15 % at SNR >= 20 (it loses faint
flux at SNR 10: -15 to -40 %) and gives the lowest NMSE from SNR 40 up. ``start='flat'``
(``x0 = mean(y)``) gives a lower NMSE at SNR 10 for large galaxies but a large flux bias.
For noiseless stamps both starts give similar results.

The PSF is clipped at 0 and renormalised for RL (empirical PSFEx models have small
negative lobes, about -1e-3 of the flux, that would make the model negative).

Optional damping (``damping = T > 0``, White 1994, with a Gaussian-noise residual): the
ratio ``y'/model`` is replaced by ``1 + U~ · (y' - model)/model`` where
``U = ((y' - model)/(T sigma))²`` and ``U~ = U^(K-1) (K - (K-1) U)`` for U < 1, else 1
(K = 10): pixels whose residual is already within ~T sigma stop being updated, which
suppresses the amplification of noise. It has no effect on noiseless stamps.

Precision: the iterations run on stamps scaled to a unit peak, in single precision by
default (float32 FFTs, ~3× faster; results agree with ``precision='double'`` to ~1e-6
relative); the reconvolution with ``T`` and the output are float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deconvbench import fourier as F
from deconvbench.methods import Batch

DAMPING_POWER = 10  # K of White's damping function
FLOOR = 1e-12  # positivity floor of data and model, relative to the stamp's peak |y|


class RichardsonLucyDeconvolver:
    """Richardson-Lucy to a delta PSF with a noise pedestal, reconvolved with the target."""

    description = "Richardson-Lucy (masked, FFT, fixed iterations, noise pedestal), reconvolved with the target PSF"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        niter: int = 30,
        background_sigmas: float = 3.0,
        damping: float = 0.0,
        pad_factor: float = 1.5,
        start: str = "threshold",
        start_sigmas: float = 3.0,
        precision: str = "single",
        name: str = "richardson-lucy",
    ):
        """
        Parameters
        ----------
        niter : number of RL iterations (default 30).
        background_sigmas : pedestal b added to data and model, in units of the stamp's
            noise sigma (default 3); 0 means plain clipping of negative pixels.
        damping : White's damping threshold T in units of sigma (default 0: off).
        pad_factor : the padded FFT grid has side >= pad_factor·n (default 1.5: exact, as
            ``x`` lives in the n×n stamp and the PSF stamp reaches n/2 around its centre,
            so the circular convolutions never wrap onto the stamp).
        start : ``'threshold'`` (default) or ``'flat'`` initial estimate (see the module doc).
        start_sigmas : threshold of the ``'threshold'`` start, in units of sigma (default 3).
        precision : ``'single'`` (default; float32 FFTs, about twice as fast) or ``'double'``
            for the iterations; the stamps are scaled to a unit peak first, and the
            final convolution with the target and the output are float64 either way.
        """
        if int(niter) != niter or niter < 0:
            raise ValueError(f"niter must be a non-negative integer, got {niter}")
        if not background_sigmas >= 0:
            raise ValueError(f"background_sigmas must be >= 0, got {background_sigmas}")
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if start not in ("threshold", "flat"):
            raise ValueError(f"start must be 'threshold' or 'flat', got {start!r}")
        if not start_sigmas >= 0:
            raise ValueError(f"start_sigmas must be >= 0, got {start_sigmas}")
        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        F.padded_size(8, pad_factor)
        self.precision = precision
        self.start = start
        self.start_sigmas = float(start_sigmas)
        self.niter = int(niter)
        self.background_sigmas = float(background_sigmas)
        self.damping = float(damping)
        self.pad_factor = float(pad_factor)
        self.name = name
        self.device = "cpu"

    def params(self) -> dict[str, Any]:
        return {
            "niter": self.niter,
            "background_sigmas": self.background_sigmas,
            "damping": self.damping,
            "pad_factor": self.pad_factor,
            "start": self.start,
            "start_sigmas": self.start_sigmas,
            "precision": self.precision,
        }

    def deconvolve(self, batch: Batch) -> np.ndarray:
        """Estimate of ``truth`` for each stamp: float64 (B, n, n), same flux units."""
        obs = F.as_stack(batch.observed, "observed")
        B, n, _ = obs.shape
        N = F.padded_size(n, self.pad_factor)
        sigma = np.broadcast_to(np.asarray(batch.noise_sigma, dtype=np.float64), (B,))
        if not np.all(np.isfinite(sigma) & (sigma >= 0)):
            raise ValueError("noise_sigma must be finite and >= 0")
        valid = np.isfinite(obs)
        obs = np.where(valid, obs, 0.0)
        psf = np.maximum(F.as_stack(batch.psf, "psf"), 0.0)  # RL needs a PSF >= 0 (PSFEx has < 0 lobes)
        psf_sum = psf.sum(axis=(-2, -1), keepdims=True)
        psf = psf / np.where(psf_sum > 0, psf_sum, 1.0)
        real = np.float32 if self.precision == "single" else np.float64
        cplx = np.complex64 if self.precision == "single" else np.complex128
        P = F.otf(psf, N).astype(cplx)
        Pc = np.conj(P)

        def conv(a: np.ndarray, transfer: np.ndarray) -> np.ndarray:
            return F.irfft2(F.rfft2(a) * transfer, N)

        # RL is linear in the flux scale: work on stamps scaled to a peak |y| of 1 (safe in
        # single precision), with FLOOR a tiny positive value relative to that peak
        peak = np.abs(obs).max(axis=(-2, -1))
        scale = np.where(peak > 0, peak, 1.0)[:, None, None]
        y = obs / scale
        sig = sigma[:, None, None] / scale
        b = (self.background_sigmas * sig).astype(real)
        support = F.pad_centered(np.ones((1, n, n)), N).astype(real)  # x lives in the stamp
        mask = F.pad_centered(valid.astype(np.float64), N).astype(real)  # data: finite pixels
        data = F.pad_centered(np.maximum(y + b, FLOOR), N).astype(real)
        norm = conv(mask, Pc)
        norm = np.where(support > 0, np.maximum(norm, 1e-6), 1.0).astype(real)
        level = np.maximum(y.mean(axis=(-2, -1), keepdims=True), 0.0) + FLOOR
        if self.start == "flat":
            x = support * level.astype(real)
        else:  # "threshold": pixels above start_sigmas·sigma, plus a faint flat floor
            x = F.pad_centered(np.maximum(y - self.start_sigmas * sig, 0.0) + 1e-3 * level, N).astype(real)
        sig_d = (self.damping * sig).astype(real)
        damped = self.damping > 0 and np.any(sigma > 0)
        for _ in range(self.niter):
            model = np.maximum(conv(x, P) + b, FLOOR)
            if damped:
                resid = data - model
                with np.errstate(divide="ignore", invalid="ignore"):
                    u = np.where(sig_d > 0, (resid / np.where(sig_d > 0, sig_d, 1.0)) ** 2, 1.0)
                u = np.minimum(u, 1.0)
                k = DAMPING_POWER
                ut = u ** (k - 1) * (k - (k - 1) * u)
                ratio = 1.0 + ut * resid / model
            else:
                ratio = data / model
            x = x * support * np.maximum(conv(mask * ratio, Pc), 0.0) / norm
        T = F.target_transfer(N, batch.target_fwhm_arcsec, batch.pixel_scale_arcsec)
        x = x.astype(np.float64) * scale
        return F.crop_centered(conv(x, T), n)
