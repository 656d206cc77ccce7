"""Why stamps are excluded from m: distinct flags, counted per reason, written as null numbers.

The case: space-like sampling (0.1" pixels, an Airy PSF with λ/D = 0.1", FWHM ≈ 1 pixel)
is undersampled; the adaptive Gaussian fit of such a PSF collapses, so Γ (and metacal)
is undefined. Every stamp must then say so, and a run must still finish with a result
that holds nulls, not a traceback or made-up numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deconvbench.bias import render_groups
from deconvbench.cards import load_card
from deconvbench.metacal.measure import MetacalConfig, _flag_psf_fit, flag_counts, measure_batch, measure_deconvolved
from deconvbench.metacal.psf_fit import reconv_fwhm
from deconvbench.methods import Batch, load_method
from deconvbench.moments import FLAG_BAD_SHAPE, FLAG_NAMES, FLAG_NOT_CONVERGED, FLAG_PSF_FIT
from deconvbench.tables import bias_table

UNDERSAMPLED_CARD = """
name = "undersampled-metacal"
version = "1"
description = "metacal stamps at 0.1 arcsec pixels with an Airy PSF of lambda/D 0.1 arcsec"
kind = "metacal"

[stamp]
size = 48
pixel_scale_arcsec = 0.1
target_psf_fwhm_arcsec = 0.2

[galaxy]
profiles = { "bulge+disk" = 1.0 }
half_light_radius_arcsec = { median = 0.3, sigma = 0.3, min = 0.1, max = 0.6 }
flux = { median = 1000.0, sigma = 0.5, min = 100.0, max = 10000.0 }

[psf]
families = { optical = 1.0 }
galaxies_per_psf = 2
lam_over_diam_arcsec = { min = 0.10, max = 0.10 }
aberration_rms_waves = { min = 0.0, max = 0.0 }

[noise]
snr_levels = [inf]

[shear]
g1 = 0.01
g2 = 0.0

[splits.noiseless]
n = 16
seed = 1
"""


@pytest.fixture(scope="module")
def card_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cards") / "undersampled-metacal.toml"
    path.write_text(UNDERSAMPLED_CARD)
    return path


@pytest.fixture(scope="module")
def undersampled_batch(card_path):
    card = load_card(str(card_path))
    arrays = render_groups(card, "noiseless", 0, 4)
    return Batch.from_rendered(arrays, card)


def test_flag_counts_name_every_bit_and_raised():
    flags = np.array([0, FLAG_PSF_FIT, FLAG_NOT_CONVERGED | FLAG_BAD_SHAPE, -1, FLAG_NOT_CONVERGED])
    assert flag_counts(flags) == {
        "metacal step raised": 1,
        FLAG_NAMES[FLAG_NOT_CONVERGED]: 2,
        FLAG_NAMES[FLAG_BAD_SHAPE]: 1,
        FLAG_NAMES[FLAG_PSF_FIT]: 1,
    }
    assert flag_counts(np.zeros(3)) == {}


def test_undersampled_psf_fit_fails_and_flags_only_that(undersampled_batch):
    batch = undersampled_batch
    assert np.isnan(reconv_fwhm(batch.psf, batch.pixel_scale_arcsec)).all()
    fft = load_method("fft")
    values = measure_batch(fft, batch, fft.deconvolve(batch), MetacalConfig())
    np.testing.assert_array_equal(values["flags"], FLAG_PSF_FIT)
    for key in ("e1", "e2", "R11", "R22"):
        assert np.isnan(values[key]).all()
    truth = measure_deconvolved(
        batch.observed, batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, np.nan, MetacalConfig()
    )
    np.testing.assert_array_equal(truth["flags"], FLAG_PSF_FIT)


def test_psf_fit_flag_leaves_good_stamps_alone():
    values = {"flags": np.zeros(4, dtype=np.int64), **{k: np.ones(4) for k in ("e1", "e2", "R11", "R12", "R21", "R22")}}

    out = _flag_psf_fit(values, np.array([0.5, np.nan, 0.5, 0.5]))
    np.testing.assert_array_equal(out["flags"], [0, FLAG_PSF_FIT, 0, 0])
    np.testing.assert_array_equal(np.isnan(out["e1"]), [False, True, False, False])


def test_bias_with_no_measurable_pair_writes_nulls_and_reasons(tmp_path, card_path):
    out = tmp_path / "bias.json"
    proc = subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", "bias", "--method", "fft", "--card", str(card_path),
         "--split", "noiseless", "--n", "16", "-j", "1", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "excluded stamps by reason: PSF Gaussian fit failed" in proc.stdout
    result = json.loads(out.read_text())
    block = result["metacal"]
    assert block["m"] is None and block["c"] is None and block["n_pairs"] == 0
    assert block["flag_counts"] == {FLAG_NAMES[FLAG_PSF_FIT]: 16}
    assert "- ± -" in bias_table(result)
