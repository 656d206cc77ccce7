"""Galaxy profiles, registered with their ``params`` columns and draws.

A galaxy is built from one row of the ``params`` table: profile, half-light radius
(arcsec), flux (counts), intrinsic shape (reduced shear g), a rotation (degrees,
counter-clockwise), the applied constant shear, and a centroid offset (pixels). Order of
operations: intrinsic profile → intrinsic shear → rotation → constant shear → shift,
i.e. a point x of the intrinsic profile lands at ``A x + shift`` with
``A = S(shear) R(rotation) S(intrinsic g)`` (see :func:`galaxy_jacobian`). The
unconvolved galaxy is never drawn by itself (cuspy profiles such as de Vaucouleurs would
need multi-GB FFTs); it is always convolved with a PSF first.

Profiles (each draws its own columns from its own random stream, see
:mod:`deconvbench.sim.registry`): ``exponential``, ``gaussian``, ``devaucouleurs``
(truncated), ``bulge+disk`` (exponential disk + truncated de Vaucouleurs bulge),
``disk+knots`` (exponential disk + ``galsim.RandomKnots`` star-forming knots),
``sersic`` (truncated Sérsic profile of index n; flux and half-light radius are those of
the truncated profile, GalSim's ``flux_untruncated=False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import galsim
import numpy as np

from .registry import Component, Param, register


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _uniform(rng: np.random.Generator, interval) -> float:
    return float(rng.uniform(interval.min, interval.max))


TRUNC = Param("gal_trunc_arcsec", "f8", "arcsec", "truncation radius of the de Vaucouleurs profile (bulge)")
BULGE_FRACTION = Param("gal_bulge_fraction", "f8", "", "fraction of the flux in the de Vaucouleurs bulge")
BULGE_HLR = Param("gal_bulge_hlr_arcsec", "f8", "arcsec", "half-light radius of the bulge")
KNOTS_N = Param("gal_knots_n", "i4", "", "number of RandomKnots point sources")
KNOTS_FRACTION = Param("gal_knots_flux_fraction", "f8", "", "fraction of the flux in the knots")
KNOTS_SEED = Param("gal_knots_seed", "u8", "", "seed of the knots' positions (galsim.BaseDeviate)")
SERSIC_N = Param("gal_sersic_n", "f8", "", "Sérsic index n (rounded to the card's sersic.index_step)")
SERSIC_TRUNC = Param(
    "gal_sersic_trunc_arcsec",
    "f8",
    "arcsec",
    "truncation radius of the Sérsic profile (flux, hlr of the truncated one)",
)


def _no_draw(rng, spec, base) -> dict:
    return {}


def _draw_devaucouleurs(rng, spec, base) -> dict:
    return {"gal_trunc_arcsec": spec.devaucouleurs_trunc_factor * base["gal_hlr_arcsec"]}


def _draw_bulge_disk(rng, spec, base) -> dict:
    fraction = _uniform(rng, spec.bulge_fraction)
    bulge_hlr = base["gal_hlr_arcsec"] * _uniform(rng, spec.bulge_to_disk_size)
    return {
        "gal_bulge_fraction": fraction,
        "gal_bulge_hlr_arcsec": bulge_hlr,
        "gal_trunc_arcsec": spec.devaucouleurs_trunc_factor * bulge_hlr,
    }


def _draw_disk_knots(rng, spec, base) -> dict:
    return {
        "gal_knots_n": int(round(_uniform(rng, spec.knots_number))),
        "gal_knots_flux_fraction": _uniform(rng, spec.knots_flux_fraction),
        "gal_knots_seed": int(rng.integers(1, 2**31 - 1)),
    }


def sersic_index(rng: np.random.Generator, spec) -> float:
    """Sérsic index: log-normal ``spec.index`` (truncated to its [min, max]), rounded to a
    multiple of ``spec.index_step`` and kept inside [min, max]."""
    dist = spec.index
    for _ in range(100):
        n = float(np.exp(rng.normal(math.log(dist.median), dist.sigma)))
        if dist.min <= n <= dist.max:
            break
    else:
        n = dist.median
    if spec.index_step > 0:
        n = round(n / spec.index_step) * spec.index_step
        n = min(max(n, dist.min), dist.max)
    return round(n, 9)


def _draw_sersic(rng, spec, base) -> dict:
    return {
        "gal_sersic_n": sersic_index(rng, spec.sersic),
        "gal_sersic_trunc_arcsec": spec.sersic.trunc_factor * base["gal_hlr_arcsec"],
    }


def _exponential(row, gsp):
    return galsim.Exponential(half_light_radius=float(row["gal_hlr_arcsec"]), flux=float(row["gal_flux"]), gsparams=gsp)


def _gaussian(row, gsp):
    return galsim.Gaussian(half_light_radius=float(row["gal_hlr_arcsec"]), flux=float(row["gal_flux"]), gsparams=gsp)


def truncated_devaucouleurs(hlr: float, trunc: float, flux: float, gsp: galsim.GSParams) -> galsim.GSObject:
    """De Vaucouleurs profile of half-light radius ``hlr`` truncated at ``trunc`` (arcsec).

    Built at unit size and dilated by ``hlr`` (the same profile): GalSim then reuses one
    cached radial table for every galaxy with the same ``trunc/hlr`` instead of
    recomputing it (tens of ms) for each size."""
    ratio = round(trunc / hlr, 9)
    return galsim.DeVaucouleurs(half_light_radius=1.0, trunc=ratio, flux=flux, gsparams=gsp).dilate(hlr)


def truncated_sersic(n: float, hlr: float, trunc: float, flux: float, gsp: galsim.GSParams) -> galsim.GSObject:
    """Sérsic profile of index ``n`` and half-light radius ``hlr`` truncated at ``trunc``
    (arcsec); ``flux`` and ``hlr`` are those of the truncated profile.

    Built at unit size and dilated by ``hlr``, so GalSim reuses one radial table per
    (n, trunc/hlr) instead of recomputing it for each size (see
    :func:`truncated_devaucouleurs`)."""
    ratio = round(trunc / hlr, 9)
    return galsim.Sersic(n, half_light_radius=1.0, trunc=ratio, flux=flux, flux_untruncated=False, gsparams=gsp).dilate(
        hlr
    )


def _sersic(row, gsp):
    return truncated_sersic(
        float(row["gal_sersic_n"]),
        float(row["gal_hlr_arcsec"]),
        float(row["gal_sersic_trunc_arcsec"]),
        float(row["gal_flux"]),
        gsp,
    )


def _devaucouleurs(row, gsp):
    return truncated_devaucouleurs(
        float(row["gal_hlr_arcsec"]), float(row["gal_trunc_arcsec"]), float(row["gal_flux"]), gsp
    )


def _bulge_disk(row, gsp):
    flux, bf = float(row["gal_flux"]), float(row["gal_bulge_fraction"])
    disk = galsim.Exponential(half_light_radius=float(row["gal_hlr_arcsec"]), flux=(1.0 - bf) * flux, gsparams=gsp)
    bulge = truncated_devaucouleurs(float(row["gal_bulge_hlr_arcsec"]), float(row["gal_trunc_arcsec"]), bf * flux, gsp)
    return galsim.Add([disk, bulge], gsparams=gsp)


def _disk_knots(row, gsp):
    flux, kf, hlr = float(row["gal_flux"]), float(row["gal_knots_flux_fraction"]), float(row["gal_hlr_arcsec"])
    disk = galsim.Exponential(half_light_radius=hlr, flux=(1.0 - kf) * flux, gsparams=gsp)
    knots = galsim.RandomKnots(
        npoints=int(row["gal_knots_n"]),
        half_light_radius=hlr,
        flux=kf * flux,
        rng=galsim.BaseDeviate(int(row["gal_knots_seed"])),
        gsparams=gsp,
    )
    return galsim.Add([disk, knots], gsparams=gsp)


for _component in (
    Component("galaxy", "exponential", (), _no_draw, _exponential),
    Component("galaxy", "gaussian", (), _no_draw, _gaussian),
    Component("galaxy", "devaucouleurs", (TRUNC,), _draw_devaucouleurs, _devaucouleurs),
    Component("galaxy", "bulge+disk", (BULGE_FRACTION, BULGE_HLR, TRUNC), _draw_bulge_disk, _bulge_disk),
    Component("galaxy", "disk+knots", (KNOTS_N, KNOTS_FRACTION, KNOTS_SEED), _draw_disk_knots, _disk_knots),
    Component("galaxy", "sersic", (SERSIC_N, SERSIC_TRUNC), _draw_sersic, _sersic),
):
    register(_component)


def intrinsic_galaxy(row: Mapping[str, Any], gsparams: galsim.GSParams) -> galsim.GSObject:
    """The galaxy before shape, rotation, shear and shift (arcsec, counts)."""
    from .registry import galaxy_profile

    try:
        component = galaxy_profile(_as_str(row["gal_profile"]))
    except KeyError:
        raise ValueError(f"unknown galaxy profile {_as_str(row['gal_profile'])!r}") from None
    return component.build(row, gsparams)


def galaxy_jacobian(row: Mapping[str, Any]) -> np.ndarray:
    """2×2 matrix A mapping intrinsic to final positions (arcsec): A = S(shear) R(rot) S(g)."""
    shape = galsim.Shear(g1=float(row["gal_g1"]), g2=float(row["gal_g2"])).getMatrix()
    theta = math.radians(float(row["rotation_deg"]))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shear = galsim.Shear(g1=float(row["shear_g1"]), g2=float(row["shear_g2"])).getMatrix()
    return shear @ rotation @ shape


def galaxy_shift_arcsec(row: Mapping[str, Any], pixel_scale_arcsec: float) -> tuple[float, float]:
    return float(row["offset_x_pix"]) * pixel_scale_arcsec, float(row["offset_y_pix"]) * pixel_scale_arcsec


def place(profile: galsim.GSObject, row: Mapping[str, Any], pixel_scale_arcsec: float) -> galsim.GSObject:
    """Apply shape, rotation, constant shear and shift (GalSim's own operations)."""
    gal = profile.shear(g1=float(row["gal_g1"]), g2=float(row["gal_g2"]))
    rotation = float(row["rotation_deg"])
    if rotation:
        gal = gal.rotate(rotation * galsim.degrees)
    g1, g2 = float(row["shear_g1"]), float(row["shear_g2"])
    if g1 or g2:
        gal = gal.shear(g1=g1, g2=g2)
    dx, dy = galaxy_shift_arcsec(row, pixel_scale_arcsec)
    if dx or dy:
        gal = gal.shift(dx, dy)
    return gal


def build_galaxy(row: Mapping[str, Any], pixel_scale_arcsec: float, gsparams: galsim.GSParams) -> galsim.GSObject:
    """GalSim profile of the galaxy described by ``row`` (units: arcsec, counts)."""
    return place(intrinsic_galaxy(row, gsparams), row, pixel_scale_arcsec)


def galaxy_parts(
    row: Mapping[str, Any],
    pixel_scale_arcsec: float,
    gsparams: galsim.GSParams,
    intrinsic: galsim.GSObject | None = None,
):
    """The galaxy split into a smooth GalSim profile and point sources, both placed.

    Returns ``(smooth, points_xy, points_flux)``: ``smooth`` a GSObject or None,
    ``points_xy`` (J, 2) final positions (x, y) in arcsec and ``points_flux`` (J,) counts.
    Point sources are the ``galsim.RandomKnots`` components of a sum (GalSim's own
    positions, mapped by :func:`galaxy_jacobian` and the shift); everything else stays
    a GalSim profile. ``smooth`` + points is the same profile as :func:`build_galaxy`.
    ``intrinsic``: :func:`intrinsic_galaxy` of ``row`` if already built (the stamps of a
    metacal galaxy share it)."""
    if intrinsic is None:
        intrinsic = intrinsic_galaxy(row, gsparams)
    parts = intrinsic.obj_list if isinstance(intrinsic, galsim.Sum) else [intrinsic]
    knots = [p for p in parts if isinstance(p, galsim.RandomKnots)]
    smooth_parts = [p for p in parts if not isinstance(p, galsim.RandomKnots)]
    smooth = None
    if smooth_parts:
        smooth = smooth_parts[0] if len(smooth_parts) == 1 else galsim.Add(smooth_parts, gsparams=gsparams)
        smooth = place(smooth, row, pixel_scale_arcsec)
    if not knots:
        return smooth, np.zeros((0, 2)), np.zeros(0)
    xy = np.concatenate([np.asarray(k.points, dtype=np.float64) for k in knots])
    flux = np.concatenate([np.full(k.npoints, k.flux / k.npoints) for k in knots])
    xy = xy @ galaxy_jacobian(row).T + np.asarray(galaxy_shift_arcsec(row, pixel_scale_arcsec))
    return smooth, xy, flux
