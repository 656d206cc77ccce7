"""PSF-model errors: what a method is told about the PSF, when it is not the true one.

A real pipeline deconvolves with a *model* of the PSF that misses the true PSF by a
small size error and a small ellipticity error. ``deconvbench run --psf-error
size=0.01,e1=0.002`` hands every method (and the metacal step's fit of the
reconvolution kernel Γ, as in a real pipeline) a model PSF stamp built from the true
one; the observed stamps, the truth stamps and the stored ``psf`` stay what they are.

Conventions (δ = model − true):

* ``size`` = δT/T, the relative error of the PSF's second-moment size
  ``T = Ixx + Iyy`` (arcsec²): the profile is dilated by ``sqrt(1 + δT/T)``
  (``GSObject.dilate``, flux kept), which scales every second moment by ``1 + δT/T``;
* ``e1``, ``e2`` = δg, a *reduced shear* (GalSim ``shear(g1=..., g2=...)``) applied to the
  dilated profile. A round PSF of size T then gets the distortion
  ``(Ixx − Iyy)/T = 2 δg₁/(1 + δg²) ≈ 2 δg₁``.

Both act on the PSF profile *before* the pixel: the model stamp is drawn exactly like
the generator draws the stored ``psf`` stamp (:func:`deconvbench.sim.render.psf_stamp_image`:
by the card's ``stamp.psf_stamp``, a point source through the PSF's kernel or GalSim's
``drawImage``, with the pixel — none for PSFEx models at their own scale — centred on
pixel (n//2, n//2), normalised to sum 1, float32), one stamp per PSF group. With a
zero error the model stamps equal the stored ones (tested).

Analytic expectation (first order in δ, second moments; Paulin-Henriksson et al. 2008):
a method that deconvolves with a PSF of moments ``M_P + δM`` returns a galaxy whose
moments lack ``δM``. Shearing a galaxy by g changes its moments by ``2g·T_gal`` along
the shear, so the model's ellipticity error reads as the shear
``c_i = −(T_psf/T_gal)·δg_i``, and the size error shrinks the galaxy the metacal response
is measured on, ``m = +(T_psf/T_gal)·δT/T``. Here ``T_psf`` is the size of the dilated
profile (the PSF stamp's size less the pixel's ``1/6`` px² per image; PSFEx models
include their pixel) and ``T_gal`` the galaxy's own size (before any PSF). Both come from
adaptive moments of the stamps (exact for Gaussians). The shear estimate is
``⟨e⟩/⟨R⟩``, so stamps weigh in with their response: for Gaussian weights the response
of a galaxy of size T_gal reconvolved by Γ is about ``T_gal/(T_gal + T_Γ)``, which gives
the ensemble coefficient

    K = Σ T_psf/(T_gal + T_Γ) / Σ T_gal/(T_gal + T_Γ),

with ``dm/d(δT/T) ≈ K`` and ``dc_i/dδg_i ≈ −K`` (:func:`analytic_coefficient`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

KEYS = ("size", "e1", "e2")
#: the conventions, as recorded in result files
CONVENTION = (
    "model = true PSF dilated by sqrt(1+size) (size = dT/T, T = Ixx+Iyy) then sheared by reduced shear (e1, e2), "
    "before the pixel; dT/T and (e1, e2) = model - true"
)


class PSFErrorSpecError(UsageError):
    """A ``--psf-error`` value that cannot be parsed or is out of range."""


@dataclass(frozen=True)
class PSFError:
    """Size error δT/T and reduced-shear error (δg₁, δg₂) of the PSF model (model − true)."""

    size: float = 0.0
    e1: float = 0.0
    e2: float = 0.0

    def __post_init__(self) -> None:
        for key in KEYS:
            value = getattr(self, key)
            if not math.isfinite(value):
                raise PSFErrorSpecError(f"--psf-error {key} must be finite, got {value}")
        if self.size <= -1.0:
            raise PSFErrorSpecError(f"--psf-error size is dT/T and must be > -1, got {self.size}")
        if math.hypot(self.e1, self.e2) >= 1.0:
            raise PSFErrorSpecError(
                f"--psf-error |(e1, e2)| is a reduced shear and must be < 1, got {self.e1}, {self.e2}"
            )

    @property
    def dilation(self) -> float:
        """Linear scale factor of the profile: ``sqrt(1 + δT/T)``."""
        return math.sqrt(1.0 + self.size)

    def to_dict(self) -> dict:
        return {"size": self.size, "e1": self.e1, "e2": self.e2, "convention": CONVENTION}

    def tag(self) -> str:
        """File-name part, e.g. ``psferr-size+0.01-e1+0.002-e2+0``."""
        return "psferr-" + "-".join(f"{key}{getattr(self, key):+g}" for key in KEYS)


def parse_psf_error(text: str) -> PSFError:
    """``"size=0.01,e1=0.002"`` → :class:`PSFError` (missing keys are 0).

    Raises :class:`PSFErrorSpecError` (one line) for an unknown key, a repeated key, a
    value that is not a number, or a value out of range."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep:
            raise PSFErrorSpecError(f"--psf-error: expected KEY=VALUE, got {part!r} (keys: {', '.join(KEYS)})")
        if key not in KEYS:
            raise PSFErrorSpecError(f"--psf-error: unknown key {key!r} (keys: {', '.join(KEYS)})")
        if key in values:
            raise PSFErrorSpecError(f"--psf-error: {key} given twice")
        try:
            values[key] = float(raw)
        except ValueError:
            raise PSFErrorSpecError(f"--psf-error: {key} must be a number, got {raw.strip()!r}") from None
    if not values:
        raise PSFErrorSpecError(f"--psf-error: nothing given (e.g. size=0.01,e1=0.002; keys: {', '.join(KEYS)})")
    return PSFError(**values)


def model_profile(row, error: PSFError, gsparams):
    """The model PSF profile (GalSim, arcsec, no pixel) of one ``params`` row: the true
    profile dilated by ``sqrt(1 + δT/T)`` and sheared by (δg₁, δg₂)."""
    from .sim.psfs import build_psf

    profile = build_psf(row, gsparams)
    if error.size:
        profile = profile.dilate(error.dilation)
    if error.e1 or error.e2:
        profile = profile.shear(g1=error.e1, g2=error.e2)
    return profile


class ModelPSFs:
    """Model PSF stamps of a dataset for one :class:`PSFError`, built once per PSF group.

    ``card`` is the dataset's :class:`~deconvbench.cards.DatasetCard`; ``params`` its full
    parameter table (all rows of a group are needed to pick the generator's FFT grid)."""

    def __init__(self, card, params: np.ndarray, error: PSFError):
        self.card, self.params, self.error = card, params, error
        self._stamps: dict[int, np.ndarray] = {}

    def _draw(self, psf_index: int) -> np.ndarray:
        from .sim.psfs import includes_pixel
        from .sim.render import gsparams, kgrid, pad_sizes, psf_stamp_image

        rows = self.params[self.params["psf_index"] == psf_index]
        grid = kgrid(self.card)
        pads = sorted(set(pad_sizes(rows, grid).tolist()))
        with_pixel = not includes_pixel(rows[0], grid.pixel_scale)
        profile = model_profile(rows[0], self.error, gsparams())
        return psf_stamp_image(self.card, profile, grid, with_pixel, pads).astype(np.float32)

    def stamps(self, rows: np.ndarray) -> np.ndarray:
        """Model PSF stamps (B, n, n) float32 of ``rows`` (a slice of ``params``)."""
        indices = rows["psf_index"]
        for index in np.unique(indices).tolist():
            if index not in self._stamps:
                self._stamps[index] = self._draw(index)
        return np.stack([self._stamps[int(i)] for i in indices])


def pixel_size_t(pixel_scale_arcsec: float) -> float:
    """Second-moment size ``T = Ixx + Iyy`` (arcsec²) of the square pixel: ``2 · s²/12``."""
    return pixel_scale_arcsec**2 / 6.0


def gaussian_t(fwhm_arcsec) -> np.ndarray:
    """``T = 2σ²`` (arcsec²) of a round Gaussian of FWHM ``fwhm_arcsec``."""
    sigma = np.asarray(fwhm_arcsec, dtype=np.float64) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return 2.0 * sigma**2


def stamp_sizes(truth, psf, pixel_scale_arcsec: float, target_fwhm_arcsec: float, psf_has_pixel) -> dict:
    """Per-stamp sizes (arcsec²) for the analytic expectation, from adaptive moments:
    ``T_gal`` = T(truth) − T(target Gaussian) − T(pixel); ``T_psf`` = T(psf stamp) −
    T(pixel) (the pixel kept where ``psf_has_pixel``, i.e. PSFEx models that include it).
    NaN where a fit fails."""
    from .moments import adaptive_moments

    scale2 = pixel_scale_arcsec**2
    pix = pixel_size_t(pixel_scale_arcsec)
    t_truth = adaptive_moments(truth)
    t_psf = adaptive_moments(psf, crop=32)
    gal = np.where(t_truth["flags"] == 0, t_truth["T"] * scale2, np.nan) - gaussian_t(target_fwhm_arcsec) - pix
    psf_t = np.where(t_psf["flags"] == 0, t_psf["T"] * scale2, np.nan) - np.where(psf_has_pixel, 0.0, pix)
    return {"T_gal": gal, "T_psf": psf_t}


def analytic_coefficient(t_gal, t_psf, t_reconv) -> float:
    """Ensemble ``K = Σ T_psf/(T_gal + T_Γ) / Σ T_gal/(T_gal + T_Γ)`` (see the module
    docstring): ``dm/d(δT/T) ≈ K``, ``dc_i/dδg_i ≈ −K``. All sizes in arcsec², (N,);
    stamps with a NaN are left out."""
    t_gal, t_psf, t_reconv = (np.asarray(v, dtype=np.float64) for v in (t_gal, t_psf, t_reconv))
    ok = np.isfinite(t_gal) & np.isfinite(t_psf) & np.isfinite(t_reconv) & (t_gal > 0)
    if not ok.any():
        return math.nan
    denom = t_gal[ok] + t_reconv[ok]
    return float(np.sum(t_psf[ok] / denom) / np.sum(t_gal[ok] / denom))


def result_block(data_path, error: PSFError, step: float = 0.01, batch_size: int = 512) -> dict:
    """The ``psf_error`` block of a result file: the error and its conventions, and the
    analytic expectation on the run's stamps (``K``, mean ``T_gal``, ``T_psf``, ``T_Γ`` in
    arcsec², see the module docstring). ``T_Γ`` is the reconvolution kernel fitted to the
    *true* PSF stamps (the first-order expectation does not depend on the error)."""
    from .metacal.psf_fit import reconv_fwhm
    from .sim.psfs import includes_pixel
    from .store import open_dataset

    sizes: dict[str, list] = {"T_gal": [], "T_psf": [], "T_reconv": []}
    with open_dataset(data_path) as dataset:
        params = dataset.params()
        scale, target = dataset.pixel_scale_arcsec, dataset.target_psf_fwhm_arcsec
        has_pixel = np.array([includes_pixel(row, scale) for row in params])
        for start in range(0, dataset.n, batch_size):
            stop = min(start + batch_size, dataset.n)
            truth = dataset.read("truth", start, stop).astype(np.float64)
            psf = dataset.read("psf", start, stop).astype(np.float64)
            part = stamp_sizes(truth, psf, scale, target, has_pixel[start:stop])
            sizes["T_gal"].append(part["T_gal"])
            sizes["T_psf"].append(part["T_psf"])
            sizes["T_reconv"].append(gaussian_t(reconv_fwhm(psf, scale, step)))
    t = {key: np.concatenate(value) for key, value in sizes.items()}
    k = analytic_coefficient(t["T_gal"], t["T_psf"], t["T_reconv"])
    return {
        **error.to_dict(),
        "analytic": {
            "K": k,
            "dm_dsize": k,
            "dc_de": -k,
            "m": k * error.size,
            "c1": -k * error.e1,
            "c2": -k * error.e2,
            "T_gal_mean_arcsec2": float(np.nanmean(t["T_gal"])),
            "T_psf_mean_arcsec2": float(np.nanmean(t["T_psf"])),
            "T_reconv_mean_arcsec2": float(np.nanmean(t["T_reconv"])),
            "definition": "K = sum(T_psf/(T_gal+T_reconv)) / sum(T_gal/(T_gal+T_reconv)), adaptive moments; "
            "m = K*size, c_i = -K*e_i (first order)",
        },
    }
