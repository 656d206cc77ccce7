"""Metacalibration measurement for a batch of stamps, and the bias summary of a run.

For a deconvolver ``D`` (estimate of galaxy ⊗ target ⊗ pixel, see
:mod:`deconvbench.methods`), one batch goes through

1. ``D`` itself (timed by the harness as deconvolution);
2. the reconvolution width Γ: ``(1 + 2·step) ×`` the FWHM of a Gaussian fitted to each
   observed PSF (ngmix "fitgauss", :func:`deconvbench.metacal.psf_fit.reconv_fwhm`);
3. the five metacal images (noshear, 1p, 1m, 2p, 2m) by batched Fourier shear and
   reconvolution (:func:`deconvbench.metacal.shear_ops.metacal_images`), or, for the
   ``wmom`` estimator (``route="fourier"``, the default), the wmom of those five images
   taken directly from one forward FFT of each deconvolved stamp
   (:mod:`deconvbench.metacal.fourier_wmom`, equal to the image route to ~1e-9 in e);
4. optionally the "fixnoise" term: a fresh noise field with each stamp's
   ``noise_sigma`` (shared by the ±g stamps that share noise: seeded by the stamp's
   ``noise_seed``), rotated by 90°, passed through the same deconvolver and metacal step,
   rotated back and added (:func:`fixnoise_term`, ngmix's order; on the Fourier route
   the noise enters as a second spectrum whose sums are added, see
   :func:`deconvbench.metacal.fourier_wmom.metacal_wmom`);
5. the shear estimator on the five images and the response matrix R.

A method may instead provide ``metacal_images(batch, reconv_fwhm_arcsec, step)``
returning the five images itself (the per-object GalSim route ``galsim-mcal`` does);
the harness then times that call as the whole metacal step.

All shears are reduced shears g; ``e1, e2`` are the estimator's ellipticities
(for ``wmom``: ``(Ixx − Iyy)/T``, ``2 Ixy/T``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial

import numpy as np

from ..errors import DeconvbenchError
from ..fourier import fft_threads
from ..metrics.aggregate import snr_labels
from ..moments import CENTRING_STEPS, FLAG_NAMES, FLAG_PSF_FIT
from .bias import estimate_bias
from .estimators import get_estimator, response
from .fourier_wmom import galaxy_spectrum, metacal_wmom
from .psf_fit import reconv_fwhm
from .shear_ops import METACAL_TYPES, metacal_images

#: per-stamp columns stored by the harness (and its resume checkpoint)
MEASUREMENT_KEYS = ("e1", "e2", "R11", "R12", "R21", "R22", "flags")

#: the requirement on isolated-galaxy shear bias (LSST science requirements)
M_REQUIREMENT = 1e-3
C_REQUIREMENT = 1e-4


@dataclass(frozen=True)
class MetacalConfig:
    """Options of the metacal step (recorded in the result's ``metacal`` block)."""

    estimator: str = "wmom"
    step: float = 0.01
    fixnoise: bool = False
    n_boot: int = 500
    bootstrap_seed: int = 0
    pad_factor: float = 1.5
    """Zero padding of the Fourier shear ops (``N ≥ pad_factor·n``). Measured with fft on
    64 stamps of metacal-offsets against ``pad_factor=3`` (largest difference of any of the
    five metacal images, relative to its peak): 4e-8 noiseless and 2.1e-5 at SNR 50, where
    the deconvolved noise fills the stamp edges (1.25: 3.9e-7 and 1.1e-3, since Γ is drawn
    without a further pixel the high-k noise is no longer damped; 2.0: 2e-8 and 8e-6)."""

    route: str = "fourier"
    """How wmom is measured: ``"fourier"`` takes the five measurements from one forward FFT
    of each deconvolved stamp (:mod:`deconvbench.metacal.fourier_wmom`; with fixnoise, one
    more of each deconvolved noise field); ``"image"`` draws the five metacal images and
    measures them (the reference route; admom always uses it)."""
    fourier_pad_factor: float = 1.0
    """Grid of the Fourier route: ``N ≥ fourier_pad_factor·n``. At 1.0 (N = n = 48 on the
    metacal cards) e differs from the image route by ≤ 1.4e-9 (fft at SNR 50) and ≤ 5e-12
    (noiseless truth): the kernel's periodic copies stay ≥ 20 pixels from the weight."""

    centring: str = "newton"
    """wmom's centring step for galaxies as large as the weight or larger, where Newton's
    Jacobian ``J = 1 − M/σ_w²`` has ``det J ≤ 0.05``
    (:func:`deconvbench.moments.newton_recentre_step`): ``"newton"`` takes the plain
    weighted-mean step there, which converges linearly and for some of them not within
    the 30 iterations (their group is then dropped as flagged); ``"regularised"`` takes ``(J + μ)⁻¹ m₁``
    with λ_min(J + μ) ≥ 0.1 and converges for all of them. Every other stamp's result is the
    same to the bit. Measured with ``deconvbench bias --method fft --split snr50 --n 8192
    [--centring regularised]``: 4080 → 4096 pairs kept; its time is in the README's
    throughput table (``python -m benchmarks.metacal_throughput``)."""
    device: str | None = None
    """``None``: the numpy routes. ``"cpu"`` / ``"gpu"``: the Fourier route in JAX on that
    device (:mod:`deconvbench.metacal.jax_wmom`, equal to numpy to ~1e-12); needs the
    extra ``[jax]`` and applies where the Fourier route does."""

    def __post_init__(self) -> None:
        get_estimator(self.estimator)  # KeyError with the known names
        if self.device not in (None, "cpu", "gpu"):
            raise ValueError(f"metacal device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.centring not in CENTRING_STEPS:
            raise ValueError(f"metacal centring must be one of {', '.join(CENTRING_STEPS)}, got {self.centring!r}")
        if self.centring != "newton" and self.estimator != "wmom":
            raise ValueError(f"centring {self.centring!r} applies to the wmom estimator only, not {self.estimator}")
        if self.route not in ("fourier", "image"):
            raise ValueError(f"metacal route must be 'fourier' or 'image', got {self.route!r}")
        if not self.fourier_pad_factor >= 1.0:
            raise ValueError(f"fourier_pad_factor must be >= 1, got {self.fourier_pad_factor}")
        if not 0 < self.step < 0.1:
            raise ValueError(f"metacal step must be in (0, 0.1), got {self.step}")
        if not self.pad_factor >= 1.0:
            raise ValueError(f"pad_factor must be >= 1, got {self.pad_factor}")

    def to_dict(self) -> dict:
        return asdict(self)


def fixnoise_fields(noise_sigma: np.ndarray, noise_seed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The fixnoise noise fields ``(B, n, n)``: white Gaussian noise of each stamp's
    ``noise_sigma``, drawn from ``numpy.random.default_rng([noise_seed, 0xF1])`` (a
    stream independent of the data's own noise), so stamps that share their data noise
    (the ±g stamps of one rotation) share this field too. 0 where sigma is 0."""
    fields = np.zeros(shape, dtype=np.float64)
    drawn: dict[tuple[float, int], np.ndarray] = {}  # the ±g stamps share (sigma, seed): draw once
    for i, (sigma, seed) in enumerate(zip(noise_sigma, noise_seed, strict=True)):
        if sigma > 0:
            key = (float(sigma), int(seed))
            if key not in drawn:
                drawn[key] = np.random.default_rng([int(seed), 0xF1]).normal(0.0, float(sigma), size=shape[1:])
            fields[i] = drawn[key]
    return fields


def _rot90(images: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(images, k, axes=(-2, -1)))


def fixnoise_deconvolved(method, batch, noise_seed: np.ndarray) -> np.ndarray:
    """The first half of ngmix's fixnoise: the noise fields (:func:`fixnoise_fields`),
    rotated by 90° (``np.rot90(·, 1)``; the PSF is not rotated) and deconvolved by the
    method. Returns the deconvolved fields (B, n, n), float64, *not* rotated back."""
    noise = fixnoise_fields(np.asarray(batch.noise_sigma), noise_seed, batch.observed.shape)
    rotated = replace(batch, observed=_rot90(noise, 1))
    return np.asarray(method.deconvolve(rotated), dtype=np.float64)


def fixnoise_term(method, batch, reconv: np.ndarray, config: MetacalConfig, noise_seed: np.ndarray) -> dict:
    """ngmix's fixnoise correction, added to the metacal images of the data.

    As in ngmix, the noise field (:func:`fixnoise_fields`) is rotated by 90° *before*
    deconvolution (the PSF is not rotated), deconvolved by the same method, put through
    the same metacal step, and everything is rotated back by −90°. The rotation turns
    each applied shear into its opposite, so the noise correlations created by shearing
    cancel on average; the deconvolved noise also carries the correlations of the
    90°-rotated PSF, which cancels PSF-anisotropic noise too. Returns dict type → (B, n, n)."""
    if hasattr(method, "metacal_images"):
        noise = fixnoise_fields(np.asarray(batch.noise_sigma), noise_seed, batch.observed.shape)
        images = method.metacal_images(replace(batch, observed=_rot90(noise, 1)), reconv, config.step)
        return {key: _rot90(value, -1) for key, value in images.items()}
    noise = fixnoise_deconvolved(method, batch, noise_seed)
    return _rotated_back_metacal_images(noise, batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, reconv, config)


def _rotated_back_metacal_images(deconvolved_noise, pixel_scale, target_fwhm_arcsec, reconv, config, workers=None):
    images = metacal_images(
        deconvolved_noise,
        pixel_scale,
        target_fwhm_arcsec,
        reconv,
        step=config.step,
        pad_factor=config.pad_factor,
        workers=fft_threads(workers),
    )
    return {key: _rot90(value, -1) for key, value in images.items()}


#: name of the flag value −1: the metacal step raised on the stamp's batch
RAISED_FLAG_NAME = "metacal step raised"


def flag_counts(flags) -> dict[str, int]:
    """Stamps per failure reason: each flag bit that is set (:data:`deconvbench.moments.FLAG_NAMES`)
    and −1 (:data:`RAISED_FLAG_NAME`); a stamp with several bits counts under each."""
    flags = np.asarray(flags, dtype=np.int64)
    counts = {RAISED_FLAG_NAME: int(np.sum(flags == -1))}
    ok = flags > 0
    for bit, name in FLAG_NAMES.items():
        counts[name] = int(np.sum(ok & ((flags & bit) != 0)))
    return {name: count for name, count in counts.items() if count}


def format_flag_counts(counts: dict[str, int]) -> str:
    """``"reason N, reason N"`` of :func:`flag_counts` (or of a result's ``metacal.flag_counts``)."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _flag_psf_fit(values: dict[str, np.ndarray], reconv) -> dict[str, np.ndarray]:
    """``values`` flagged :data:`FLAG_PSF_FIT` alone (e, R NaN) where Γ's FWHM is not finite:
    every other flag of such a stamp only follows from the missing Γ."""
    failed = ~np.isfinite(np.broadcast_to(np.asarray(reconv, dtype=np.float64), np.shape(values["flags"])))
    if failed.any():
        values = dict(values)
        values["flags"] = np.where(failed, FLAG_PSF_FIT, np.asarray(values["flags"], dtype=np.int64))
        for key in ("e1", "e2", "R11", "R12", "R21", "R22"):
            values[key] = np.where(failed, np.nan, values[key])
    return values


def measure_batch(
    method,
    batch,
    estimate: np.ndarray | None,
    config: MetacalConfig,
    noise_seed: np.ndarray | None = None,
    reconv=None,
) -> dict[str, np.ndarray]:
    """Metacal measurement of one batch: per-stamp ``e1, e2`` (noshear), ``R11 … R22``
    and ``flags`` (non-zero where any of the five measurements failed; then e and R are
    NaN; :data:`FLAG_PSF_FIT` where the PSF's Gaussian fit, which sets Γ, failed).
    ``estimate`` is the method's output on ``batch`` (ignored for methods that provide
    ``metacal_images``). ``reconv``: Γ's FWHM per stamp (arcsec, (B,)) when the caller
    has it already (:func:`~deconvbench.metacal.psf_fit.reconv_fwhm` of ``batch.psf`` and
    ``config.step``); fitted here otherwise."""
    pixel = batch.pixel_scale_arcsec
    if reconv is None:
        reconv = reconv_fwhm(batch.psf, pixel, config.step)
    return _flag_psf_fit(_measure_batch(method, batch, estimate, config, noise_seed, reconv), reconv)


def _measure_batch(method, batch, estimate, config: MetacalConfig, noise_seed, reconv) -> dict[str, np.ndarray]:
    pixel = batch.pixel_scale_arcsec
    if config.fixnoise and noise_seed is None:
        raise ValueError("fixnoise needs the stamps' noise seeds")
    if uses_fourier_route(method, config):
        noise = fixnoise_deconvolved(method, batch, noise_seed) if config.fixnoise else None
        return _measure_deconvolved(estimate, pixel, batch.target_fwhm_arcsec, reconv, config, None, noise)
    if hasattr(method, "metacal_images"):
        images = method.metacal_images(batch, reconv, config.step)
    else:
        images = metacal_images(
            estimate,
            pixel,
            batch.target_fwhm_arcsec,
            reconv,
            step=config.step,
            pad_factor=config.pad_factor,
            workers=fft_threads(),
        )
    if config.fixnoise:
        extra = fixnoise_term(method, batch, reconv, config, noise_seed)
        images = {k: images[k] + extra[k] for k in images}
    return measure_images(images, pixel, config)


def uses_fourier_route(method, config: MetacalConfig) -> bool:
    """True where wmom is taken in Fourier space: route "fourier", wmom and a method without
    its own ``metacal_images`` (with or without fixnoise)."""
    return config.route == "fourier" and config.estimator == "wmom" and not hasattr(method, "metacal_images")


def measure_deconvolved(
    deconvolved,
    pixel_scale: float,
    target_fwhm_arcsec: float,
    reconv,
    config: MetacalConfig,
    workers=None,
    noise_deconvolved=None,
) -> dict[str, np.ndarray]:
    """The metacal measurement of deconvolved stamps ``D ≈ galaxy ⊗ T`` (B, n, n) for Γ of
    FWHM ``reconv`` (arcsec, (B,)): by the Fourier route for wmom (``config.route``), else
    by metacal images + estimator. ``noise_deconvolved``: the fixnoise fields from
    :func:`fixnoise_deconvolved` (their metacal images, rotated back, are added). Returns
    the dict of :func:`measure_images`."""
    return _flag_psf_fit(
        _measure_deconvolved(deconvolved, pixel_scale, target_fwhm_arcsec, reconv, config, workers, noise_deconvolved),
        reconv,
    )


def _measure_deconvolved(
    deconvolved,
    pixel_scale: float,
    target_fwhm_arcsec: float,
    reconv,
    config: MetacalConfig,
    workers,
    noise_deconvolved,
) -> dict[str, np.ndarray]:
    deconvolved = np.asarray(deconvolved, dtype=np.float64)
    fourier = config.route == "fourier" and config.estimator == "wmom"
    if fourier and config.device is not None:
        results = jax_route(config.device).wmom(
            deconvolved,
            pixel_scale,
            target_fwhm_arcsec,
            reconv,
            step=config.step,
            pad_factor=config.fourier_pad_factor,
            noise_deconvolved=noise_deconvolved,
            centring=config.centring,
        )
        return combine_measurements(results, config.step)
    if fourier:
        pad = config.fourier_pad_factor
        spectrum = galaxy_spectrum(deconvolved, pixel_scale, target_fwhm_arcsec, pad, workers)
        noise = None
        if noise_deconvolved is not None:
            noise = galaxy_spectrum(np.asarray(noise_deconvolved), pixel_scale, target_fwhm_arcsec, pad, workers)
        results = metacal_wmom(
            spectrum,
            deconvolved.shape[-1],
            pixel_scale,
            reconv,
            step=config.step,
            noise_spectrum=noise,
            centring=config.centring,
        )
        return combine_measurements(results, config.step)
    images = metacal_images(
        deconvolved,
        pixel_scale,
        target_fwhm_arcsec,
        reconv,
        step=config.step,
        pad_factor=config.pad_factor,
        workers=fft_threads(workers),
    )
    if noise_deconvolved is not None:
        extra = _rotated_back_metacal_images(
            noise_deconvolved, pixel_scale, target_fwhm_arcsec, reconv, config, workers
        )
        images = {key: images[key] + extra[key] for key in images}
    return measure_images(images, pixel_scale, config)


@lru_cache(maxsize=2)
def jax_route(device: str):
    """The JAX Fourier route on ``device`` (one instance per device: its compiled functions
    are reused)."""
    try:
        from .jax_wmom import JaxMetacal
    except ImportError as exc:
        raise MetacalDeviceError(f"--device {device} needs JAX: pip install 'deconvbench[jax]' ({exc})") from None
    return JaxMetacal(device)


class MetacalDeviceError(DeconvbenchError, ImportError):
    """The JAX route was asked for but JAX is not installed."""


def measure_images(images: dict, pixel_scale: float, config: MetacalConfig) -> dict[str, np.ndarray]:
    """The estimator on the five metacal images: per-stamp noshear ``e1, e2``, the
    response ``R11 … R22`` and ``flags`` (e and R NaN where any measurement failed)."""
    estimator = get_estimator(config.estimator)
    if config.centring != "newton":  # wmom only (checked by MetacalConfig)
        estimator = partial(estimator, centring=config.centring)
    return combine_measurements({mtype: estimator(images[mtype], pixel_scale) for mtype in METACAL_TYPES}, config.step)


def combine_measurements(results: dict, step: float) -> dict[str, np.ndarray]:
    """Estimator results per metacal type → per-stamp noshear ``e1, e2``, response
    ``R11 … R22`` and ``flags`` (e and R NaN where any of the five measurements failed)."""
    r = response(results, step)
    flags = np.zeros(len(results["noshear"]["flags"]), dtype=np.int64)
    for res in results.values():
        flags |= np.asarray(res["flags"], dtype=np.int64)
    bad = flags != 0
    out = {
        "e1": np.where(bad, np.nan, results["noshear"]["e1"]),
        "e2": np.where(bad, np.nan, results["noshear"]["e2"]),
        "R11": r[:, 0, 0],
        "R12": r[:, 0, 1],
        "R21": r[:, 1, 0],
        "R22": r[:, 1, 1],
        "flags": flags,
    }
    for key in ("R11", "R12", "R21", "R22"):
        out[key] = np.where(bad, np.nan, out[key])
    return out


def requirement_verdict(stats: dict) -> str:
    """ "yes" / "no" for |m| < 1e-3 and |c| < 1e-4 (central values) on *both* additive
    components (``c``: component 2; ``c1``: component 1, where the result has it); "no" also
    where |m| or a |c| exceeds the requirement by more than 3σ; "σ too large" where σm or a
    σc exceeds the requirement otherwise, so that the test cannot tell; "–" without numbers."""
    m, c = stats.get("m"), stats.get("c")
    if m is None or c is None or not (math.isfinite(m) and math.isfinite(c)):
        return "–"
    checks = [(m, stats.get("m_err") or 0.0, M_REQUIREMENT), (c, stats.get("c_err") or 0.0, C_REQUIREMENT)]
    c1 = stats.get("c1")
    if c1 is not None and math.isfinite(c1):
        checks.append((c1, stats.get("c1_err") or 0.0, C_REQUIREMENT))
    if any(abs(value) > limit + 3 * err for value, err, limit in checks):
        return "no"  # fails by more than 3σ
    if any(err > limit for _, err, limit in checks):
        return "σ too large"
    return "yes" if all(abs(value) < limit for value, _, limit in checks) else "no"


def summarise(measurements: dict[str, np.ndarray], ok: np.ndarray, params: np.ndarray, config: MetacalConfig) -> dict:
    """The ``metacal`` block of a result: bias overall and per SNR level.

    ``ok`` marks stamps whose deconvolution succeeded (failed ones are excluded like
    failed measurements, and counted). ``params`` is the dataset's parameter table
    (true shear, group, PSF shear). m, c, c1 follow :mod:`deconvbench.metacal.bias`;
    α = c1 / PSF g1 where the split's PSFs are sheared (the leakage variant), else null.
    ``m_floor_estimator`` = 0.9·g² is an *analytic approximation* of the estimator's own
    non-linearity (measured with ngmix at high S/N; labelled so by
    ``m_floor_estimator_kind``); the harness adds the run's measured floor
    ``m_floor_truth`` (metacal on the truth images of the same stamps).
    """
    g1 = np.asarray(params["shear_g1"], dtype=np.float64)
    g_true = float(np.max(np.abs(g1))) if g1.size else math.nan
    if not g_true > 0:
        raise ValueError("metacal needs a constant-shear dataset (a metacal card): true shear is 0 here")
    sign = np.sign(g1)
    e = np.stack([measurements["e1"], measurements["e2"]], axis=1)
    r = np.stack(
        [
            np.stack([measurements["R11"], measurements["R12"]], -1),
            np.stack([measurements["R21"], measurements["R22"]], -1),
        ],
        axis=-2,
    )
    valid = ok & (np.asarray(measurements["flags"]) == 0)
    psf_g1 = np.asarray(params["psf_g1"], dtype=np.float64)
    leakage = bool(np.any(psf_g1 != 0))
    levels = np.asarray(params["snr_level"], dtype=np.float64)

    def stats(mask: np.ndarray) -> dict:
        res = estimate_bias(
            e[mask],
            r[mask],
            sign[mask],
            params["group"][mask],
            g_true,
            psf_e1=psf_g1[mask] if leakage else None,
            valid=valid[mask],
            n_boot=config.n_boot,
            rng=config.bootstrap_seed,
        )
        res.setdefault("alpha", None)
        res.setdefault("alpha_err", None)
        res["n"] = int(mask.sum())
        res["n_failed_measurement"] = int((mask & ok & ~valid).sum())
        res["n_failed_deconvolution"] = int((mask & ~ok).sum())
        res["requirement"] = requirement_verdict(res)
        return res

    block = {
        **config.to_dict(),
        "g_true": g_true,
        "m_floor_estimator": 0.9 * g_true**2,
        "m_floor_estimator_kind": "analytic approximation 0.9*g^2 (not measured on this run)",
        "requirement": {"m": M_REQUIREMENT, "c": C_REQUIREMENT},
        "leakage_variant": leakage,
        "overall": stats(np.ones(len(params), dtype=bool)),
        "flag_counts": {
            **({"deconvolution failed": int((~ok).sum())} if (~ok).any() else {}),
            **flag_counts(np.asarray(measurements["flags"])[ok]),
        },
    }
    labels = snr_labels(levels)
    block["by_snr"] = {label: stats(labels == label) for label in dict.fromkeys(labels[np.argsort(levels)])}
    for key in ("m", "m_err", "c", "c_err", "c1", "c1_err", "alpha", "alpha_err", "R11", "R22", "n_pairs"):
        block[key] = block["overall"].get(key)
    return block
