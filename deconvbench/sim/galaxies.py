"""Galaxy profiles.

A galaxy is built from one row of the ``params`` table (see :mod:`deconvbench.sim.sampling`):
profile type, half-light radius (arcsec), flux, intrinsic shape (reduced shear g), a
rotation (degrees, counter-clockwise), the applied constant shear, and a centroid offset
(pixels). Order of operations: intrinsic profile → intrinsic shear → rotation → constant
shear → shift. The unconvolved galaxy is never drawn by itself (cuspy profiles such as
de Vaucouleurs would need multi-GB FFTs); it is always convolved with a PSF first.
"""

from __future__ import annotations

from typing import Any, Mapping

import galsim


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def build_galaxy(row: Mapping[str, Any], pixel_scale_arcsec: float, gsparams: galsim.GSParams) -> galsim.GSObject:
    """GalSim profile of the galaxy described by ``row`` (units: arcsec, counts)."""
    profile = _as_str(row["gal_profile"])
    hlr = float(row["gal_hlr_arcsec"])
    flux = float(row["gal_flux"])
    gsp = dict(gsparams=gsparams)
    if profile == "exponential":
        gal = galsim.Exponential(half_light_radius=hlr, flux=flux, **gsp)
    elif profile == "gaussian":
        gal = galsim.Gaussian(half_light_radius=hlr, flux=flux, **gsp)
    elif profile == "devaucouleurs":
        gal = galsim.DeVaucouleurs(half_light_radius=hlr, flux=flux, trunc=float(row["gal_trunc_arcsec"]), **gsp)
    elif profile == "bulge+disk":
        bf = float(row["gal_bulge_fraction"])
        disk = galsim.Exponential(half_light_radius=hlr, flux=(1.0 - bf) * flux, **gsp)
        bulge = galsim.DeVaucouleurs(
            half_light_radius=float(row["gal_bulge_hlr_arcsec"]),
            flux=bf * flux,
            trunc=float(row["gal_trunc_arcsec"]),
            **gsp,
        )
        gal = galsim.Add([disk, bulge], gsparams=gsparams)
    elif profile == "disk+knots":
        kf = float(row["gal_knots_flux_fraction"])
        disk = galsim.Exponential(half_light_radius=hlr, flux=(1.0 - kf) * flux, **gsp)
        knots = galsim.RandomKnots(
            npoints=int(row["gal_knots_n"]),
            half_light_radius=hlr,
            flux=kf * flux,
            rng=galsim.BaseDeviate(int(row["gal_knots_seed"])),
            gsparams=gsparams,
        )
        gal = galsim.Add([disk, knots], gsparams=gsparams)
    else:
        raise ValueError(f"unknown galaxy profile {profile!r}")
    gal = gal.shear(g1=float(row["gal_g1"]), g2=float(row["gal_g2"]))
    rotation = float(row["rotation_deg"])
    if rotation:
        gal = gal.rotate(rotation * galsim.degrees)
    g1, g2 = float(row["shear_g1"]), float(row["shear_g2"])
    if g1 or g2:
        gal = gal.shear(g1=g1, g2=g2)
    dx, dy = float(row["offset_x_pix"]), float(row["offset_y_pix"])
    if dx or dy:
        gal = gal.shift(dx * pixel_scale_arcsec, dy * pixel_scale_arcsec)
    return gal
