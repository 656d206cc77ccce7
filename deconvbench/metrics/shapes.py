"""Shape metrics from adaptive moments, per stamp.

Conventions: x = column, y = row, pixels. From the adaptive second moments
(Ixx, Iyy, Ixy) of an elliptical Gaussian weight matched to the image
(:func:`deconvbench.moments.adaptive_moments`, the project's one moments routine; the
algorithm of GalSim's ``hsm.FindAdaptiveMom``, which the tests use as the independent
check):

* distortion e1 = (Ixx − Iyy)/(Ixx + Iyy), e2 = 2 Ixy/(Ixx + Iyy) (not the reduced
  shear g; for a sheared round profile |e| = 2|g|/(1 + |g|²));
* sigma = (Ixx Iyy − Ixy²)^(1/4), pixels (GalSim's ``moments_sigma``).

The iteration starts on pixel (n//2, n//2) (the stamps' centre convention) with a round
weight of ``guess_sigma`` pixels; the centroid may move up to 15 pixels (HSM's default
bound). A failure never gives silent zeros: e1, e2 and sigma are NaN and ``flags`` (the
bit mask of :mod:`deconvbench.moments`: ``FLAG_NONFINITE``, ``FLAG_NONPOSITIVE_FLUX``,
``FLAG_NONPOSITIVE_SIZE``, ``FLAG_NOT_CONVERGED``, ``FLAG_CENTROID_SHIFT``,
``FLAG_BAD_SHAPE``) says why.
"""

from __future__ import annotations

import numpy as np

from ..moments import (  # noqa: F401  (the flag set is part of this module's interface)
    FLAG_BAD_SHAPE,
    FLAG_CENTROID_SHIFT,
    FLAG_NONFINITE,
    FLAG_NONPOSITIVE_FLUX,
    FLAG_NONPOSITIVE_SIZE,
    FLAG_NOT_CONVERGED,
)
from ..moments import adaptive_moments as _adaptive_moments
from .image import _stack

DEFAULT_GUESS_SIGMA = 5.0  # pixels, GalSim's default

#: largest centroid shift (pixels) from the stamp centre, HSM's default ``max_ashift``
MAX_CENTROID_SHIFT = 15.0


def adaptive_moments(images: np.ndarray, guess_sigma=DEFAULT_GUESS_SIGMA) -> dict[str, np.ndarray]:
    """Adaptive moments of each stamp of (B, ny, nx) (or (ny, nx)) ``images``, batched.

    Returns a dict of (B,) arrays: ``e1``, ``e2`` (distortion), ``sigma`` (pixels),
    ``flags`` (int, 0 = success, see the module doc) and ``failed`` (bool, flags != 0).
    ``guess_sigma``: initial weight sigma in pixels, scalar or (B,) (default 5).
    """
    im = _stack(images, "images")
    res = _adaptive_moments(im, guess_sigma_pixels=guess_sigma, max_shift=MAX_CENTROID_SHIFT)
    return {"e1": res["e1"], "e2": res["e2"], "sigma": res["sigma"], "flags": res["flags"], "failed": res["flags"] != 0}


def shape_errors(
    est: np.ndarray, truth: np.ndarray, truth_moments: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Shape and size errors of ``est`` against ``truth`` per stamp, (B,) arrays:

    * ``de1``, ``de2``: e_est − e_truth (distortion components);
    * ``size_err``: sigma_est / sigma_truth − 1 (adaptive-moment sizes);
    * ``failed``: HSM failed on est or on truth (then de1, de2, size_err are NaN).

    ``truth_moments`` (the output of :func:`adaptive_moments` on ``truth``) may be passed
    to avoid measuring the same truth again for every method. The truth's sigma is used
    as the initial guess for the estimate.
    """
    t = _stack(truth, "truth")
    e = _stack(est, "est")
    if e.shape != t.shape:
        raise ValueError(f"est and truth shapes differ: {e.shape} vs {t.shape}")
    mt = adaptive_moments(t) if truth_moments is None else truth_moments
    if np.shape(mt["e1"]) != (t.shape[0],):
        raise ValueError("truth_moments do not match the number of stamps")
    guess = np.where(np.isfinite(mt["sigma"]), mt["sigma"], DEFAULT_GUESS_SIGMA)
    me = adaptive_moments(e, guess_sigma=guess)
    failed = np.asarray(me["failed"], bool) | np.asarray(mt["failed"], bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        de1 = np.where(failed, np.nan, me["e1"] - mt["e1"])
        de2 = np.where(failed, np.nan, me["e2"] - mt["e2"])
        size_err = np.where(failed, np.nan, me["sigma"] / mt["sigma"] - 1.0)
    return {"de1": de1, "de2": de2, "size_err": size_err, "failed": failed}
