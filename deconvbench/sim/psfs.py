"""PSF families, registered with their ``params`` columns and draws.

Every PSF is a GalSim profile in arcsec built from one ``params`` row. Families:

* ``gaussian``, ``moffat``, ``kolmogorov``: FWHM (arcsec) (and Moffat beta);
* ``optical``: Airy with central obscuration and low-order Zernike aberrations (waves):
  defocus, astigmatism, coma, trefoil, spherical (``galsim.OpticalPSF``);
* ``ground``: Kolmogorov atmosphere ⊗ optical;
* ``psfex``: an empirical PSFEx model (e.g. SuperBIT) evaluated at a focal-plane
  position (image pixels). PSFEx models already include the pixel response, so stamps
  at the model's pixel scale are drawn without another pixel (see :func:`includes_pixel`);
* ``psfex-tapered``: the same, convolved with the round Gaussian whose transform is
  ``psfex_taper_edge`` at the model's maxk. GalSim cuts a PSFEx model's transform hard at
  its maxk (still ~6e-4 of K(0) there): the image of every stamp then rings, differently on
  different FFT grids, and differs by 0.2–2 % of the peak from the model's real-space
  image that ``drawImage`` gives for the PSF itself; the taper makes the cut smooth, at
  the price of a wider PSF (+6–17 % FWHM at 0.01 on the SuperBIT models).

Every family's profile is then sheared by the row's (``psf_g1``, ``psf_g2``). The
*effective* PSF (optics ⊗ atmosphere ⊗ pixel) is what ends up in the ``psf`` images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import galsim
import galsim.des
import numpy as np

from ..cards import PSFEX_FAMILIES, psf_models_dir
from .galaxies import _as_str, _uniform
from .registry import Component, Param, register

ABERRATIONS = ("defocus", "astig1", "astig2", "coma1", "coma2", "trefoil1", "trefoil2", "spher")
_NOLL = {"defocus": 4, "astig1": 5, "astig2": 6, "coma1": 7, "coma2": 8, "trefoil1": 9, "trefoil2": 10, "spher": 11}

FWHM = Param("psf_fwhm_arcsec", "f8", "arcsec", "FWHM of the Gaussian/Moffat/Kolmogorov (atmosphere) profile")
BETA = Param("psf_beta", "f8", "", "Moffat index beta")
LOD = Param("psf_lam_over_diam_arcsec", "f8", "arcsec", "lambda/D of the optical (Airy) PSF")
OBSCURATION = Param("psf_obscuration", "f8", "", "linear central obscuration of the aperture (fraction of D)")
ABERRATION_PARAMS = tuple(
    Param(f"psf_{name}", "f8", "waves", f"Zernike coefficient {name} (Noll index {_NOLL[name]})")
    for name in ABERRATIONS
)
PSFEX = (
    Param("psfex_model", "S64", "", "PSFEx model file, relative to datasets/psf-models/"),
    Param("psfex_x", "f8", "pixel", "focal-plane x position at which the model is evaluated (image pixels)"),
    Param("psfex_y", "f8", "pixel", "focal-plane y position at which the model is evaluated (image pixels)"),
    Param("psfex_pixel_scale_arcsec", "f8", "arcsec/pixel", "pixel scale of the PSFEx model"),
)
PSFEX_TAPER = Param(
    "psfex_taper_edge", "f8", "", "value at the PSFEx model's maxk of the Gaussian taper's transform (psfex-tapered)"
)


@functools.lru_cache(maxsize=32)
def _psfex_model(name: str, pixel_scale_arcsec: float) -> galsim.des.DES_PSFEx:
    path = Path(name)
    if not path.is_absolute():
        path = psf_models_dir() / name
    return galsim.des.DES_PSFEx(str(path), wcs=galsim.PixelScale(pixel_scale_arcsec))


def _draw_fwhm(rng, spec, base) -> dict:
    return {"psf_fwhm_arcsec": _uniform(rng, spec.fwhm_arcsec)}


def _draw_moffat(rng, spec, base) -> dict:
    return {"psf_fwhm_arcsec": _uniform(rng, spec.fwhm_arcsec), "psf_beta": _uniform(rng, spec.moffat_beta)}


def _draw_optical(rng, spec, base) -> dict:
    values = {
        "psf_lam_over_diam_arcsec": _uniform(rng, spec.lam_over_diam_arcsec),
        "psf_obscuration": _uniform(rng, spec.obscuration),
    }
    rms = _uniform(rng, spec.aberration_rms_waves)
    aberrations = rng.normal(0.0, 1.0, size=len(ABERRATIONS))
    aberrations *= rms / max(math.sqrt(np.mean(aberrations**2)), 1e-12)
    values.update({f"psf_{name}": float(v) for name, v in zip(ABERRATIONS, aberrations, strict=True)})
    return values


def _draw_ground(rng, spec, base) -> dict:
    return {**_draw_fwhm(rng, spec, base), **_draw_optical(rng, spec, base)}


def _draw_psfex(rng, spec, base) -> dict:
    return {
        "psfex_model": spec.psfex_models[int(rng.integers(len(spec.psfex_models)))],
        "psfex_x": float(rng.uniform(0.0, spec.psfex_field_pixels[0])),
        "psfex_y": float(rng.uniform(0.0, spec.psfex_field_pixels[1])),
        "psfex_pixel_scale_arcsec": spec.psfex_pixel_scale_arcsec,
    }


def _draw_psfex_tapered(rng, spec, base) -> dict:
    return {**_draw_psfex(rng, spec, base), "psfex_taper_edge": spec.psfex_taper_edge}


def _optical(row: Mapping[str, Any], gsparams: galsim.GSParams) -> galsim.GSObject:
    # Zernike coefficients in waves, Noll ordering starting at index 4 (defocus).
    aberrations = [0.0] * 4 + [float(row[f"psf_{name}"]) for name in ABERRATIONS]
    return galsim.OpticalPSF(
        lam_over_diam=float(row["psf_lam_over_diam_arcsec"]),
        obscuration=float(row["psf_obscuration"]),
        aberrations=aberrations,
        gsparams=gsparams,
    )


def _gaussian(row, gsp):
    return galsim.Gaussian(fwhm=float(row["psf_fwhm_arcsec"]), gsparams=gsp)


def _moffat(row, gsp):
    return galsim.Moffat(beta=float(row["psf_beta"]), fwhm=float(row["psf_fwhm_arcsec"]), gsparams=gsp)


def _kolmogorov(row, gsp):
    return galsim.Kolmogorov(fwhm=float(row["psf_fwhm_arcsec"]), gsparams=gsp)


def _ground(row, gsp):
    return galsim.Convolve([_kolmogorov(row, gsp), _optical(row, gsp)])


def _psfex(row, gsp):
    model = _psfex_model(_as_str(row["psfex_model"]), float(row["psfex_pixel_scale_arcsec"]))
    return model.getPSF(galsim.PositionD(float(row["psfex_x"]), float(row["psfex_y"])), gsparams=gsp)


def _psfex_tapered(row, gsp):
    psf = _psfex(row, gsp)
    sigma_arcsec = math.sqrt(-2.0 * math.log(float(row["psfex_taper_edge"]))) / psf.maxk
    return galsim.Convolve([psf, galsim.Gaussian(sigma=sigma_arcsec, gsparams=gsp)], gsparams=gsp)


for _component in (
    Component("psf", "gaussian", (FWHM,), _draw_fwhm, _gaussian),
    Component("psf", "moffat", (FWHM, BETA), _draw_moffat, _moffat),
    Component("psf", "kolmogorov", (FWHM,), _draw_fwhm, _kolmogorov),
    Component("psf", "optical", (LOD, OBSCURATION, *ABERRATION_PARAMS), _draw_optical, _optical),
    Component("psf", "ground", (FWHM, LOD, OBSCURATION, *ABERRATION_PARAMS), _draw_ground, _ground),
    Component("psf", "psfex", PSFEX, _draw_psfex, _psfex),
    Component("psf", "psfex-tapered", (*PSFEX, PSFEX_TAPER), _draw_psfex_tapered, _psfex_tapered),
):
    register(_component)


def build_psf(row: Mapping[str, Any], gsparams: galsim.GSParams) -> galsim.GSObject:
    """GalSim profile of the PSF described by ``row`` (arcsec), without the pixel."""
    from .registry import psf_family

    family = _as_str(row["psf_family"])
    try:
        component = psf_family(family)
    except KeyError:
        raise ValueError(f"unknown PSF family {family!r}") from None
    psf = component.build(row, gsparams)
    g1, g2 = float(row["psf_g1"]), float(row["psf_g2"])
    if g1 or g2:
        psf = psf.shear(g1=g1, g2=g2)
    return psf


def includes_pixel(row: Mapping[str, Any], pixel_scale_arcsec: float) -> bool:
    """True for PSFEx models drawn at their own pixel scale: they include that pixel already.

    A PSFEx model drawn at another pixel scale is treated as an optical PSF (its own pixel
    response becomes a small extra blur) and the stamp's pixel is applied on top."""
    if _as_str(row["psf_family"]) in PSFEX_FAMILIES:
        return abs(float(row["psfex_pixel_scale_arcsec"]) - pixel_scale_arcsec) < 1e-9
    return False


def draw_method(row: Mapping[str, Any], pixel_scale_arcsec: float) -> str:
    """GalSim draw method for the PSF and galaxy ⊗ PSF: 'no_pixel' or 'auto'."""
    return "no_pixel" if includes_pixel(row, pixel_scale_arcsec) else "auto"
