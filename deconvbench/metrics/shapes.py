"""Shape metrics from adaptive moments (GalSim HSM ``FindAdaptiveMom``), per stamp.

Conventions: x = column, y = row, pixels. From the adaptive second moments
(Ixx, Iyy, Ixy) of an elliptical Gaussian weight matched to the image:

* distortion e1 = (Ixx − Iyy)/(Ixx + Iyy), e2 = 2 Ixy/(Ixx + Iyy) (``observed_shape.e1/e2``
  of HSM, not the reduced shear g; for a sheared round profile |e| = 2|g|/(1 + |g|²));
* sigma = (Ixx Iyy − Ixy²)^(1/4), pixels (``moments_sigma``).

HSM runs once per stamp (it has no batched interface), with ``strict=False``, the centroid
guess on pixel (n//2, n//2) (the stamps' centre convention) and ``guess_sigma`` (pixels).
A failure never gives silent zeros: e1, e2 and sigma are NaN and ``flags`` says why
(bit mask): ``FLAG_NONFINITE`` the stamp has non-finite pixels (HSM is not run),
``FLAG_HSM`` HSM reported an error (non-zero ``moments_status``, or raised),
``FLAG_BAD_RESULT`` it returned a non-finite or non-positive sigma or |e| >= 1.
"""

from __future__ import annotations

import galsim
import numpy as np

from .image import _stack

FLAG_NONFINITE = 1
FLAG_HSM = 2
FLAG_BAD_RESULT = 4

DEFAULT_GUESS_SIGMA = 5.0  # pixels, GalSim's default


def adaptive_moments(images: np.ndarray, guess_sigma=DEFAULT_GUESS_SIGMA) -> dict[str, np.ndarray]:
    """Adaptive moments of each stamp of (B, ny, nx) (or (ny, nx)) ``images``.

    Returns a dict of (B,) arrays: ``e1``, ``e2`` (distortion), ``sigma`` (pixels),
    ``flags`` (int, 0 = success, see the module doc) and ``failed`` (bool, flags != 0).
    ``guess_sigma``: initial weight sigma in pixels, scalar or (B,) (default 5).
    """
    im = _stack(images, "images")
    B, ny, nx = im.shape
    guess = np.broadcast_to(np.asarray(guess_sigma, dtype=np.float64), (B,))
    e1 = np.full(B, np.nan)
    e2 = np.full(B, np.nan)
    sigma = np.full(B, np.nan)
    flags = np.zeros(B, dtype=np.int64)
    # GalSim images are 1-based: pixel (n//2, n//2) 0-based is (n//2 + 1, n//2 + 1)
    centre = galsim.PositionD(nx // 2 + 1.0, ny // 2 + 1.0)
    for i in range(B):
        stamp = im[i]
        if not np.all(np.isfinite(stamp)):
            flags[i] = FLAG_NONFINITE
            continue
        g = float(guess[i]) if np.isfinite(guess[i]) and guess[i] > 0 else DEFAULT_GUESS_SIGMA
        try:
            res = galsim.hsm.FindAdaptiveMom(
                galsim.Image(np.ascontiguousarray(stamp)), guess_sig=g, guess_centroid=centre, strict=False
            )
        except Exception:  # HSM raises on some degenerate inputs even with strict=False
            flags[i] = FLAG_HSM
            continue
        if res.moments_status != 0 or res.error_message:
            flags[i] = FLAG_HSM
            continue
        s = float(res.moments_sigma)
        a, b = float(res.observed_shape.e1), float(res.observed_shape.e2)
        if not (np.isfinite(s) and s > 0 and np.isfinite(a) and np.isfinite(b) and np.hypot(a, b) < 1):
            flags[i] = FLAG_BAD_RESULT
            continue
        e1[i], e2[i], sigma[i] = a, b, s
    return {"e1": e1, "e2": e2, "sigma": sigma, "flags": flags, "failed": flags != 0}


def shape_errors(est: np.ndarray, truth: np.ndarray, truth_moments: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
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
