"""Training objectives for deconvolvers that metacalibration can use (PyTorch).

Each term is a mean over stamps of a per-stamp, dimensionless ratio, so terms can be
weighted against each other (the weights are the ``*_weight`` fields of
:class:`LossWeights`):

* ``pixel``: NMSE ``Σ(D − truth)² / Σ truth²`` of the estimate from the *noisy*
  stamp: the benchmark's image metric.
* ``band``: the metacal-band error of the estimate from the *noiseless* stamp,
  ``Σ_k |(D~ − truth~) Γ~/T~|² / Σ_k |truth~ Γ~/T~|²``: by Parseval, the NMSE of the
  metacal "noshear" image ``D ⊗ Γ / T`` (Γ the stamp's reconvolution Gaussian, T the
  target). Metacal's response is computed from those images, so a deconvolver whose
  expected output has no error there is unbiased; any shrinkage in that band is a
  multiplicative bias.
* ``flux``: ``((ΣD − Σtruth) / Σtruth)²`` (noiseless input): flux conservation.
* ``shear`` / ``psf`` equivariance: ``equivariance_loss(a, b)`` is the NMSE between two
  outputs that should agree, e.g. the output for a sheared galaxy and the sheared
  output (``shear``), or the outputs for one galaxy seen through two PSFs (``psf``).
  It is 0 for an exactly equivariant map.

Spectra are those of :mod:`deconvbench.fourier` (``rfft2`` of the centred, zero-padded
stamps); every loss is differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossWeights:
    pixel_weight: float = 1.0
    band_weight: float = 0.0
    flux_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pixel_weight", "band_weight", "flux_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _per_stamp_sum(x):
    return x.reshape(len(x), -1).sum(dim=1)


def nmse_loss(estimate, truth):
    """Mean over stamps of ``Σ(estimate − truth)² / Σ truth²`` ((B, n, n) tensors)."""
    return (_per_stamp_sum((estimate - truth) ** 2) / _per_stamp_sum(truth**2)).mean()


def band_loss(spec_estimate, spec_truth, band_weight):
    """Mean over stamps of ``Σ|(D~ − truth~)·w|² / Σ|truth~·w|²`` with ``w = Γ~/T~``
    (``band_weight``, (B, N, M) or (N, M), real)."""
    num = _per_stamp_sum(((spec_estimate - spec_truth) * band_weight).abs() ** 2)
    den = _per_stamp_sum((spec_truth * band_weight).abs() ** 2)
    return (num / den).mean()


def flux_loss(spec_estimate, spec_truth):
    """Mean over stamps of the squared relative flux error (k = 0 of the spectra)."""
    est, tru = spec_estimate[:, 0, 0].real, spec_truth[:, 0, 0].real
    return (((est - tru) / tru) ** 2).mean()


def equivariance_loss(a, b):
    """Mean over stamps of ``Σ(a − b)² / Σ b²``: 0 when the two outputs agree."""
    return nmse_loss(a, b)
