"""``galsim-mcal``: the per-object GalSim route of metacalibration (what ngmix does).

Each stamp and its PSF become ``galsim.InterpolatedImage`` objects (Lanczos-15 real-space
interpolant), the galaxy is ``Convolve(stamp, Deconvolve(psf))``, and

* ``deconvolve`` draws ``galaxy ⊗ Gaussian(target FWHM)`` with the pixel response
  (``drawImage(method="auto")``): an estimate of ``truth`` like any other method;
* ``metacal_images`` shears the galaxy by (±step, 0), (0, ±step), convolves with the
  round Gaussian Γ of the requested FWHM and draws the five metacal images
  (:func:`deconvbench.metacal.reference.galsim_metacal_images`).

One Python call into GalSim per stamp: this is the reference for accuracy and the speed
baseline that batched methods are measured against, not a fast path.
"""

from __future__ import annotations

from typing import Any

import galsim
import numpy as np

from deconvbench.metacal.reference import X_INTERPOLANT, galsim_metacal_images
from deconvbench.metacal.shear_ops import METACAL_TYPES
from deconvbench.methods import Batch


class GalsimMetacal:
    """Per-object GalSim deconvolution and metacal images (the ngmix route; slow reference)."""

    description = "Per-object GalSim InterpolatedImage deconvolution and metacal (ngmix route, reference)"
    name = "galsim-mcal"
    device = "cpu"

    def __init__(self, folding_threshold: float | None = None, maxk_threshold: float | None = None):
        self.folding_threshold = folding_threshold
        self.maxk_threshold = maxk_threshold
        kwargs = {}
        if folding_threshold is not None:
            kwargs["folding_threshold"] = float(folding_threshold)
        if maxk_threshold is not None:
            kwargs["maxk_threshold"] = float(maxk_threshold)
        self.gsparams = galsim.GSParams(**kwargs) if kwargs else None

    def params(self) -> dict[str, Any]:
        return {
            "x_interpolant": X_INTERPOLANT,
            "folding_threshold": self.folding_threshold,
            "maxk_threshold": self.maxk_threshold,
        }

    def _interpolated(self, stamp: np.ndarray, pixel_scale: float) -> galsim.InterpolatedImage:
        image = galsim.Image(np.ascontiguousarray(stamp, dtype=np.float64), scale=pixel_scale)
        return galsim.InterpolatedImage(
            image, x_interpolant=X_INTERPOLANT, use_true_center=False, gsparams=self.gsparams
        )

    def deconvolve(self, batch: Batch) -> np.ndarray:
        n = batch.stamp_size
        scale = batch.pixel_scale_arcsec
        target = galsim.Gaussian(fwhm=batch.target_fwhm_arcsec, gsparams=self.gsparams)
        out = np.empty((batch.size, n, n))
        for i in range(batch.size):
            psf = np.asarray(batch.psf[i], dtype=np.float64)
            galaxy = galsim.Convolve(
                [
                    self._interpolated(batch.observed[i], scale),
                    galsim.Deconvolve(self._interpolated(psf / psf.sum(), scale)),
                ],
                gsparams=self.gsparams,
            )
            out[i] = (
                galsim.Convolve([galaxy, target], gsparams=self.gsparams)
                .drawImage(nx=n, ny=n, scale=scale, method="auto", use_true_center=False)
                .array
            )
        return out

    def metacal_images(self, batch: Batch, reconv_fwhm_arcsec, step: float) -> dict[str, np.ndarray]:
        reconv = np.broadcast_to(np.asarray(reconv_fwhm_arcsec, dtype=np.float64), (batch.size,))
        per_stamp = [
            galsim_metacal_images(
                batch.observed[i],
                batch.psf[i],
                batch.pixel_scale_arcsec,
                float(reconv[i]),
                step=step,
                gsparams=self.gsparams,
            )
            for i in range(batch.size)
        ]
        return {mtype: np.stack([images[mtype] for images in per_stamp]) for mtype in METACAL_TYPES}
