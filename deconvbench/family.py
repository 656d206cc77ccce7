"""In-family or out-of-family: is a trained method evaluated on data like its training data?

A method trained on one card (its *training domain*: the card's PSF families, pixel
scale (arcsec/pixel), stamp size and target PSF FWHM (arcsec)) is **in-family** on an
evaluated card whose PSF families are all among the training card's and whose geometry
is the same; otherwise **out-of-family**, with the reasons. A method without training
(fft, wiener, richardson-lucy, galsim-mcal) has no training domain: its results carry
no such mark and serve as the reference rows.

A method declares its domain with ``training_domain() -> dict`` (keys ``card``,
``psf_families`` (list or None), ``pixel_scale_arcsec``, ``stamp_size``,
``target_fwhm_arcsec``; None where unknown). Without ``psf_families``, the families of
the training card are read from ``datasets/`` — the card of that name, or where it is no
longer published, the newest published version of the same card (``ground-v1`` →
``ground-v3``), which the block names as ``psf_families_from``.
"""

from __future__ import annotations

import math
import re

from .cards import list_cards, load_card
from .errors import CardError

IN_FAMILY, OUT_OF_FAMILY = "in-family", "out-of-family"
_VERSIONED = re.compile(r"^(?P<base>.+)-v(?P<version>\d+)$")


def training_card_families(card_name: str | None) -> tuple[list[str] | None, str | None]:
    """PSF families of a training card by name, and the card they were read from."""
    if not card_name:
        return None, None
    candidates = [card_name]
    match = _VERSIONED.match(card_name)
    if match:
        newer = []
        for name in list_cards():
            other = _VERSIONED.match(name)
            if other and other["base"] == match["base"]:
                newer.append((int(other["version"]), name))
        candidates += [name for _, name in sorted(newer, reverse=True) if name != card_name]
    for name in candidates:
        try:
            return sorted(load_card(name).psf.families), name
        except CardError:
            continue
    return None, None


def _differs(a, b) -> bool:
    return a is not None and b is not None and not math.isclose(float(a), float(b), rel_tol=1e-6)


def evaluation_block(domain: dict, card) -> dict:
    """The ``evaluation`` block of a result: ``family`` (in-family / out-of-family),
    ``trained_on``, the training domain and the ``reasons`` for out-of-family.
    ``card`` is the evaluated :class:`~deconvbench.cards.DatasetCard`."""
    families = domain.get("psf_families")
    source = domain.get("card") if families else None
    if not families:
        families, source = training_card_families(domain.get("card"))
    reasons = []
    evaluated = sorted(card.psf.families)
    if families is None:
        reasons.append("the PSF families of the training data are unknown")
    else:
        unseen = [f for f in evaluated if f not in families]
        if unseen:
            reasons.append(f"PSF families {', '.join(unseen)} not in training ({', '.join(families)})")
    stamp = card.stamp
    for key, value, unit in (
        ("pixel_scale_arcsec", stamp.pixel_scale_arcsec, " arcsec/pixel"),
        ("stamp_size", stamp.size, " pixels"),
        ("target_fwhm_arcsec", stamp.target_psf_fwhm_arcsec, " arcsec target FWHM"),
    ):
        if _differs(domain.get(key), value):
            reasons.append(f"{key} {value:g}{unit} (trained at {float(domain[key]):g})")
    return {
        "family": OUT_OF_FAMILY if reasons else IN_FAMILY,
        "trained_on": domain.get("card"),
        "psf_families_trained": families,
        "psf_families_from": source,
        "psf_families_evaluated": evaluated,
        "pixel_scale_arcsec_trained": domain.get("pixel_scale_arcsec"),
        "reasons": reasons,
    }
