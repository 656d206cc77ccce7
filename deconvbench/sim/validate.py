"""``validate-render``: the fast renderer against GalSim's ``drawImage``, stamp by stamp.

For the first N stamps of a split, renders ``noiseless``, ``truth`` and ``psf`` with
:func:`deconvbench.sim.render.render_noiseless` and with
:func:`deconvbench.sim.reference.reference_stamps`, and reports per PSF family and per
galaxy profile: the largest and the rms over stamps of max|fast − reference| / peak
(peak = the reference stamp's maximum), and the range of the flux ratio
Σ fast / Σ reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ..cards import DatasetCard
from .reference import REFERENCE_FFT_FACTOR, reference_stamps
from .render import kgrid, render_noiseless
from .sampling import draw_galaxies, stamps_per_galaxy

IMAGES = ("noiseless", "truth", "psf")


@dataclass
class StampErrors:
    """Per-stamp errors of one image kind: max|Δ|/peak, rms(Δ)/peak and flux ratio."""

    max_rel: np.ndarray
    rms_rel: np.ndarray
    flux_ratio: np.ndarray


@dataclass
class ValidationRow:
    """Errors of one image kind over the stamps of one PSF family or galaxy profile."""

    by: str  # "psf_family" or "gal_profile"
    name: str
    image: str
    n: int
    max_rel: float  # largest max|Δ|/peak over the stamps
    rms_rel: float  # rms over the stamps of max|Δ|/peak
    flux_ratio_min: float
    flux_ratio_max: float

    def passes(self, tolerance: float) -> bool:
        return (
            self.max_rel <= tolerance and max(abs(self.flux_ratio_min - 1), abs(self.flux_ratio_max - 1)) <= tolerance
        )


def stamp_errors(fast: np.ndarray, reference: np.ndarray) -> StampErrors:
    """Errors of a batch of stamps (B, n, n) relative to each reference stamp's peak."""
    peak = np.max(np.abs(reference), axis=(-2, -1))
    diff = fast - reference
    return StampErrors(
        max_rel=np.max(np.abs(diff), axis=(-2, -1)) / peak,
        rms_rel=np.sqrt(np.mean(diff**2, axis=(-2, -1))) / peak,
        flux_ratio=fast.sum(axis=(-2, -1)) / reference.sum(axis=(-2, -1)),
    )


def compare(
    card: DatasetCard, split: str, n: int, fft_factor: int = REFERENCE_FFT_FACTOR
) -> tuple[np.ndarray, dict[str, StampErrors]]:
    """``params`` rows and per-stamp errors of the first ``n`` stamps of ``split`` (the
    reference's FFT grids ≥ ``fft_factor`` × the fast padded grid)."""
    per = stamps_per_galaxy(card)
    rows = draw_galaxies(card, split, 0, -(-n // per))[:n]
    grid = kgrid(card)
    fast = {key: [] for key in IMAGES}
    ref = {key: [] for key in IMAGES}
    bounds = np.flatnonzero(np.diff(rows["psf_index"])) + 1
    with threadpool_limits(1):
        for a, b in zip([0, *bounds], [*bounds, len(rows)], strict=True):
            f = render_noiseless(card, rows[a:b], grid)
            r = reference_stamps(card, rows[a:b], fft_factor)
            for key in IMAGES:
                fast[key].append(np.asarray(f[key]))
                ref[key].append(r[key])
    errors = {key: stamp_errors(np.concatenate(fast[key]), np.concatenate(ref[key])) for key in IMAGES}
    return rows, errors


def summarise(rows: np.ndarray, errors: dict[str, StampErrors]) -> list[ValidationRow]:
    """One :class:`ValidationRow` per (family or profile, image kind)."""
    table = []
    for column in ("psf_family", "gal_profile"):
        for name in sorted(set(rows[column].tolist())):
            mask = rows[column] == name
            for key in IMAGES:
                e = errors[key]
                table.append(
                    ValidationRow(
                        column,
                        name.decode(),
                        key,
                        int(mask.sum()),
                        float(e.max_rel[mask].max()),
                        float(np.sqrt(np.mean(e.max_rel[mask] ** 2))),
                        float(e.flux_ratio[mask].min()),
                        float(e.flux_ratio[mask].max()),
                    )
                )
    return table


def validate_render(
    card: DatasetCard, split: str, n: int, fft_factor: int = REFERENCE_FFT_FACTOR
) -> list[ValidationRow]:
    rows, errors = compare(card, split, n, fft_factor)
    return summarise(rows, errors)
