"""Registry of galaxy profiles and PSF families, their ``params`` columns and random streams.

Every galaxy profile and PSF family is a :class:`Component`: a name, the ``params``
columns it owns (each a :class:`Param` with dtype, unit and description), a function
that draws those parameters from a random generator, and a function that builds the
GalSim profile from one ``params`` row.

Stability rules (what keeps published checksums fixed when the catalogue grows):

* each component draws from its own random sub-stream, ``SeedSequence(split seed,
  spawn_key=(stream_key(name), index))``, where ``index`` is the galaxy index for galaxy
  profiles and the PSF index for PSF families; adding a component, or a draw to one
  component, changes no draw of any other;
* the columns shared by every card (:data:`COMMON_COLUMNS`) come from their own named
  streams too (``galaxy``, ``shape``, ``offset``, ``psf-shape``, ``noise``,
  ``assign-profile``, ``assign-family``);
* a card's ``params`` table holds the common columns and only the columns of the
  profiles and families that the card uses (sorted by name), so registering a new
  component or column leaves every existing card's table, and its checksum, unchanged.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Param:
    """One column of the ``params`` table."""

    name: str
    dtype: str
    unit: str
    description: str


@dataclass(frozen=True)
class Component:
    """A galaxy profile (``kind="galaxy"``) or PSF family (``kind="psf"``).

    ``draw(rng, spec, base)`` returns the values of ``params`` for one galaxy (or PSF),
    ``spec`` being the card's ``galaxy`` (or ``psf``) table and ``base`` the common values
    already drawn (e.g. ``gal_hlr_arcsec``). ``build(row, context)`` returns the GalSim
    profile described by a ``params`` row."""

    kind: str
    name: str
    params: tuple[Param, ...]
    draw: Callable[[np.random.Generator, Any, Mapping[str, Any]], dict[str, Any]]
    build: Callable[..., Any]


COMMON_COLUMNS: tuple[Param, ...] = (
    Param("index", "i8", "", "stamp index in the split (0-based)"),
    Param("group", "i8", "", "galaxy index; a metacal galaxy has 4 stamps (slots)"),
    Param("slot", "i1", "", "stamp within its galaxy: metacal (+g,0°), (-g,0°), (+g,90°), (-g,90°); else 0"),
    Param(
        "psf_index", "i8", "", "PSF index: galaxies psf_index·G … psf_index·G+G-1 share one PSF (G = galaxies_per_psf)"
    ),
    Param("snr_level", "f8", "", "requested matched-filter SNR (inf = noiseless)"),
    Param("snr", "f8", "", "matched-filter SNR of the stored stamp: sqrt(Σ noiseless²)/noise_sigma"),
    Param("noise_sigma", "f8", "counts", "standard deviation of the Gaussian noise per pixel"),
    Param("noise_seed", "u8", "", "seed of the stamp's unit noise field (shared by ±g stamps of a metacal galaxy)"),
    Param("gal_profile", "S16", "", "galaxy profile name"),
    Param("gal_flux", "f8", "counts", "total galaxy flux"),
    Param("gal_hlr_arcsec", "f8", "arcsec", "half-light radius of the galaxy (of its disk for composite profiles)"),
    Param("gal_g1", "f8", "", "intrinsic shape, reduced shear component g1"),
    Param("gal_g2", "f8", "", "intrinsic shape, reduced shear component g2"),
    Param("rotation_deg", "f8", "deg", "rotation applied after the intrinsic shape (counter-clockwise)"),
    Param("shear_g1", "f8", "", "constant (lensing) reduced shear g1 applied after rotation"),
    Param("shear_g2", "f8", "", "constant (lensing) reduced shear g2 applied after rotation"),
    Param("offset_x_pix", "f8", "pixel", "galaxy centroid offset along x (columns) from pixel n//2"),
    Param("offset_y_pix", "f8", "pixel", "galaxy centroid offset along y (rows) from pixel n//2"),
    Param("psf_family", "S16", "", "PSF family name"),
    Param("psf_g1", "f8", "", "PSF shear (reduced shear g1) applied to the family's profile"),
    Param("psf_g2", "f8", "", "PSF shear (reduced shear g2) applied to the family's profile"),
)

GALAXY_PROFILES: dict[str, Component] = {}
PSF_FAMILIES: dict[str, Component] = {}


def register(component: Component) -> Component:
    """Add a component; a column name may be shared only with an identical definition."""
    table = GALAXY_PROFILES if component.kind == "galaxy" else PSF_FAMILIES
    if component.kind not in ("galaxy", "psf"):
        raise ValueError(f"component kind must be 'galaxy' or 'psf', got {component.kind!r}")
    known = {p.name: p for p in all_params()}
    for param in component.params:
        if param.name in known and known[param.name] != param:
            raise ValueError(f"column {param.name!r} is already registered with another definition")
    table[component.name] = component
    return component


def unregister(kind: str, name: str) -> None:
    (GALAXY_PROFILES if kind == "galaxy" else PSF_FAMILIES).pop(name, None)


def _ensure_loaded() -> None:
    # The built-in components register themselves on import.
    from . import galaxies, psfs  # noqa: F401


def galaxy_profile(name: str) -> Component:
    _ensure_loaded()
    return GALAXY_PROFILES[name]


def psf_family(name: str) -> Component:
    _ensure_loaded()
    return PSF_FAMILIES[name]


def galaxy_profile_names() -> list[str]:
    _ensure_loaded()
    return list(GALAXY_PROFILES)


def psf_family_names() -> list[str]:
    _ensure_loaded()
    return list(PSF_FAMILIES)


def all_params() -> list[Param]:
    """Every registered column once: common columns, then component columns by name."""
    seen = {p.name: p for p in COMMON_COLUMNS}
    extra: dict[str, Param] = {}
    for component in [*GALAXY_PROFILES.values(), *PSF_FAMILIES.values()]:
        for param in component.params:
            if param.name not in seen:
                extra.setdefault(param.name, param)
    return [*COMMON_COLUMNS, *(extra[name] for name in sorted(extra))]


def params_columns(profiles: Iterable[str], families: Iterable[str]) -> list[Param]:
    """Columns of a card using ``profiles`` and ``families``: common, then theirs by name."""
    _ensure_loaded()
    common = {p.name for p in COMMON_COLUMNS}
    extra: dict[str, Param] = {}
    for component in [*(GALAXY_PROFILES[p] for p in profiles), *(PSF_FAMILIES[f] for f in families)]:
        for param in component.params:
            if param.name not in common:
                extra.setdefault(param.name, param)
    return [*COMMON_COLUMNS, *(extra[name] for name in sorted(extra))]


def params_dtype(profiles: Iterable[str], families: Iterable[str]) -> np.dtype:
    return np.dtype([(p.name, p.dtype) for p in params_columns(profiles, families)])


@functools.cache
def stream_key(name: str) -> int:
    """32-bit key of a named random stream (first 4 bytes of sha256(name), little-endian)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def substream(split_seed: int, name: str, index: int) -> np.random.Generator:
    """Generator of stream ``name`` for item ``index`` (galaxy or PSF) of a split."""
    return np.random.default_rng(np.random.SeedSequence(int(split_seed), spawn_key=(stream_key(name), int(index))))


def params_schema() -> dict:
    """JSON-able description of every registered column (``datasets/params-schema.json``)."""
    _ensure_loaded()
    owners: dict[str, list[str]] = {}
    for kind, table in (("galaxy", GALAXY_PROFILES), ("psf", PSF_FAMILIES)):
        for component in table.values():
            for param in component.params:
                owners.setdefault(param.name, []).append(f"{kind}:{component.name}")
    return {
        "description": "Columns of the params table of a deconvbench dataset file. Common columns are in "
        "every file; the others only when the card uses one of the listed profiles/families "
        "(zero in rows of other profiles/families).",
        "columns": [
            {
                "name": p.name,
                "dtype": np.dtype(p.dtype).str,
                "unit": p.unit,
                "description": p.description,
                "used_by": owners.get(p.name, ["common"]),
            }
            for p in all_params()
        ],
    }


if __name__ == "__main__":  # python -m deconvbench.sim.registry > datasets/params-schema.json
    import json

    from deconvbench.sim import registry  # the imported module holds the registrations, not __main__

    print(json.dumps(registry.params_schema(), indent=2, ensure_ascii=False))
