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
:func:`register_estimator`. Built in: ``"wmom"`` (fixed-size round weight centred on the
object) and ``"admom"`` (adaptive moments), both from the one batched moments routine
:mod:`deconvbench.moments` and its flag set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..fourier import FWHM_PER_SIGMA
from ..moments import adaptive_moments, weighted_moments

Estimator = Callable[..., dict]

#: wmom's default weight FWHM (arcsec)
WMOM_WEIGHT_FWHM_ARCSEC = 1.2


def _to_estimate(res: dict, pixel_scale: float, flux) -> dict:
    ok = res["flags"] == 0
    return {
        "e1": res["e1"],
        "e2": res["e2"],
        "T": np.where(ok, res["T"] * pixel_scale**2, np.nan),
        "flux": flux,
        "flags": res["flags"].astype(np.int64),
        "x": res["x"],
        "y": res["y"],
    }


def wmom(
    images, pixel_scale: float, weight_fwhm_arcsec: float = WMOM_WEIGHT_FWHM_ARCSEC, centring: str = "newton"
) -> dict:
    """Gaussian-weighted second moments with a fixed round weight (ngmix "wmom"), the
    weight centred on the object.

    The weight ``w(x) = exp(−|x − c|²/(2σ_w²))``, σ_w = ``weight_fwhm_arcsec``/2.3548
    (peak 1), is centred on ``c``, iterated from pixel (n//2, n//2) until the weighted
    first moment about ``c`` vanishes (:func:`deconvbench.moments.weighted_moments`): the
    result does not depend on where the galaxy sits in the stamp. With ``F = Σ w I``:
    ``Ixx = Σ w I dx²/F``, ``Iyy``, ``Ixy`` likewise (d = x − c, arcsec),
    ``T = Ixx + Iyy`` (arcsec²), ``e1 = (Ixx − Iyy)/T``, ``e2 = 2 Ixy/T``, ``flux = F``
    (image units), ``x, y`` the centre (pixels). ``flags`` are those of
    :mod:`deconvbench.moments`; e1, e2, T are NaN where they are non-zero. ``centring``:
    the centring step for galaxies as large as the weight
    (:func:`deconvbench.moments.newton_recentre_step`). Batched."""
    sigma_pixels = weight_fwhm_arcsec / FWHM_PER_SIGMA / pixel_scale
    res = weighted_moments(images, sigma_pixels, centring=centring)
    return _to_estimate(res, pixel_scale, res["flux"])


def admom(images, pixel_scale: float) -> dict:
    """Adaptive moments (:func:`deconvbench.moments.adaptive_moments`, the algorithm of
    GalSim's ``hsm.FindAdaptiveMom``, batched; HSM is the independent check in the tests).

    ``e1, e2``: distortion of the adaptive-moment ellipse; ``T = Cxx + Cyy`` of the fitted
    Gaussian (arcsec²); ``flux``: amplitude of the fitted Gaussian (image units); ``x, y``:
    its centroid (pixels), started on pixel (n//2, n//2). Flags as in
    :mod:`deconvbench.moments` (NaN e1, e2, T where set)."""
    res = adaptive_moments(images)
    return _to_estimate(res, pixel_scale, np.where(res["flags"] == 0, res["flux"], np.nan))


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
