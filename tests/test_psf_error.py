"""PSF-model errors (``--psf-error``): exact model stamps, conventions, parsing, and the
measured sensitivity of fft on the smoke metacal set against the analytic expectation."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from deconvbench.cards import DatasetCard
from deconvbench.errors import DeconvbenchError, UsageError
from deconvbench.harness import result_stem, run_method
from deconvbench.metacal.measure import MetacalConfig
from deconvbench.methods import load_method
from deconvbench.moments import adaptive_moments
from deconvbench.psf_error import (
    ModelPSFs,
    PSFError,
    PSFErrorSpecError,
    analytic_coefficient,
    parse_psf_error,
    pixel_size_t,
)
from deconvbench.results_schema import validation_problem
from deconvbench.sensitivity import fit_line, sensitivities
from deconvbench.sim.sampling import draw_galaxies
from deconvbench.store import open_dataset

from .conftest import make_card


def _card_and_params(path):
    with open_dataset(path) as dataset:
        return DatasetCard.model_validate(dataset.card), dataset.params(), dataset.read("psf")


@pytest.mark.parametrize("fixture", ["smoke_metacal_file", "smoke_test_file"])
def test_zero_error_reproduces_the_stored_psf_stamps_exactly(fixture, request):
    # smoke covers every family (gaussian … psfex at its own pixel scale)
    card, params, stored = _card_and_params(request.getfixturevalue(fixture))
    model = ModelPSFs(card, params, PSFError()).stamps(params)
    assert model.dtype == np.float32
    np.testing.assert_array_equal(model, stored)


def test_a_gaussian_psf_gets_the_requested_size_and_shear():
    card = make_card(
        "smoke",
        psf={"families": {"gaussian": 1.0}, "fwhm_arcsec": {"min": 0.9, "max": 0.9}, "ellipticity_max": 0.0},
    )
    rows = draw_galaxies(card, "test", 0, 1)
    pix = pixel_size_t(card.stamp.pixel_scale_arcsec) / card.stamp.pixel_scale_arcsec**2  # px²

    def moments(error):
        return adaptive_moments(ModelPSFs(card, rows, error).stamps(rows).astype(np.float64))

    true, bigger, sheared = moments(PSFError()), moments(PSFError(size=0.05)), moments(PSFError(e1=0.02))
    # T of the profile (the stamp's less the pixel's) grows by 1 + δT/T
    ratio = (bigger["T"][0] - pix) / (true["T"][0] - pix)
    assert ratio == pytest.approx(1.05, abs=2e-4)
    # a round PSF sheared by reduced shear g has distortion 2g/(1+g²) (diluted by the round pixel)
    profile_e1 = sheared["e1"][0] * sheared["T"][0] / (sheared["T"][0] - pix)
    assert profile_e1 == pytest.approx(2 * 0.02 / (1 + 0.02**2), rel=2e-3)
    assert abs(sheared["e2"][0]) < 1e-6


def test_parse_and_file_name_tag():
    error = parse_psf_error("size=0.01, e1=0.002")
    assert (error.size, error.e1, error.e2) == (0.01, 0.002, 0.0)
    assert error.dilation == pytest.approx(math.sqrt(1.01))
    assert error.tag() == "psferr-size+0.01-e1+0.002-e2+0"
    assert result_stem("fft", "c-v1_s", 8, 8, psf_error=error) == "fft_c-v1_s_psferr-size+0.01-e1+0.002-e2+0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size=abc", "size must be a number"),
        ("scale=0.1", "unknown key 'scale'"),
        ("size", "expected KEY=VALUE"),
        ("size=0.1,size=0.2", "given twice"),
        ("size=-1", "must be > -1"),
        ("e1=0.8,e2=0.8", "must be < 1"),
        ("size=nan", "must be finite"),
        ("", "nothing given"),
    ],
)
def test_bad_psf_error_is_a_usage_error(text, message):
    with pytest.raises(PSFErrorSpecError, match=message) as info:
        parse_psf_error(text)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, DeconvbenchError)


@pytest.mark.parametrize("text", ["size=abc", "e3=0.1"])
def test_bad_psf_error_on_the_command_line_is_one_line_exit_2(text, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", "run", "-m", "fft", "--data", str(tmp_path / "none.h5")]
        + ["--psf-error", text],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--psf-error" in proc.stderr and "Traceback" not in proc.stderr


def test_fit_line_recovers_a_known_slope():
    rng = np.random.default_rng(1)
    x = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
    err = np.full(5, 1e-4)
    y = 3e-4 + 1.5 * x + rng.normal(0.0, 1e-4, 5)
    fit = fit_line(x, y, err)
    # σ_slope = σ / sqrt(Σ(x − x̄)²) for equal weights
    assert fit.slope_err == pytest.approx(1e-4 / math.sqrt(np.sum((x - x.mean()) ** 2)), rel=1e-12)
    assert abs(fit.slope - 1.5) < 3 * fit.slope_err
    exact = fit_line([0.0, 0.01], [1.0, 1.02], [0.0, 0.0])
    assert exact.slope == pytest.approx(2.0) and exact.n == 2
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([0.01, 0.01], [1.0, 2.0], [1.0, 1.0])


def test_analytic_coefficient_weighs_stamps_by_their_response():
    # equal sizes: K = T_psf/T_gal
    assert analytic_coefficient([0.2, 0.2], [0.3, 0.3], [0.4, 0.4]) == pytest.approx(1.5)
    # K = Σ T_psf/(T_gal+T_Γ) / Σ T_gal/(T_gal+T_Γ); a NaN stamp is left out
    expected = (0.3 / 0.5 + 0.3 / 0.8) / (0.1 / 0.5 + 0.4 / 0.8)
    assert analytic_coefficient([0.1, 0.4, np.nan], [0.3, 0.3, 0.3], [0.4, 0.4, 0.4]) == pytest.approx(expected)


def test_fft_sensitivity_on_the_smoke_metacal_set(smoke_metacal_file, tmp_path):
    """m and c1 of fft move with the PSF-model error as measured (pinned) and as the
    analytic expectation says (within 10%); the zero error is the exact-PSF run."""
    results = []
    for name, error in (
        ("exact", None),
        ("zero", PSFError()),
        ("size", PSFError(size=0.02)),
        ("e1", PSFError(e1=0.005)),
    ):
        result = run_method(
            load_method("fft"),
            smoke_metacal_file,
            tmp_path / f"{name}.json",
            batch_size=64,
            metacal=MetacalConfig(),
            psf_error=error,
        )
        assert json.loads((tmp_path / f"{name}.json").read_text())["metacal"]["m"] == result["metacal"]["m"]
        results.append(result)
    exact, zero, size, e1 = results
    assert "psf_error" not in exact and zero["psf_error"]["size"] == 0.0
    for key in ("m", "c", "c1", "m_err"):
        assert zero["metacal"][key] == exact["metacal"][key]
    assert size["psf_error"]["size"] == 0.02 and size["psf_error"]["convention"].startswith("model = true PSF")
    assert validation_problem(json.loads((tmp_path / "size.json").read_text())) is None
    (row,) = sensitivities(results)
    k = row["K"]
    assert k == pytest.approx(1.5770, abs=1e-4)
    assert row["dm_dsize"] == pytest.approx(1.48185, abs=1e-4)
    assert row["dc1_de1"] == pytest.approx(-1.81603, abs=1e-4)
    assert row["dm_dsize"] == pytest.approx(k, rel=0.10)
    assert row["dc1_de1"] == pytest.approx(-k, rel=0.20)
    assert row["dc2_de2"] is None and row["dm_dsize_runs"] == 2


def test_sensitivity_command_runs_the_grid_and_prints_the_fit(smoke_metacal_file, tmp_path):
    out = tmp_path / "sens"
    args = [sys.executable, "-m", "deconvbench.cli", "sensitivity", "-m", "fft", "--data", str(smoke_metacal_file)]
    proc = subprocess.run(
        [*args, "--sizes", "0.02", "--e1", "0.005", "--e2", "", "--out", str(out), "-b", "64"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "fft_smoke-metacal-v3_noiseless_psferr-size+0-e1+0-e2+0.json",
        "fft_smoke-metacal-v3_noiseless_psferr-size+0-e1+0.005-e2+0.json",
        "fft_smoke-metacal-v3_noiseless_psferr-size+0.02-e1+0-e2+0.json",
    ]
    # the same numbers as the library runs above: 1.482 ± …, -1.816 ± …, K = 1.577
    assert "| fft      | smoke-metacal v3 noiseless (n = 64) | 1.482 ± 0.210 | -1.816 ± 0.251 | –  " in proc.stdout
    assert "| 1.577 " in proc.stdout
    bad = subprocess.run([*args, "--sizes", "0,abc", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--sizes" in bad.stderr


def test_a_psf_error_run_is_the_same_on_an_executor(smoke_metacal_file, tmp_path):
    """Workers draw the model PSFs themselves: 2 local workers give the in-process numbers."""
    from deconvbench.execution import ExecutorSpec

    error = PSFError(size=0.02, e1=0.005)
    runs = [
        run_method(
            load_method("fft"),
            smoke_metacal_file,
            tmp_path / f"{name}.json",
            batch_size=32,
            metacal=MetacalConfig(),
            psf_error=error,
            executor=spec,
            method_options={},
            task_batches=1,
        )
        for name, spec in (("here", None), ("local", ExecutorSpec(kind="local", workers=2)))
    ]
    here, local = runs
    assert local["throughput"]["executor"] == "local"
    for key in ("m", "c", "c1", "R11"):
        assert local["metacal"][key] == here["metacal"][key]
    exact = run_method(load_method("fft"), smoke_metacal_file, tmp_path / "exact.json", metacal=MetacalConfig())
    assert local["metacal"]["m"] != exact["metacal"]["m"]
    assert local["psf_error"] == here["psf_error"]


def _variant_card(**split_updates):
    """smoke-metacal with its noiseless split and a PSF-model variant of it (same seed)."""
    from .conftest import card_dict

    raw = card_dict("smoke-metacal")
    noiseless = raw["splits"]["noiseless"]
    raw["splits"] = {"noiseless": noiseless, "size+0.02": {**noiseless, **split_updates}}
    raw["name"] = "smoke-psfmodel"
    return DatasetCard.model_validate(raw)


def test_card_variant_splits_share_stamps_and_tell_the_method_the_model_psf(smoke_metacal_file, tmp_path):
    """A split with psf_model_error renders the stamps of its seed (same content checksum) and
    its run equals ``--psf-error`` on those stamps; both at once is one usage error."""
    from deconvbench.sim.generate import generate

    card = _variant_card(psf_model_error={"size": 0.02})
    variant = tmp_path / "variant.h5"
    generate(card, "size+0.02", variant)
    with open_dataset(variant) as a, open_dataset(smoke_metacal_file) as b:
        assert a.checksum == b.checksum
    told = run_method(load_method("fft"), variant, tmp_path / "v.json", batch_size=64, metacal=MetacalConfig())
    asked = run_method(
        load_method("fft"),
        smoke_metacal_file,
        tmp_path / "a.json",
        batch_size=64,
        metacal=MetacalConfig(),
        psf_error=PSFError(size=0.02),
    )
    assert told["psf_error"]["size"] == 0.02
    for key in ("m", "c", "c1", "R11"):
        assert told["metacal"][key] == asked["metacal"][key]
    with pytest.raises(UsageError, match="already tells the method a model PSF"):
        run_method(load_method("fft"), variant, tmp_path / "w.json", metacal=MetacalConfig(), psf_error=PSFError())


def test_only_psf_model_variants_may_share_a_seed():
    with pytest.raises(ValueError, match="its own seed"):
        _variant_card(snr_levels=[50.0], psf_model_error={"size": 0.02})
    with pytest.raises(ValueError, match="psf_model_error"):
        _variant_card(psf_model_error={"size": -1.5})
    without = _variant_card(psf_model_error=None)  # an absent table keeps the card hash
    assert "psf_model_error" not in without.canonical_json()
