"""Metrics of deconvolved stamps against the truth (per stamp, batched) and their aggregation.

* :mod:`.image`: nmse, psnr, ssim, flux_error, centroid_error;
* :mod:`.shapes`: adaptive-moment shapes (GalSim HSM) and shape/size errors;
* :mod:`.aggregate`: every metric at once (:func:`stamp_metrics`) and JSON-ready summaries
  overall and per group (:func:`aggregate`).
"""

from .aggregate import METRICS, aggregate, snr_labels, stamp_metrics
from .image import centroid_error, flux_error, nmse, psnr, ssim
from .shapes import adaptive_moments, shape_errors

__all__ = [
    "METRICS",
    "adaptive_moments",
    "aggregate",
    "centroid_error",
    "flux_error",
    "nmse",
    "psnr",
    "shape_errors",
    "snr_labels",
    "ssim",
    "stamp_metrics",
]
