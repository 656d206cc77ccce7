"""Gaussian-weighted image moments, batched: the one moments routine of the project.

Two estimators share one iteration and one flag set:

* :func:`weighted_moments` ("wmom"): a *round* Gaussian weight of fixed size whose centre
  follows the object (iterated until the weighted first moment vanishes). Moments are
  taken about that centre, so the result does not depend on where the object sits in
  the stamp (translation invariant, like ngmix's jacobian centred on the object).
* :func:`adaptive_moments` ("admom", Bernstein & Jarvis 2002, the algorithm of GalSim's
  ``hsm.FindAdaptiveMom``): an elliptical Gaussian weight of centroid μ and covariance C,
  iterated until the weighted centroid equals μ and twice the weighted covariance
  equals C. At the fixed point the weight is the least-squares Gaussian fit of the image.

Conventions
-----------
* Images ``(B, ny, nx)`` (or ``(ny, nx)``), indexed (row=y, col=x), 0-based pixel
  centres. Positions and moments are returned in **pixels** (multiply by the pixel scale
  in arcsec/pixel, squared for second moments, for arcsec).
* The initial centre is pixel ``(n//2, n//2)`` (the stamps' centre convention).
* Ellipticity is the *distortion* ``e1 = (Ixx − Iyy)/T``, ``e2 = 2 Ixy/T``,
  ``T = Ixx + Iyy`` (for admom of the fitted Gaussian's covariance C; for a sheared
  round profile ``|e| = 2|g|/(1+|g|²)``, g the reduced shear).
* ``flags`` (bit mask, 0 = success; failed stamps get NaN e1, e2, T, sigma):
  :data:`FLAG_NONFINITE` non-finite pixels, :data:`FLAG_NONPOSITIVE_FLUX` weighted flux
  ≤ 0, :data:`FLAG_NONPOSITIVE_SIZE` non-positive-definite moments,
  :data:`FLAG_NOT_CONVERGED` no convergence within ``max_iter``,
  :data:`FLAG_CENTROID_SHIFT` the centre moved more than ``max_shift`` pixels from
  its start, :data:`FLAG_BAD_SHAPE` |e| ≥ 1 or non-finite.

Everything is vectorised over the batch (no Python loop over stamps or pixels): stamps
still iterating are carried in an active set, converged or failed ones stop.
"""

from __future__ import annotations

import numpy as np

FLAG_NONFINITE = 1
FLAG_NONPOSITIVE_FLUX = 2
FLAG_NONPOSITIVE_SIZE = 4
FLAG_NOT_CONVERGED = 8
FLAG_CENTROID_SHIFT = 16
FLAG_BAD_SHAPE = 32
FLAG_PSF_FIT = 64  # set by the metacal step, not by the moments themselves

FLAG_NAMES = {
    FLAG_NONFINITE: "non-finite pixels",
    FLAG_NONPOSITIVE_FLUX: "weighted flux <= 0",
    FLAG_NONPOSITIVE_SIZE: "moments not positive definite",
    FLAG_NOT_CONVERGED: "no convergence",
    FLAG_CENTROID_SHIFT: "centre moved too far",
    FLAG_BAD_SHAPE: "|e| >= 1",
    FLAG_PSF_FIT: "PSF Gaussian fit failed (e.g. an undersampled PSF)",
}


def as_stamps(images, dtype=np.float64) -> np.ndarray:
    """``images`` as a (B, ny, nx) array ((ny, nx) → (1, ny, nx)); ValueError otherwise."""
    arr = np.asarray(images, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected stamps of shape (B, ny, nx), got {arr.shape}")
    return arr


def _round_weight_sums(images: np.ndarray, cx: np.ndarray, cy: np.ndarray, sigma: float):
    """Sums of ``w·I·(1, dx, dy, dx², dy², dx·dy)`` for round weights
    ``w = exp(−|d|²/2σ²)``, ``d = (x − cx, y − cy)`` (pixels). Separable weight: two
    batched matrix products per call."""
    ny, nx = images.shape[-2:]
    dx = np.arange(nx, dtype=images.dtype)[None, :] - cx[:, None].astype(images.dtype)
    dy = np.arange(ny, dtype=images.dtype)[None, :] - cy[:, None].astype(images.dtype)
    wx = np.exp(-0.5 * (dx / sigma) ** 2)
    wy = np.exp(-0.5 * (dy / sigma) ** 2)
    x_basis = np.stack([wx, wx * dx, wx * dx * dx], axis=-1)  # (B, nx, 3)
    y_basis = np.stack([wy, wy * dy, wy * dy * dy], axis=-1)  # (B, ny, 3)
    rows = np.matmul(images, x_basis)  # (B, ny, 3): Σ_x I w_x dx^q
    s = np.matmul(y_basis.transpose(0, 2, 1), rows).astype(np.float64)  # (B, 3, 3): [p=dy power, q=dx power]
    return s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 0, 2], s[:, 2, 0], s[:, 1, 1]


def _elliptical_weight_sums(images: np.ndarray, cx, cy, cxx, cyy, cxy):
    """Same sums as :func:`_round_weight_sums` for elliptical weights
    ``w = exp(−½ dᵀC⁻¹d)``, ``C = [[cxx, cxy], [cxy, cyy]]`` (pixels²); the sums are two
    batched matrix products against ``(1, d, d²)`` along each axis."""
    ny, nx = images.shape[-2:]
    det = cxx * cyy - cxy**2
    ixx, iyy, ixy = cyy / det, cxx / det, -cxy / det
    dx = np.arange(nx, dtype=np.float64)[None, :] - cx[:, None]  # (B, nx)
    dy = np.arange(ny, dtype=np.float64)[None, :] - cy[:, None]  # (B, ny)
    quad = (ixx[:, None] * dx * dx)[:, None, :] + (iyy[:, None] * dy * dy)[:, :, None]
    quad += (2.0 * ixy[:, None, None]) * dy[:, :, None] * dx[:, None, :]
    wimg = images * np.exp(-0.5 * quad)  # one exponent: no overflow of separate factors
    x_basis = np.stack([np.ones_like(dx), dx, dx * dx], axis=-1)  # (B, nx, 3)
    y_basis = np.stack([np.ones_like(dy), dy, dy * dy], axis=1)  # (B, 3, ny)
    s = np.matmul(y_basis, np.matmul(wimg, x_basis))  # (B, 3 [dy power], 3 [dx power])
    return s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 0, 2], s[:, 2, 0], s[:, 1, 1]


def _result(b: int) -> dict[str, np.ndarray]:
    out = {key: np.full(b, np.nan) for key in ("x", "y", "Ixx", "Iyy", "Ixy", "T", "e1", "e2", "sigma", "flux")}
    out["flags"] = np.zeros(b, dtype=np.int64)
    out["n_iter"] = np.zeros(b, dtype=np.int64)
    return out


def _finish(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Derived quantities (T, e, sigma) and the shape flags; NaN where flagged."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = out["Ixx"] + out["Iyy"]
        det = out["Ixx"] * out["Iyy"] - out["Ixy"] ** 2
        size_bad = ~((t > 0) & (det > 0))
        out["flags"] |= np.where(size_bad & (out["flags"] == 0), FLAG_NONPOSITIVE_SIZE, 0)
        e1 = (out["Ixx"] - out["Iyy"]) / t
        e2 = 2.0 * out["Ixy"] / t
        out["flags"] |= np.where(~(e1 * e1 + e2 * e2 < 1.0) & (out["flags"] == 0), FLAG_BAD_SHAPE, 0)
        ok = out["flags"] == 0
        out["T"] = np.where(ok, t, np.nan)
        out["e1"] = np.where(ok, e1, np.nan)
        out["e2"] = np.where(ok, e2, np.nan)
        out["sigma"] = np.where(ok, np.abs(det) ** 0.25, np.nan)
    return out


#: the centring steps of the wmom iteration (:func:`newton_recentre_step`)
CENTRING_STEPS = ("newton", "regularised")

#: the smallest eigenvalue the "regularised" step gives the centring Jacobian
REGULARISED_MIN_EIGENVALUE = 0.1


def newton_recentre_step(f, sx, sy, sxx, syy, sxy, sig2: float, xp=np, centring: str = "newton"):
    """The wmom centring step from the six weighted sums about the current centre ``c``
    (``Σ w I (1, dx, dy, dx², dy², dx·dy)``, pixels): Newton's step for a Gaussian image,
    ``J⁻¹ m₁`` with ``J = 1 − M/σ²`` (``m₁`` the weighted mean offset, ``M`` the weighted
    covariance) where ``det J > 0.05``; each component clipped to ±1 pixel, NaN → 0.

    Where ``det J ≤ 0.05`` (objects as large as the weight or larger: ``J ≈ σ²/(σ² + s²)``
    for a Gaussian of variance s²) ``centring`` picks the step:

    * ``"newton"``: the plain step ``m₁`` (a fixed-point iteration converging linearly at
      rate ≈ 1 − λ_min(J), which can exceed ``max_iter``: the object is then flagged);
    * ``"regularised"``: ``(J + μ)⁻¹ m₁`` with μ ≥ 0 the smallest shift that lifts
      λ_min(J) to :data:`REGULARISED_MIN_EIGENVALUE` (Levenberg–Marquardt); the same fixed
      point, reached in a few steps. Elsewhere both are the same step, to the bit.

    Pure and elementwise: ``xp`` is numpy or jax.numpy. Returns ``(step_x, step_y)``."""
    mx, my = sx / f, sy / f
    mxx, myy, mxy = sxx / f - mx * mx, syy / f - my * my, sxy / f - mx * my
    jxx, jyy, jxy = 1.0 - mxx / sig2, 1.0 - myy / sig2, -mxy / sig2
    det = jxx * jyy - jxy * jxy
    newton = (det > 0.05) & (jxx > 0) & xp.isfinite(det)
    safe = xp.where(newton, det, 1.0)
    fallback_x, fallback_y = mx, my
    if centring == "regularised":
        lam_min = 0.5 * (jxx + jyy) - xp.sqrt(0.25 * (jxx - jyy) ** 2 + jxy * jxy)
        shift = xp.maximum(0.0, REGULARISED_MIN_EIGENVALUE - lam_min)
        rxx, ryy = jxx + shift, jyy + shift
        rdet = rxx * ryy - jxy * jxy
        usable = xp.isfinite(rdet) & (rdet > 0)
        rsafe = xp.where(usable, rdet, 1.0)
        fallback_x = xp.where(usable, (ryy * mx - jxy * my) / rsafe, mx)
        fallback_y = xp.where(usable, (rxx * my - jxy * mx) / rsafe, my)
    elif centring != "newton":
        raise ValueError(f"centring must be one of {', '.join(CENTRING_STEPS)}, got {centring!r}")
    step_x = xp.where(newton, (jyy * mx - jxy * my) / safe, fallback_x)
    step_y = xp.where(newton, (jxx * my - jxy * mx) / safe, fallback_y)
    # NaN → 0, ±inf → ±1 (the clip of nan_to_num's ±max float, in fewer array operations)
    step_x, step_y = xp.clip(step_x, -1.0, 1.0), xp.clip(step_y, -1.0, 1.0)
    return xp.where(step_x == step_x, step_x, 0.0), xp.where(step_y == step_y, step_y, 0.0)


def recentred_round_weight(
    sums_fn,
    finite: np.ndarray,
    x0: float,
    y0: float,
    weight_sigma_pixels: float,
    max_iter: int = 30,
    tol: float = 1e-9,
    max_shift: float = 4.0,
    recentre: bool = True,
    start=None,
    centring: str = "newton",
) -> dict[str, np.ndarray]:
    """The wmom iteration, for any way of computing the weighted sums.

    ``sums_fn(active, cx, cy)`` returns the six sums ``Σ w I (1, dx, dy, dx², dy², dx·dy)``
    (``d = x − c``, pixels; ``w`` the round Gaussian of σ = ``weight_sigma_pixels``,
    peak 1) of the stamps ``active`` (indices) for weight centres ``(cx, cy)`` (pixels,
    same coordinates as ``x0, y0``). :func:`weighted_moments` sums over pixels;
    :mod:`deconvbench.metacal.fourier_wmom` sums in Fourier space. ``finite`` (B,) marks
    usable stamps. Centres start at ``(x0, y0)``; stamps still iterating are carried in an
    active set; ``start`` (``(cx, cy)`` arrays (B,)) starts them elsewhere (a nearby
    guess: fewer iterations, the same fixed point; ``max_shift`` still counts from
    ``(x0, y0)``); ``centring``: the step where the Jacobian is ill-conditioned
    (:func:`newton_recentre_step`). Returns the dict of :func:`weighted_moments`."""
    b = len(finite)
    out = _result(b)
    sig2 = float(weight_sigma_pixels) ** 2
    cx, cy = np.full(b, float(x0)), np.full(b, float(y0))
    if start is not None:
        cx[:], cy[:] = np.nan_to_num(start[0], nan=x0), np.nan_to_num(start[1], nan=y0)
    out["flags"][~finite] |= FLAG_NONFINITE
    active = np.flatnonzero(finite)
    sums = np.full((6, b), np.nan)
    flags, n_iter = out["flags"], out["n_iter"]
    for it in range(1, (max_iter if recentre else 1) + 1):
        if active.size == 0:
            break
        cx_active, cy_active = cx[active], cy[active]
        s = sums_fn(active, cx_active, cy_active)
        sums[:, active] = s
        n_iter[active] = it
        bad_flux = ~(s[0] > 0)
        if bad_flux.any():
            flags[active[bad_flux]] |= FLAG_NONPOSITIVE_FLUX
        if not recentre:
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            step_x, step_y = newton_recentre_step(*s, sig2, centring=centring)
        done = (np.abs(step_x) < tol) & (np.abs(step_y) < tol)
        cx_active += np.where(done, 0.0, step_x)
        cy_active += np.where(done, 0.0, step_y)
        cx[active], cy[active] = cx_active, cy_active
        far = np.hypot(cx_active - x0, cy_active - y0) > max_shift
        if far.any():
            flags[active[far]] |= FLAG_CENTROID_SHIFT
        active = active[~(done | bad_flux | far)]
    if recentre and active.size:
        out["flags"][active] |= FLAG_NOT_CONVERGED
    f, _, _, sxx, syy, sxy = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        # moments about the weight centre (not the weighted centroid): the definition of
        # wmom; at convergence m₁ = 0 and the two coincide
        out["Ixx"], out["Iyy"], out["Ixy"] = sxx / f, syy / f, sxy / f
    out["x"], out["y"], out["flux"] = cx, cy, f
    return _finish(out)


def weighted_moments(
    images,
    weight_sigma_pixels: float,
    max_iter: int = 30,
    tol: float = 1e-9,
    max_shift: float = 4.0,
    recentre: bool = True,
    centring: str = "newton",
) -> dict[str, np.ndarray]:
    """Round-Gaussian-weighted moments ("wmom") with the weight centred on the object.

    ``weight_sigma_pixels``: σ of the round weight ``w = exp(−|d|²/2σ²)`` (peak 1),
    pixels. With ``recentre`` (default) the centre ``c`` is iterated until the weighted
    first moment vanishes (:func:`newton_recentre_step`), until every component moves
    less than ``tol`` pixels; otherwise the weight stays on pixel (n//2, n//2).
    ``centring``: ``"newton"`` or ``"regularised"``, the step for objects as large as the
    weight (:func:`newton_recentre_step`).

    Returns dict of (B,) arrays: ``x, y`` (weight centre, pixels), ``Ixx, Iyy, Ixy``
    (``Σ w I dx²/F`` … about the centre, pixels²), ``T``, ``e1``, ``e2``, ``sigma``
    (``det^{1/4}``, pixels), ``flux`` (``F = Σ w I``, image units), ``flags``, ``n_iter``.
    """
    images = as_stamps(images, dtype=np.float64 if np.asarray(images).dtype != np.float32 else np.float32)
    _, ny, nx = images.shape
    sigma = float(weight_sigma_pixels)

    def sums_fn(active, cx, cy):
        return _round_weight_sums(images[active], cx, cy, sigma)

    return recentred_round_weight(
        sums_fn,
        np.isfinite(images).all(axis=(1, 2)),
        float(nx // 2),
        float(ny // 2),
        sigma,
        max_iter=max_iter,
        tol=tol,
        max_shift=max_shift,
        recentre=recentre,
        centring=centring,
    )


def adaptive_moments(
    images,
    guess_sigma_pixels=None,
    max_iter: int = 200,
    tol: float = 1e-10,
    max_shift: float | None = None,
    crop: int | None = None,
    accelerate: bool = False,
) -> dict[str, np.ndarray]:
    """Adaptive moments ("admom", see module docstring), batched.

    ``guess_sigma_pixels``: initial round weight σ, scalar or (B,) (default n/8).
    Convergence: relative change of C and of μ (in units of det(C)^{1/4}) below ``tol``.
    ``max_shift`` (pixels, default n/4): a centroid that wanders further is flagged.
    ``crop``: fit only the central ``crop × crop`` pixels around (n//2, n//2) (faster for
    compact objects such as PSFs; positions are still returned in full-stamp pixels).
    ``accelerate``: once a stamp's change is below 1e-2, step ``x ← x + 2(F(x) − x)``
    instead of ``x ← F(x)`` (F the fixed-point map, whose slope is ½ for a Gaussian image:
    Newton's step there); the same fixed point and stopping rule in about half the
    iterations.

    Returns dict of (B,) arrays: ``x, y`` (centroid μ, pixels), ``Ixx, Iyy, Ixy`` (the
    fitted Gaussian's covariance C, pixels²), ``T = Ixx + Iyy``, ``e1``, ``e2``,
    ``sigma = det(C)^{1/4}`` (pixels; GalSim's ``moments_sigma``), ``flux`` (amplitude of
    the fitted Gaussian, ``2 Σ w I``, image units; GalSim's ``moments_amp``), ``flags``,
    ``n_iter``."""
    images = as_stamps(images)
    b, ny, nx = images.shape
    offset = (0, 0)
    if crop is not None and crop < min(nx, ny):
        oy, ox = ny // 2 - crop // 2, nx // 2 - crop // 2
        images = images[:, oy : oy + crop, ox : ox + crop]
        offset = (ox, oy)
        b, ny, nx = images.shape
    out = _result(b)
    max_shift = min(nx, ny) / 4.0 if max_shift is None else float(max_shift)
    x0, y0 = float(nx // 2), float(ny // 2)
    guess = (min(nx, ny) / 8.0) if guess_sigma_pixels is None else guess_sigma_pixels
    guess = np.broadcast_to(np.asarray(guess, dtype=np.float64), (b,))
    guess = np.where(np.isfinite(guess) & (guess > 0), guess, min(nx, ny) / 8.0)
    mx, my = np.full(b, x0), np.full(b, y0)
    cxx, cyy, cxy = guess**2, guess**2, np.zeros(b)
    amp = np.full(b, np.nan)
    finite = np.isfinite(images).all(axis=(1, 2))
    out["flags"][~finite] |= FLAG_NONFINITE
    active = np.flatnonzero(finite)
    converged = np.zeros(b, dtype=bool)
    last_change = np.full(b, np.inf)
    for it in range(1, max_iter + 1):
        if active.size == 0:
            break
        c_xx, c_yy, c_xy = cxx[active], cyy[active], cxy[active]
        f, sx, sy, sxx, syy, sxy = _elliptical_weight_sums(images[active], mx[active], my[active], c_xx, c_yy, c_xy)
        out["n_iter"][active] = it
        with np.errstate(invalid="ignore", divide="ignore"):
            bx, by = sx / f, sy / f
            mxx, myy, mxy = sxx / f - bx * bx, syy / f - by * by, sxy / f - bx * by
            new = (mx[active] + bx, my[active] + by, 2.0 * mxx, 2.0 * myy, 2.0 * mxy)
            scale = np.sqrt(np.abs(c_xx * c_yy - c_xy**2))
            change = np.maximum.reduce(
                [
                    np.abs(new[0] - mx[active]) / np.sqrt(scale),
                    np.abs(new[1] - my[active]) / np.sqrt(scale),
                    np.abs(new[2] - c_xx) / scale,
                    np.abs(new[3] - c_yy) / scale,
                    np.abs(new[4] - c_xy) / scale,
                ]
            )
        amp[active] = 2.0 * f
        done = change < tol
        if accelerate:
            near = (last_change[active] < 1e-2) & ~done
            last_change[active] = change
            old = (mx[active], my[active], c_xx, c_yy, c_xy)
            new = tuple(np.where(near, 2.0 * v - o, v) for v, o in zip(new, old, strict=True))
        mx[active], my[active], cxx[active], cyy[active], cxy[active] = new
        converged[active[done]] = True
        bad_flux = ~(f > 0)
        bad_size = ~((new[2] * new[3] - new[4] ** 2 > 0) & (new[2] > 0)) & ~bad_flux
        far = np.hypot(new[0] - x0, new[1] - y0) > max_shift
        out["flags"][active[bad_flux]] |= FLAG_NONPOSITIVE_FLUX
        out["flags"][active[bad_size]] |= FLAG_NONPOSITIVE_SIZE
        out["flags"][active[far & ~bad_flux & ~bad_size]] |= FLAG_CENTROID_SHIFT
        active = active[~(done | bad_flux | bad_size | far | ~np.isfinite(change))]
    out["flags"][(out["flags"] == 0) & ~converged] |= FLAG_NOT_CONVERGED
    out["x"], out["y"] = mx + offset[0], my + offset[1]
    out["Ixx"], out["Iyy"], out["Ixy"], out["flux"] = cxx, cyy, cxy, amp
    return _finish(out)
