"""The Fourier route of metacal + wmom in JAX (``--device cpu|gpu``), jitted, float64.

The same pure functions as the numpy route (:mod:`deconvbench.metacal.fourier_wmom`,
:func:`deconvbench.moments.newton_recentre_step`) run here on ``jax.numpy``; only the
centring loop differs: a fixed-shape ``lax.while_loop`` that freezes a stamp once it has
converged or failed (numpy carries an active set). Input and output are numpy arrays:
deconvolved stamps ``(B, n, n)`` and Γ's FWHM (arcsec) per stamp in, the per-stamp
measurement dict of :func:`deconvbench.metacal.measure.combine_measurements` out; the
work in between (rfft2, division by the target, five sets of Fourier inner products,
iterations; with fixnoise the deconvolved noise fields' spectrum too) stays on the device.
Float64 throughout (``jax.enable_x64``, scoped to these
calls), so results equal the numpy route to ~1e-12 (tested to 1e-6).

JAX is an optional dependency (extra ``[jax]``): importing this module without it raises
ImportError; asking for ``gpu`` without a GPU backend raises :class:`DeviceUnavailableError`
(one line from the CLI).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import fourier as F
from ..errors import DeconvbenchError
from ..fourier import FWHM_PER_SIGMA
from ..moments import (
    FLAG_CENTROID_SHIFT,
    FLAG_NONFINITE,
    FLAG_NONPOSITIVE_FLUX,
    FLAG_NOT_CONVERGED,
    _finish,
    _result,
    newton_recentre_step,
)
from .estimators import WMOM_WEIGHT_FWHM_ARCSEC, _to_estimate
from .fourier_wmom import (
    batch_band,
    fourier_round_weight_sums,
    metacal_kernel_bases,
    rotated_quarter_turn_centres,
    rotated_quarter_turn_sums,
    type_matrices,
)
from .shear_ops import METACAL_TYPES, metacal_shear

DEVICES = ("cpu", "gpu")


class DeviceUnavailableError(DeconvbenchError, RuntimeError):
    """The requested JAX device (backend) is not available."""


def jax_device(name: str):
    """The first JAX device of platform ``name`` ("cpu" or "gpu")."""
    if name not in DEVICES:
        raise DeviceUnavailableError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        found = sorted({d.platform for d in jax.devices()})
        raise DeviceUnavailableError(
            f"no JAX {name} backend (JAX sees: {', '.join(found)}); install jax with GPU support or use --device cpu"
        ) from None


def _iterate(
    bases,
    mats,
    start,
    size: int,
    sigma_w: float,
    max_iter: int,
    tol: float,
    max_shift: float,
    noise=None,
    n=None,
    band=None,
    centring="newton",
):
    """The wmom centring of :func:`deconvbench.moments.recentred_round_weight` with fixed
    shapes: ``bases`` (A, N, Nh), ``mats`` (A, 2, 2), ``start`` (A, 2) centres (pixels from
    the stamp centre); ``noise``: the fixnoise bases (A, N, Nh) of stamps of size ``n``,
    whose sums are added rotated (as in :func:`deconvbench.metacal.fourier_wmom.metacal_wmom`);
    ``band``: the rows and columns the bases hold (:func:`~deconvbench.metacal.fourier_wmom.kernel_band`);
    ``centring``: the step where the Jacobian is ill-conditioned (:func:`newton_recentre_step`).
    Returns (centres (A, 2), sums (6, A), flags (A,), active (A,))."""
    a = bases.shape[0]
    sig2 = sigma_w * sigma_w
    finite = jnp.all(jnp.isfinite(bases), axis=(1, 2))
    if noise is not None:
        finite = finite & jnp.all(jnp.isfinite(noise), axis=(1, 2))

    def sums_at(centres):
        s = fourier_round_weight_sums(bases, mats, centres, size, sigma_w, xp=jnp, band=band)
        if noise is None:
            return s
        rotated = rotated_quarter_turn_centres(centres, n, xp=jnp)
        extra = rotated_quarter_turn_sums(
            fourier_round_weight_sums(noise, mats, rotated, size, sigma_w, xp=jnp, band=band)
        )
        return tuple(d + r for d, r in zip(s, extra, strict=True))

    flags0 = jnp.where(finite, 0, FLAG_NONFINITE)

    def cond(state):
        it, _, active, _, _ = state
        return (it < max_iter) & jnp.any(active)

    def body(state):
        it, centres, active, flags, sums = state
        s = sums_at(centres)
        new_sums = jnp.where(active[None, :], jnp.stack(s), sums)
        bad_flux = ~(s[0] > 0)
        step_x, step_y = newton_recentre_step(*s, sig2, xp=jnp, centring=centring)
        done = (jnp.abs(step_x) < tol) & (jnp.abs(step_y) < tol)
        move = active & ~done
        centres = centres + jnp.where(move[:, None], jnp.stack([step_x, step_y], axis=-1), 0.0)
        far = jnp.hypot(centres[:, 0], centres[:, 1]) > max_shift
        flags = flags | jnp.where(active & bad_flux, FLAG_NONPOSITIVE_FLUX, 0)
        flags = flags | jnp.where(active & far, FLAG_CENTROID_SHIFT, 0)
        active = active & ~(done | bad_flux | far)
        return it + 1, centres, active, flags, new_sums

    state = (0, start, finite, flags0, jnp.full((6, a), jnp.nan))
    _, centres, active, flags, sums = jax.lax.while_loop(cond, body, state)
    return centres, sums, flags, active


@partial(
    jax.jit,
    static_argnames=("size", "n", "types", "step", "sigma_w", "max_iter", "tol", "max_shift", "band", "centring"),
)
def _measure(
    deconvolved,
    target_ratio,
    sigma_g,
    noise_deconvolved,
    *,
    size: int,
    n: int,
    types: tuple,
    step: float,
    sigma_w: float,
    max_iter: int,
    tol: float,
    max_shift: float,
    band: tuple,
    centring: str,
):
    o = size // 2 - n // 2
    rows, cols = (np.asarray(index) for index in band)

    def spectrum_of(images):
        padded = jnp.zeros(images.shape[:1] + (size, size), images.dtype)
        spectrum = jnp.fft.rfft2(padded.at[:, o : o + n, o : o + n].set(images)) * target_ratio
        return spectrum[:, rows][:, :, cols]

    mats = jnp.asarray(type_matrices(types, step))
    kw = dict(xp=jnp, band=(rows, cols))
    bases = metacal_kernel_bases(spectrum_of(deconvolved), size, sigma_g, sigma_w, mats, **kw)  # (T, B, rows, cols)
    noise = None
    if noise_deconvolved is not None:
        noise = metacal_kernel_bases(spectrum_of(noise_deconvolved), size, sigma_g, sigma_w, mats, **kw)
    b = deconvolved.shape[0]
    first = types.index("noshear")
    out = [None] * len(types)
    c0, s0, f0, a0 = _iterate(
        bases[first],
        jnp.broadcast_to(mats[first], (b, 2, 2)),
        jnp.zeros((b, 2)),
        size,
        sigma_w,
        max_iter,
        tol,
        max_shift,
        None if noise is None else noise[first],
        n,
        (rows, cols),
        centring,
    )
    out[first] = (c0, s0, f0, a0)
    # the seeding of the numpy route: sheared images start from S·c₀, and the second image
    # of each ±step pair also from the first one's residual (same order as numpy)
    rest = sorted((i for i in range(len(types)) if i != first), key=lambda i: types[i])
    shears = {t: metacal_shear(t, step) for t in types}
    waves = [
        [
            i
            for i in rest
            if (-shears[types[i]][0], -shears[types[i]][1]) not in {shears[types[j]] for j in rest[: rest.index(i)]}
        ]
    ]
    waves.append([i for i in rest if i not in waves[0]])
    residual = {}
    seed = jnp.nan_to_num(c0)
    for wave in (w for w in waves if w):
        idx = jnp.array(wave)
        shear_m = jnp.linalg.inv(jnp.transpose(mats[idx], (0, 2, 1)))  # S = (Lᵀ)⁻¹
        moved = jnp.einsum("tij,bj->tbi", shear_m, seed)
        prior = jnp.stack([residual.get(tuple(-g for g in shears[types[i]]), jnp.zeros((b, 2))) for i in wave])
        start = moved - prior
        c, s, f, a = _iterate(
            bases[idx].reshape((len(wave) * b,) + bases.shape[2:]),
            jnp.repeat(mats[idx], b, axis=0),
            start.reshape(len(wave) * b, 2),
            size,
            sigma_w,
            max_iter,
            tol,
            max_shift,
            None if noise is None else noise[idx].reshape((len(wave) * b,) + bases.shape[2:]),
            n,
            (rows, cols),
            centring,
        )
        for k, i in enumerate(wave):
            sl = slice(k * b, (k + 1) * b)
            out[i] = (c[sl], s[:, sl], f[sl], a[sl])
            residual[shears[types[i]]] = jnp.nan_to_num(c[sl] - start[k] + prior[k])
    return tuple(out)


class JaxMetacal:
    """The Fourier route of metacal + wmom on a JAX device ("cpu" or "gpu")."""

    def __init__(self, device: str = "cpu", max_iter: int = 30, tol: float = 1e-9, max_shift: float = 4.0):
        self.device = jax_device(device)
        self.max_iter, self.tol, self.max_shift = int(max_iter), float(tol), float(max_shift)

    def wmom(
        self,
        deconvolved,
        pixel_scale: float,
        target_fwhm_arcsec: float,
        reconv_fwhm_arcsec,
        step: float = 0.01,
        pad_factor: float = 1.0,
        types=METACAL_TYPES,
        weight_fwhm_arcsec: float = WMOM_WEIGHT_FWHM_ARCSEC,
        noise_deconvolved=None,
        centring: str = "newton",
    ) -> dict[str, dict[str, np.ndarray]]:
        """Same arguments and result as :func:`deconvbench.metacal.fourier_wmom.metacal_wmom`
        applied to :func:`~deconvbench.metacal.fourier_wmom.galaxy_spectrum` (numpy in/out);
        ``noise_deconvolved``: the deconvolved fixnoise fields
        (:func:`deconvbench.metacal.measure.fixnoise_deconvolved`), or None."""
        images = F.as_stack(deconvolved, "deconvolved")
        b, n = images.shape[0], images.shape[-1]
        size = F.padded_size(n, pad_factor)
        ratio = 1.0 / F.target_transfer(size, target_fwhm_arcsec, pixel_scale)
        reconv = np.broadcast_to(np.asarray(reconv_fwhm_arcsec, dtype=np.float64), (b,))
        sigma_g = reconv / FWHM_PER_SIGMA / pixel_scale
        sigma_w = weight_fwhm_arcsec / FWHM_PER_SIGMA / pixel_scale
        types = tuple(types)
        finite = np.isfinite(images).all(axis=(1, 2)) & np.isfinite(sigma_g)
        if noise_deconvolved is not None:
            finite &= np.isfinite(F.as_stack(noise_deconvolved, "noise_deconvolved")).all(axis=(1, 2))
        # the numpy route's band (the same modes, so the same sums); static: one compilation per band
        rows, cols = batch_band(size, sigma_g, sigma_w, type_matrices(types, step), finite)
        band = (tuple(int(i) for i in rows), tuple(int(i) for i in cols))
        with jax.enable_x64(True):
            args = [jax.device_put(np.ascontiguousarray(x), self.device) for x in (images, ratio, sigma_g)]
            if noise_deconvolved is None:
                args.append(None)
            else:
                args.append(jax.device_put(F.as_stack(noise_deconvolved, "noise_deconvolved"), self.device))
            parts = _measure(
                *args,
                size=size,
                n=n,
                types=types,
                step=float(step),
                sigma_w=float(sigma_w),
                max_iter=self.max_iter,
                tol=self.tol,
                max_shift=self.max_shift,
                band=band,
                centring=centring,
            )
            parts = jax.device_get(parts)
        centre = float(n // 2)
        out = {}
        for mtype, (centres, sums, flags, active) in zip(types, parts, strict=True):
            res = _result(b)
            res["flags"] = np.asarray(flags, dtype=np.int64) | np.where(active, FLAG_NOT_CONVERGED, 0)
            res["flags"] |= np.where(~np.isfinite(sigma_g), FLAG_NONFINITE, 0)
            f, _, _, sxx, syy, sxy = (np.asarray(v, dtype=np.float64) for v in sums)
            with np.errstate(invalid="ignore", divide="ignore"):
                res["Ixx"], res["Iyy"], res["Ixy"] = sxx / f, syy / f, sxy / f
            res["x"], res["y"] = centre + centres[:, 0], centre + centres[:, 1]
            res["flux"] = f
            res = _finish(res)
            out[mtype] = _to_estimate(res, pixel_scale, res["flux"])
        return out
