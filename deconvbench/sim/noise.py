"""Noise model.

Gaussian sky + read noise, white, with a per-stamp standard deviation set by the SNR
level: ``sigma = sqrt(Σ noiseless²) / SNR`` (matched-filter SNR of the noiseless stamp).
SNR = inf means noiseless (sigma = 0). Optionally Poisson noise of the source is added
(``poisson_source``, with ``gain`` e-/count); ``noise_sigma`` then describes only the
Gaussian part and the stored ``snr`` is still sqrt(Σ noiseless²)/noise_sigma.
"""

from __future__ import annotations

import math

import numpy as np


def sigma_for_snr(noiseless: np.ndarray, snr: float) -> float:
    """Noise sigma that gives ``noiseless`` the matched-filter SNR ``snr`` (0 if inf)."""
    if math.isinf(snr):
        return 0.0
    return float(np.sqrt(np.sum(noiseless.astype(np.float64) ** 2)) / snr)


def noise_field(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance white Gaussian field from its own seed (shared by ±g pairs)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed))).standard_normal(shape)


def poisson_noise(noiseless: np.ndarray, gain: float, seed: int) -> np.ndarray:
    """Source Poisson noise in counts (zero-mean), from its own seed."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    electrons = np.clip(noiseless, 0.0, None) * gain
    return (rng.poisson(electrons) - electrons) / gain
