"""Shear estimators applied to metacal images, and the metacal response.

Every estimator maps stamps ``(B, n, n)`` (centred on pixel (n//2, n//2), pixel scale in
arcsec/pixel) to a dict of ``(B,)`` arrays:

* ``e1``, ``e2``: ellipticity of the measured second moments, *distortion* convention
  ``e1 = (Ixx − Iyy)/(Ixx + Iyy)``, ``e2 = 2 Ixy/(Ixx + Iyy)`` with x = column,
  y = row (NaN where ``flags != 0``);
* ``T = Ixx + Iyy`` (arcsec²);
* ``flux`` (estimator-specific, see each function);
* ``flags``: int, 0 = success.

Registry: :data:`ESTIMATORS` (name → callable), :func:`get_estimator`,
:func:`register_estimator`. Built in: ``"wmom"`` (fixed-weight moments, pure numpy) and
``"admom"`` (GalSim adaptive moments, per stamp).
"""

from __future__ import annotations

from typing import Callable, Mapping

import galsim
import numpy as np

from .shear_ops import FWHM_PER_SIGMA

Estimator = Callable[..., dict]

FLAG_NONPOSITIVE_FLUX = 1  # weighted flux ≤ 0 or not finite
FLAG_NONPOSITIVE_T = 2  # T ≤ 0 or not finite
FLAG_ADMOM_FAILED = 4  # GalSim's adaptive moments failed


def wmom(images, pixel_scale: float, weight_fwhm_arcsec: float = 1.2) -> dict:
    """Gaussian-weighted second moments with a fixed round weight (ngmix "wmom").

    The weight ``w(x) = exp(−|x|²/(2σ_w²))``, σ_w = ``weight_fwhm_arcsec``/2.3548 (peak 1),
    is centred on pixel (n//2, n//2); ``x`` is measured in arcsec from there. With
    ``F = Σ w I``: ``Ixx = Σ w I x²/F``, ``Iyy = Σ w I y²/F``, ``Ixy = Σ w I x y/F`` (moments
    about the weight centre, not the centroid), ``T = Ixx + Iyy`` (arcsec²),
    ``e1 = (Ixx − Iyy)/T``, ``e2 = 2 Ixy/T``, ``flux = F`` (weighted sum, image units).
    ``flags`` has :data:`FLAG_NONPOSITIVE_FLUX` where F ≤ 0 (or is NaN, e.g. NaN pixels)
    and :data:`FLAG_NONPOSITIVE_T` where T ≤ 0; e1, e2 are NaN there. Batched (einsum)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    n = images.shape[-1]
    coord = (np.arange(n) - n // 2) * pixel_scale
    sigma = weight_fwhm_arcsec / FWHM_PER_SIGMA
    w1 = np.exp(-0.5 * (coord / sigma) ** 2)  # separable weight: w(x, y) = w1(y) w1(x)
    wy, wx = w1, w1
    flux = np.einsum("bij,i,j->b", images, wy, wx)
    sxx = np.einsum("bij,i,j->b", images, wy, wx * coord**2)
    syy = np.einsum("bij,i,j->b", images, wy * coord**2, wx)
    sxy = np.einsum("bij,i,j->b", images, wy * coord, wx * coord)
    with np.errstate(divide="ignore", invalid="ignore"):
        ixx, iyy, ixy = sxx / flux, syy / flux, sxy / flux
        t = ixx + iyy
        flags = np.where(~(flux > 0), FLAG_NONPOSITIVE_FLUX, 0) | np.where(~(t > 0), FLAG_NONPOSITIVE_T, 0)
        ok = flags == 0
        e1 = np.where(ok, (ixx - iyy) / t, np.nan)
        e2 = np.where(ok, 2.0 * ixy / t, np.nan)
    return {"e1": e1, "e2": e2, "T": t, "flux": flux, "flags": flags.astype(np.int64)}


def admom(images, pixel_scale: float) -> dict:
    """Adaptive moments per stamp with ``galsim.hsm.FindAdaptiveMom`` (``strict=False``).

    ``e1, e2`` are the *distortion* of the adaptive-moment ellipse,
    ``observed_shape.e1/.e2`` (GalSim stores the shape as a ``galsim.Shear``; its
    ``e1, e2`` are ``(Ixx−Iyy)/(Ixx+Iyy)``, ``2Ixy/(Ixx+Iyy)`` of the fitted Gaussian).
    ``T = 2σ²/sqrt(1−|e|²)`` (arcsec², σ = ``moments_sigma · pixel_scale``, i.e. Ixx+Iyy
    of the fitted Gaussian), ``flux = moments_amp`` (flux of the best-fit Gaussian, image
    units). The initial guess is centred on pixel (n//2, n//2). A stamp where GalSim
    fails (``moments_status != 0``, an exception, non-finite pixels) gets
    :data:`FLAG_ADMOM_FAILED` and NaN e1, e2, T, flux. Loops over stamps (GalSim)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    b, n = images.shape[0], images.shape[-1]
    out = {key: np.full(b, np.nan) for key in ("e1", "e2", "T", "flux")}
    out["flags"] = np.zeros(b, dtype=np.int64)
    centre = galsim.PositionD(n // 2 + 1.0, n // 2 + 1.0)  # GalSim images are 1-based
    for i in range(b):
        if not np.all(np.isfinite(images[i])):
            out["flags"][i] = FLAG_ADMOM_FAILED
            continue
        try:
            res = galsim.hsm.FindAdaptiveMom(
                galsim.Image(np.ascontiguousarray(images[i]), scale=pixel_scale), guess_centroid=centre, strict=False
            )
        except (galsim.GalSimError, RuntimeError, ValueError):
            out["flags"][i] = FLAG_ADMOM_FAILED
            continue
        if res.moments_status != 0:
            out["flags"][i] = FLAG_ADMOM_FAILED
            continue
        e1, e2 = res.observed_shape.e1, res.observed_shape.e2
        sigma = res.moments_sigma * pixel_scale
        out["e1"][i], out["e2"][i] = e1, e2
        out["T"][i] = 2.0 * sigma**2 / np.sqrt(1.0 - e1**2 - e2**2)
        out["flux"][i] = res.moments_amp
    return out


ESTIMATORS: dict[str, Estimator] = {"wmom": wmom, "admom": admom}


def register_estimator(name: str, fn: Estimator) -> None:
    """Register ``fn(images, pixel_scale, **kwargs) -> dict(e1, e2, T, flux, flags)``."""
    ESTIMATORS[name] = fn


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown shear estimator {name!r}; known: {sorted(ESTIMATORS)}") from None


def response(results_by_type: Mapping[str, Mapping[str, np.ndarray]], step: float = 0.01) -> np.ndarray:
    """Metacal response per stamp, ``(B, 2, 2)``:
    ``R[:, i, j] = (e_i(+step along j) − e_i(−step along j)) / (2 step)``, from the
    estimator results of types "1p", "1m" (j = 1) and "2p", "2m" (j = 2). NaN propagates
    from failed measurements."""
    r = np.stack(
        [
            np.stack(
                [
                    (np.asarray(results_by_type[f"{j}p"][f"e{i}"]) - np.asarray(results_by_type[f"{j}m"][f"e{i}"]))
                    / (2.0 * step)
                    for j in (1, 2)
                ],
                axis=-1,
            )
            for i in (1, 2)
        ],
        axis=-2,
    )
    return r
