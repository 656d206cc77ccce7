"""Sérsic galaxy profile: card table, draws, truncation convention, exactness, stability."""

from __future__ import annotations

import re
import tomllib

import galsim
import numpy as np
import pytest
from pydantic import ValidationError

from deconvbench.cards import DatasetCard, _format_validation_error, cards_dir, expected_checksum, load_card
from deconvbench.sim.galaxies import build_galaxy, sersic_index, truncated_sersic
from deconvbench.sim.generate import generate
from deconvbench.sim.render import gsparams
from deconvbench.sim.sampling import card_params_dtype, draw_galaxies
from deconvbench.sim.validate import validate_render
from deconvbench.store import open_dataset

from .conftest import make_card

SERSIC_TABLE = {"index": {"median": 1.2, "sigma": 0.6, "min": 0.3, "max": 6.0}, "index_step": 0.05, "trunc_factor": 5}

# card_hash() of every card published before the Sérsic profile existed (computed with the
# code of that commit): an optional table that a card does not use must not change them,
# or every generated file would be regenerated as "made from another version of the card".
EARLIER_CARD_HASHES = {
    "ground-v2": "748c7a6926c988a6abb5cbc60a52f721bceee8bfa37c8cb526de6fd892b5d641",
    # v2 with its streamed splits (snr20/50/100) raised from 10^6 to 10^7 stamps: the hash
    # changes, no stamp does (test_bias.py::test_a_split_size_changes_no_stamp)
    "metacal-offsets": "6b682cc82faf635d2bca4614bdb12101f0851c74b9fd92fbecaaa37eb5072c0d",
    "metacal-v2": "a3a7f380c97916e3119053e0b79f59da9644b4b1bc27d5a7669cf256b9c0b3e7",
    "smoke-metacal": "32031129c115a17d2e0d7e819adef9e6a27096d5482638eb1c6d99b109450bb8",
    "smoke": "7095f7c1193a33e40025ac2cf72437402dde5aff1fd8e1baa4fceacd96f0f860",
    "space-v2": "9c0acf70b9b0facfc09d9b98a89bdfa07a6cc667bb9a1010e04ac490fa46f6fe",
    "superbit-v2": "edfaf44f11dfc9465e7a204a4db0efcb0424e60f98c081dbae911bd96284a451",
}
# The v3 cards are the v2 cards plus the v3 renderer (stamp.kernel_wrap, stamp.psf_stamp),
# superbit with the psfex-tapered family, smoke with it as a seventh family, and the
# descriptions naming v3 cards (NAME-v2 is now NAME-v3; smoke and smoke-metacal kept their names).


def _as_published_before(name: str) -> DatasetCard:
    """The card ``name`` as it was published before the v3 cards, rebuilt from today's card
    by undoing exactly the v3 changes."""
    raw = tomllib.loads((cards_dir() / f"{name.replace('-v2', '-v3')}.toml").read_text())
    if name == "metacal-offsets":  # unchanged since
        return DatasetCard.model_validate(raw)
    raw["name"], raw["version"] = name, "2"
    raw["description"] = raw["description"].replace("-v3", "-v2")  # smoke names ground-v3's geometry
    for field in ("kernel_wrap", "psf_stamp"):
        assert raw["stamp"].pop(field) == {"kernel_wrap": "truncated", "psf_stamp": "kernel"}[field]
    families = raw["psf"]["families"]
    if "psfex-tapered" in families:
        assert raw["psf"].pop("psfex_taper_edge") == 0.01
        del families["psfex-tapered"]
        if not families:  # superbit: the untapered models
            families["psfex"] = 1.0
    return DatasetCard.model_validate(raw)


@pytest.mark.parametrize("name", sorted(EARLIER_CARD_HASHES))
def test_earlier_cards_keep_their_hash(name):
    assert _as_published_before(name).card_hash() == EARLIER_CARD_HASHES[name]


def test_sersic_table_is_part_of_the_hash_when_present():
    card = load_card("cosmos-v3")
    assert '"sersic":{"index":' in card.canonical_json()
    other = card.model_copy(
        update={
            "galaxy": card.galaxy.model_copy(
                update={"sersic": card.galaxy.sersic.model_copy(update={"trunc_factor": 4.0})}
            )
        }
    )
    assert other.card_hash() != card.card_hash()


def _card_error(**updates) -> str:
    """The one-line message a card file with these updates gets (as from load_card)."""
    with pytest.raises(ValidationError) as info:
        make_card(**updates)
    return _format_validation_error("card.toml", info.value)


def test_sersic_profile_needs_its_table():
    message = _card_error(galaxy={"profiles": {"sersic": 1.0}})
    assert message == (
        "invalid card card.toml: field 'galaxy': profile 'sersic' needs a [galaxy.sersic] table (index, trunc_factor)"
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"index": {"median": 1.0, "sigma": 0.5, "min": 0.2, "max": 6.0}}, r"\[0.3, 6.2\]"),
        ({"index": {"median": 1.0, "sigma": 0.5, "min": 0.5, "max": 7.0}}, r"\[0.3, 6.2\]"),
        ({"trunc_factor": 12.0}, "trunc_factor"),
        ({"trunc_factor": 1.0}, "trunc_factor"),
    ],
)
def test_bad_sersic_table_is_one_clear_error(change, message):
    text = _card_error(galaxy={"profiles": {"sersic": 1.0}, "sersic": {**SERSIC_TABLE, **change}})
    assert "field 'galaxy.sersic" in text and "\n" not in text
    assert re.search(message, text), text


def test_index_is_drawn_in_range_and_rounded_to_the_step():
    spec = load_card("cosmos-v3").galaxy.sersic
    rng = np.random.default_rng(3)
    n = np.array([sersic_index(rng, spec) for _ in range(4000)])
    assert n.min() >= 0.3 and n.max() <= 6.0
    np.testing.assert_allclose(n / 0.05, np.round(n / 0.05), atol=1e-6)
    # log-normal median 1.2, sigma 0.6 (truncated to [0.3, 6], rounded to 0.05)
    assert np.median(n) == pytest.approx(1.2, abs=0.05)
    assert 0.05 < np.mean(n >= 3.0) < 0.12


def test_truncated_sersic_has_the_card_flux_and_half_light_radius():
    """flux_untruncated=False: flux and half-light radius are those of the truncated profile."""
    gsp = gsparams()
    for n in (0.5, 1.0, 4.0, 6.0):
        gal = truncated_sersic(n, 0.4, 2.0, 250.0, gsp)
        assert gal.flux == pytest.approx(250.0, rel=1e-12)
        image = gal.drawImage(nx=220, ny=220, scale=0.02, method="real_space")
        assert image.array.sum() == pytest.approx(250.0, rel=1e-5)
        assert image.calculateHLR(flux=250.0) == pytest.approx(0.4, abs=0.002)  # 0.02″ pixels
        # nothing beyond the truncation radius (2″ = 5 half-light radii)
        assert gal.xValue(galsim.PositionD(2.05, 0.0)) == 0.0 < gal.xValue(galsim.PositionD(1.95, 0.0))


def test_cosmos_card_draws_sersic_and_bulge_disk_rows():
    card = load_card("cosmos-v3")
    rows = draw_galaxies(card, "test", 0, 64)
    assert {"gal_sersic_n", "gal_sersic_trunc_arcsec", "gal_bulge_fraction"} <= set(card_params_dtype(card).names)
    sersic = rows["gal_profile"] == b"sersic"
    assert 36 <= sersic.sum() <= 56  # weights 3 : 1
    np.testing.assert_allclose(rows["gal_sersic_trunc_arcsec"][sersic], 5.0 * rows["gal_hlr_arcsec"][sersic])
    assert np.all(rows["gal_sersic_n"][~sersic] == 0)
    gal = build_galaxy(rows[np.flatnonzero(sersic)[0]], 0.2, gsparams())
    assert gal.flux == pytest.approx(float(rows["gal_flux"][np.flatnonzero(sersic)[0]]))


def test_fast_renderer_is_exact_for_sersic_profiles():
    """The first 24 cosmos-v3 stamps (Sérsic n from 0.3 to 6 and bulge+disk) against GalSim."""
    card = load_card("cosmos-v3")
    drawn = draw_galaxies(card, "test", 0, 24)
    # includes n = 3.9, whose reference GalSim builds only at the fast renderer's maxk threshold
    assert (
        drawn["gal_sersic_n"].max() == pytest.approx(3.9)
        and drawn["gal_sersic_n"][drawn["gal_sersic_n"] > 0].min() < 0.5
    )
    rows = validate_render(card, "test", 24)
    by_profile = {(r.name, r.image): r for r in rows if r.by == "gal_profile"}
    assert {name for name, _ in by_profile} == {"sersic", "bulge+disk"}
    for r in rows:
        assert r.passes(1e-4), r
    # pinned: measured on these 24 stamps
    assert by_profile["sersic", "noiseless"].max_rel == pytest.approx(MEASURED_SERSIC_NOISELESS, rel=0.05)
    assert by_profile["sersic", "truth"].max_rel == pytest.approx(MEASURED_SERSIC_TRUTH, rel=0.05)


MEASURED_SERSIC_NOISELESS = 3.51e-6
MEASURED_SERSIC_TRUTH = 1.91e-6


def test_cosmos_prefix_matches_its_published_checksum(data_root):
    """Bit-reproducibility of the Sérsic stamps: the first 64 test stamps are published."""
    card = load_card("cosmos-v3")
    expected = expected_checksum(card, "test", 64)
    assert expected is not None, "publish: deconvbench record-checksum FILE (cosmos-v3 test, --n 64)"
    report = generate(card, "test", data_root / "cosmos64.h5", n=64)
    assert report.checksum == expected
    with open_dataset(data_root / "cosmos64.h5") as ds:
        assert b"sersic" in set(ds.params()["gal_profile"].tolist())
    assert (cards_dir() / "cosmos-v3.toml").exists()
