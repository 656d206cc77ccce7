"""Dataset cards: schema, validation and loading.

A card (``datasets/NAME.toml``) names and versions a dataset: stamp geometry, galaxy
population, PSF family, noise levels, shear design and splits (counts and seeds).
Everything the generator draws is determined by the card, the split and the stamp
index, so a card *is* the dataset. The content checksum expected for each split is
stored in ``datasets/checksums.json`` and checked by ``deconvbench verify``.

Units: arcsec for sizes and angles, arcsec/pixel for ``pixel_scale_arcsec``, fluxes in
arbitrary counts (the noise level is set per stamp from the SNR, see ``sim.noise``).
Shapes are reduced shears g (GalSim convention).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CardError


def _known(kind: str) -> list[str]:
    """Names registered in :mod:`deconvbench.sim.registry` (imported lazily: it loads GalSim)."""
    from .sim import registry

    return registry.galaxy_profile_names() if kind == "galaxy" else registry.psf_family_names()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Range(_Strict):
    """A closed interval [min, max]; values are drawn uniformly unless stated."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self):
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min > self.max:
            raise ValueError(f"need finite min <= max, got [{self.min}, {self.max}]")
        return self


class LogNormal(_Strict):
    """A log-normal distribution truncated to [min, max]: ln x ~ N(ln median, sigma)."""

    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: float = Field(gt=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min <= self.median <= self.max:
            raise ValueError("need min <= median <= max")
        return self


#: PSF families of PSFEx models (they need ``psf.psfex_models``; drawn at their own pixel scale
#: they include the pixel)
PSFEX_FAMILIES = ("psfex", "psfex-tapered")

#: the renderer's settings of a card (``stamp.kernel_wrap``, ``stamp.psf_stamp``); the first is the default
KERNEL_WRAPS = ("point-corrected", "truncated")
PSF_STAMPS = ("drawimage", "kernel")


class StampSpec(_Strict):
    size: int = Field(ge=8, le=512, description="stamp side n in pixels (square n×n)")
    pixel_scale_arcsec: float = Field(gt=0, le=2.0)
    target_psf_fwhm_arcsec: float = Field(gt=0, description="FWHM of the round Gaussian target PSF")
    max_offset_pixels: float = Field(
        0.0, ge=0, le=2.0, description="galaxy centroid offset drawn uniformly in ±this, per axis"
    )
    pad_factor: float | None = Field(
        None,
        ge=1.0,
        le=8.0,
        description=(
            "the renderer's padded grid N >= pad_factor * size (default 1.5): wider for PSFs whose image "
            "reaches far beyond the stamp (its wrapped wings are corrected exactly only for point sources)"
        ),
    )
    kernel_wrap: Literal[KERNEL_WRAPS] | None = Field(
        None,
        description=(
            "how the renderer keeps PSF light from beyond the padded grid out of a stamp: 'point-corrected' "
            "(default, the v2 cards: the wrapped light of a centred point source is subtracted) or 'truncated' "
            "(the PSF's transform cut to one grid period: nothing wraps, exact for extended galaxies too)"
        ),
    )
    psf_stamp: Literal[PSF_STAMPS] | None = Field(
        None,
        description=(
            "how the renderer makes the 'psf' stamp: 'drawimage' (default, the v2 cards: GalSim's drawImage of "
            "the PSF) or 'kernel' (a centred point source of unit flux through the PSF kernel that renders "
            "'noiseless': the same image to ~1e-5 of its peak, without a GalSim FFT per PSF; a PSFEx model at "
            "its own pixel scale, which drawImage draws in real space, keeps drawImage's stamp)"
        ),
    )


class SersicSpec(_Strict):
    """Sérsic profiles (``profile = "sersic"``): index, its rounding, truncation.

    The index n is drawn from ``index`` (log-normal truncated to [min, max]; GalSim
    supports 0.3 ≤ n ≤ 6.2) and rounded to a multiple of ``index_step`` (GalSim caches one
    radial table per index, as its COSMOSCatalog does with 0.05). The profile is truncated
    at ``trunc_factor`` half-light radii; flux and half-light radius are those of the
    truncated profile (GalSim's ``flux_untruncated=False``)."""

    index: LogNormal
    index_step: float = Field(0.05, ge=0, le=0.5, description="n rounded to a multiple of this (0: not rounded)")
    trunc_factor: float = Field(
        gt=1.5, le=10.0, description="truncation radius in half-light radii (≤ 10: the padded grid's reach)"
    )

    @model_validator(mode="after")
    def _galsim_range(self):
        if not (self.index.min >= 0.3 and self.index.max <= 6.2):
            raise ValueError(
                f"index range must lie in [0.3, 6.2] (GalSim's Sersic), got [{self.index.min}, {self.index.max}]"
            )
        return self


class GalaxySpec(_Strict):
    """Galaxy population. Profiles are drawn with the given weights."""

    profiles: dict[str, float]
    half_light_radius_arcsec: LogNormal
    flux: LogNormal
    shape_sigma: float = Field(0.25, ge=0, le=0.6, description="per-component sigma of intrinsic g")
    shape_max: float = Field(0.7, gt=0, lt=1.0)
    bulge_fraction: Range = Range(min=0.0, max=0.6)
    bulge_to_disk_size: Range = Range(min=0.3, max=0.7)
    devaucouleurs_trunc_factor: float = Field(
        4.5, gt=1, description="deVaucouleurs profiles truncated at this many half-light radii"
    )
    knots_number: Range = Range(min=10, max=60)
    knots_flux_fraction: Range = Range(min=0.1, max=0.4)
    # Optional table: absent (None) it is left out of the card hash, so cards written before
    # it existed keep their hash (see DatasetCard.canonical_json).
    sersic: SersicSpec | None = None

    @model_validator(mode="after")
    def _sersic_table(self):
        if "sersic" in self.profiles and self.sersic is None:
            raise ValueError("profile 'sersic' needs a [galaxy.sersic] table (index, trunc_factor)")
        return self

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, value: dict[str, float]):
        if not value:
            raise ValueError("at least one profile is needed")
        known = _known("galaxy")
        for name, weight in value.items():
            if name not in known:
                raise ValueError(f"unknown profile {name!r} (known: {', '.join(known)})")
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"profile weight for {name!r} must be > 0")
        return value


class PSFSpec(_Strict):
    """PSF families and their parameter ranges. ``ellipticity_max`` is the maximum |g| of the
    PSF shear, drawn uniformly in |g| with a random position angle. ``galaxies_per_psf``
    consecutive galaxies share one PSF (a metacal galaxy is 4 stamps), as galaxies of one
    exposure do; the family is the same within such a PSF group."""

    families: dict[str, float]
    galaxies_per_psf: int = Field(1, ge=1, le=4096, description="consecutive galaxies sharing one PSF")
    fwhm_arcsec: Range = Range(min=0.6, max=1.1)
    ellipticity_max: float = Field(0.05, ge=0, lt=0.5)
    moffat_beta: Range = Range(min=2.5, max=4.5)
    # optical (Airy with obscuration and aberrations); in "ground" it is convolved with
    # Kolmogorov whose FWHM is drawn from fwhm_arcsec.
    lam_over_diam_arcsec: Range = Range(min=0.05, max=0.1)
    obscuration: Range = Range(min=0.2, max=0.35)
    aberration_rms_waves: Range = Range(min=0.0, max=0.05)
    # psfex: empirical models shipped in datasets/psf-models/
    psfex_models: list[str] = []
    psfex_field_pixels: tuple[float, float] = (9500.0, 6400.0)
    psfex_pixel_scale_arcsec: float = 0.141
    psfex_taper_edge: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "psfex-tapered: the model is convolved with the round Gaussian whose transform is this at the "
            "model's maxk (a smooth band limit instead of GalSim's hard cut; e.g. 0.01)"
        ),
    )

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: dict[str, float]):
        if not value:
            raise ValueError("at least one PSF family is needed")
        known = _known("psf")
        for name, weight in value.items():
            if name not in known:
                raise ValueError(f"unknown PSF family {name!r} (known: {', '.join(known)})")
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"family weight for {name!r} must be > 0")
        return value

    @model_validator(mode="after")
    def _psfex_needs_models(self):
        for family in PSFEX_FAMILIES:
            if family in self.families and not self.psfex_models:
                raise ValueError(f"family {family!r} needs psfex_models")
        if "psfex-tapered" in self.families and self.psfex_taper_edge is None:
            raise ValueError("family 'psfex-tapered' needs psfex_taper_edge")
        return self


class NoiseSpec(_Strict):
    """Noise levels. SNR = sqrt(Σ noiseless²)/sigma (matched-filter SNR); ``inf`` = noiseless.
    Gaussian sky+read noise with per-stamp sigma; optional Poisson noise of the source with
    ``gain`` electrons per count (then ``noise_sigma`` is the Gaussian part only)."""

    snr_levels: list[float]
    poisson_source: bool = False
    gain: float = Field(1.0, gt=0)

    @field_validator("snr_levels")
    @classmethod
    def _positive(cls, value: list[float]):
        if not value:
            raise ValueError("at least one SNR level is needed")
        for snr in value:
            if not snr > 0:
                raise ValueError(f"SNR levels must be > 0 (inf for noiseless), got {snr}")
        return value


class ShearSpec(_Strict):
    """Constant-shear design for metacalibration sets (design §7).

    Stamps come in groups of 4 sharing galaxy and PSF: slot 0..3 = (+g, 0°), (−g, 0°),
    (+g, 90°), (−g, 90°), the true shear being (±g1, ±g2). +g and −g stamps with the same
    rotation share their noise realisation."""

    g1: float = Field(0.01, ge=-0.2, le=0.2)
    g2: float = Field(0.0, ge=-0.2, le=0.2)


class PSFModelErrorSpec(_Strict):
    """A split's PSF-model error (model − true): what a method (and the metacal fit of Γ) is
    told differs from the PSF the stamps were rendered with by a size error δT/T (T = Ixx + Iyy)
    and a reduced shear (e1, e2) of the profile before the pixel (:mod:`deconvbench.psf_error`).
    It does not change how stamps are rendered."""

    size: float = Field(0.0, gt=-1.0, lt=1.0)
    e1: float = Field(0.0, gt=-1.0, lt=1.0)
    e2: float = Field(0.0, gt=-1.0, lt=1.0)


class SplitSpec(_Strict):
    n: int = Field(gt=0, le=10_000_000)
    seed: int = Field(ge=0)
    snr_levels: list[float] | None = None  # overrides noise.snr_levels for this split
    psf_shear: tuple[float, float] | None = None  # fixed PSF shear (g1, g2) for this split
    # Optional (left out of the card hash when absent): runs on this split tell the method a
    # model PSF with this error, as `run --psf-error` does
    psf_model_error: PSFModelErrorSpec | None = None
    description: str = ""


#: largest galaxy offset (pixels, per axis) of a metacal card: the centring of the metacal
#: step is tested up to this offset
METACAL_MAX_OFFSET_PIXELS = 1.0


class DatasetCard(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$")
    description: str
    kind: Literal["deconvolution", "metacal"] = "deconvolution"
    stamp: StampSpec
    galaxy: GalaxySpec
    psf: PSFSpec
    noise: NoiseSpec
    shear: ShearSpec | None = None
    splits: dict[str, SplitSpec]

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "metacal":
            if self.shear is None:
                raise ValueError("a metacal card needs a [shear] table")
            for name, split in self.splits.items():
                if split.n % 4:
                    raise ValueError(f"splits.{name}.n must be a multiple of 4 (groups of 4)")
            if self.stamp.max_offset_pixels > METACAL_MAX_OFFSET_PIXELS:
                raise ValueError(
                    f"stamp.max_offset_pixels must be <= {METACAL_MAX_OFFSET_PIXELS} for a metacal "
                    f"card (the range the metacal step is validated for), got "
                    f"{self.stamp.max_offset_pixels}"
                )
        if self.stamp.max_offset_pixels > self.stamp.size / 8:
            raise ValueError(
                f"stamp.max_offset_pixels must be <= stamp.size/8 = {self.stamp.size / 8:g} "
                f"(the galaxy must stay well inside the stamp), got {self.stamp.max_offset_pixels}"
            )
        if self.stamp.target_psf_fwhm_arcsec < self.stamp.pixel_scale_arcsec:
            raise ValueError("stamp.target_psf_fwhm_arcsec must be at least one pixel")
        # Splits are independent (own seed), except PSF-model error variants: splits that differ
        # only in psf_model_error share their seed on purpose (the same stamps, told other PSFs).
        rendered = {}
        for spec in self.splits.values():
            same_stamps = spec.model_dump(exclude={"psf_model_error", "description"})
            if rendered.setdefault(spec.seed, same_stamps) != same_stamps:
                raise ValueError(
                    "every split needs its own seed (independent splits), unless the splits differ "
                    "only in psf_model_error"
                )
        return self

    def split(self, name: str) -> SplitSpec:
        if name not in self.splits:
            raise CardError(f"card {self.name!r} has no split {name!r} (splits: {', '.join(self.splits)})")
        return self.splits[name]

    def snr_levels(self, split: str) -> list[float]:
        return list(self.split(split).snr_levels or self.noise.snr_levels)

    def card_hash(self) -> str:
        """sha256 of the canonical JSON of the validated card (not of the TOML text)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        """The validated card as JSON with sorted keys (inf written as ``Infinity``).

        Optional tables and fields added after the v2 cards (``galaxy.sersic``, a split's
        ``psf_model_error``, ``stamp.pad_factor``, ``stamp.kernel_wrap``, ``stamp.psf_stamp``,
        ``psf.psfex_taper_edge``) are left out when absent, so that the hash of every earlier card is
        unchanged."""
        data = json.loads(self.model_dump_json())
        for field in ("pad_factor", "kernel_wrap", "psf_stamp"):
            if data["stamp"].get(field) is None:
                data["stamp"].pop(field, None)
        if data["psf"].get("psfex_taper_edge") is None:
            data["psf"].pop("psfex_taper_edge", None)
        if data["galaxy"].get("sersic") is None:
            data["galaxy"].pop("sersic", None)
        for split in data["splits"].values():
            if split.get("psf_model_error") is None:
                split.pop("psf_model_error", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def cards_dir() -> Path:
    return Path(str(resources.files("deconvbench_datasets")))


def psf_models_dir() -> Path:
    return cards_dir() / "psf-models"


def list_cards() -> list[str]:
    return sorted(p.stem for p in cards_dir().glob("*.toml"))


def _format_validation_error(path: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "(card)"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid card {path}: field '{where}': {msg}{more}"


def apply_settings(raw: dict, settings: Sequence[str]) -> dict:
    """The card table ``raw`` with each ``KEY=VALUE`` of ``settings`` set in it (in place).

    KEY is a dotted path (``stamp.kernel_wrap``, ``psf.galaxies_per_psf``); VALUE is a TOML
    value (``3``, ``0.5``, ``"x"``, ``[1, 2]``), a bare word being a string. The result is
    validated like any card, so an unknown or bad field is one :class:`CardError`."""
    for setting in settings:
        key, sep, value = setting.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise CardError(f"a card setting is KEY=VALUE, e.g. stamp.kernel_wrap=truncated; got {setting!r}")
        try:
            parsed = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise CardError(f"card setting {key.strip()!r}: {part!r} is not a table of the card")
        table[path[-1]] = parsed
    return raw


def load_card(name_or_path: str | Path, settings: Sequence[str] = ()) -> DatasetCard:
    """Load and validate a card by name (``ground-v1``) or by path to a TOML file, with
    ``settings`` (``KEY=VALUE``, see :func:`apply_settings`) applied first."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.exists():
        path = text_path
    else:
        path = cards_dir() / f"{name_or_path}.toml"
        if not path.exists():
            raise CardError(f"unknown dataset card {str(name_or_path)!r} (known: {', '.join(list_cards())})")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CardError(f"card file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"card {path} is not valid TOML: {exc}") from None
    apply_settings(raw, settings)
    try:
        return DatasetCard.model_validate(raw)
    except ValidationError as exc:
        raise CardError(_format_validation_error(str(path), exc)) from None


def expected_checksums() -> dict:
    """``datasets/checksums.json``: {card: {version, splits: {KEY: {n, checksum}}}} where KEY
    is the split name for a full split, or ``split@n`` for a published prefix of n stamps."""
    path = cards_dir() / "checksums.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def expected_checksum(card: DatasetCard, split: str, n: int) -> str | None:
    entry = expected_checksums().get(card.name, {})
    if entry.get("version") != card.version:
        return None
    splits = entry.get("splits", {})
    for key in (split, f"{split}@{n}"):  # the full split, or a published prefix of n stamps
        split_entry = splits.get(key)
        if split_entry and split_entry.get("n") == n:
            return split_entry.get("checksum")
    return None
