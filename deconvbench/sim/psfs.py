"""PSF families.

Every PSF is a GalSim profile in arcsec built from one ``params`` row. Families:

* ``gaussian``, ``moffat``, ``kolmogorov``: FWHM (arcsec) and shear (g1, g2);
* ``optical``: Airy with central obscuration and low-order Zernike aberrations (waves):
  defocus, astigmatism, coma, trefoil, spherical (``galsim.OpticalPSF``), then sheared;
* ``ground``: Kolmogorov atmosphere ⊗ optical, then sheared;
* ``psfex``: an empirical PSFEx model (e.g. SuperBIT) evaluated at a focal-plane
  position (image pixels). PSFEx models already include the pixel response, so stamps
  at the model's pixel scale are drawn with ``method='no_pixel'`` (see :func:`draw_method`).

The *effective* PSF (optics ⊗ atmosphere ⊗ pixel) is what ends up in the ``psf`` images.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import galsim
import galsim.des  # noqa: F401  (PSFEx reader; not imported by `import galsim`)

from ..cards import psf_models_dir
from .galaxies import _as_str

ABERRATIONS = ("defocus", "astig1", "astig2", "coma1", "coma2", "trefoil1", "trefoil2", "spher")


@functools.lru_cache(maxsize=32)
def _psfex_model(name: str, pixel_scale_arcsec: float) -> "galsim.des.DES_PSFEx":
    path = Path(name)
    if not path.is_absolute():
        path = psf_models_dir() / name
    return galsim.des.DES_PSFEx(str(path), wcs=galsim.PixelScale(pixel_scale_arcsec))


def _optical(row: Mapping[str, Any], gsparams: galsim.GSParams) -> galsim.GSObject:
    # Zernike coefficients in waves, Noll ordering starting at index 4 (defocus).
    aberrations = [0.0] * 4 + [float(row[f"psf_{name}"]) for name in ABERRATIONS]
    return galsim.OpticalPSF(
        lam_over_diam=float(row["psf_lam_over_diam_arcsec"]),
        obscuration=float(row["psf_obscuration"]),
        aberrations=aberrations,
        gsparams=gsparams,
    )


def build_psf(row: Mapping[str, Any], gsparams: galsim.GSParams) -> galsim.GSObject:
    """GalSim profile of the PSF described by ``row`` (arcsec)."""
    family = _as_str(row["psf_family"])
    fwhm = float(row["psf_fwhm_arcsec"])
    if family == "gaussian":
        psf = galsim.Gaussian(fwhm=fwhm, gsparams=gsparams)
    elif family == "moffat":
        psf = galsim.Moffat(beta=float(row["psf_beta"]), fwhm=fwhm, gsparams=gsparams)
    elif family == "kolmogorov":
        psf = galsim.Kolmogorov(fwhm=fwhm, gsparams=gsparams)
    elif family == "optical":
        psf = _optical(row, gsparams)
    elif family == "ground":
        psf = galsim.Convolve([galsim.Kolmogorov(fwhm=fwhm, gsparams=gsparams), _optical(row, gsparams)])
    elif family == "psfex":
        model = _psfex_model(_as_str(row["psfex_model"]), float(row["psfex_pixel_scale_arcsec"]))
        pos = galsim.PositionD(float(row["psfex_x"]), float(row["psfex_y"]))
        psf = model.getPSF(pos, gsparams=gsparams)
    else:
        raise ValueError(f"unknown PSF family {family!r}")
    g1, g2 = float(row["psf_g1"]), float(row["psf_g2"])
    if g1 or g2:
        psf = psf.shear(g1=g1, g2=g2)
    return psf


def draw_method(row: Mapping[str, Any], pixel_scale_arcsec: float) -> str:
    """GalSim draw method: 'no_pixel' for PSFEx models drawn at their own pixel scale
    (they include that pixel already), 'auto' (convolve with the pixel) otherwise. A PSFEx
    model drawn at another pixel scale is treated as an optical PSF (its own pixel
    response becomes a small extra blur) and the stamp's pixel is applied on top."""
    if _as_str(row["psf_family"]) == "psfex":
        if abs(float(row["psfex_pixel_scale_arcsec"]) - pixel_scale_arcsec) < 1e-9:
            return "no_pixel"
    return "auto"
