"""Out-of-family marking, the DeconvNet opt-in, and the leaderboard's robustness section."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from deconvbench.cards import load_card
from deconvbench.errors import MethodError
from deconvbench.family import evaluation_block, training_card_families
from deconvbench.harness import run_method
from deconvbench.leaderboard import (
    SubmissionError,
    canonical_name,
    leaderboard_sections,
    render_leaderboard,
    validate_result,
)
from deconvbench.methods import Batch, load_method
from deconvbench.report.leaderboard_html import render_leaderboard_html
from deconvbench.results_schema import validation_problem
from deconvbench.sim.generate import generate

from .conftest import make_card

REPO = Path(__file__).resolve().parent.parent
GROUND_V1 = {"card": "ground-v1", "pixel_scale_arcsec": 0.2, "stamp_size": 48, "target_fwhm_arcsec": 0.5}


def test_training_card_families_fall_back_to_the_newest_published_version():
    assert training_card_families("ground-v3") == (["ground", "moffat"], "ground-v3")
    assert training_card_families("ground-v1") == (["ground", "moffat"], "ground-v3")  # v1 and v2 no longer published
    assert training_card_families("no-such-card") == (None, None)


def test_evaluation_block_in_and_out_of_family():
    inside = evaluation_block(GROUND_V1, load_card("metacal-v3"))
    assert inside["family"] == "in-family" and inside["reasons"] == []
    assert inside["psf_families_from"] == "ground-v3"
    space = evaluation_block(GROUND_V1, load_card("space-v3"))
    assert space["family"] == "out-of-family"
    assert space["reasons"] == [
        "PSF families optical not in training (ground, moffat)",
        "pixel_scale_arcsec 0.1 arcsec/pixel (trained at 0.2)",
        "target_fwhm_arcsec 0.2 arcsec target FWHM (trained at 0.5)",
    ]
    superbit = evaluation_block(GROUND_V1, load_card("superbit-v3"))
    assert superbit["reasons"][0] == "PSF families psfex-tapered not in training (ground, moffat)"
    assert "stamp_size 53 pixels (trained at 48)" in superbit["reasons"]
    unknown = evaluation_block({"card": None}, load_card("ground-v3"))
    assert unknown["family"] == "out-of-family" and "unknown" in unknown["reasons"][0]


@pytest.fixture(scope="module")
def fine_pixel_file(tmp_path_factory):
    """8 stamps at 0.1"/pixel with Gaussian PSFs: outside DeconvNet's ground-v1 training."""
    card = make_card(
        "smoke",
        stamp={"pixel_scale_arcsec": 0.1},
        psf={"families": {"gaussian": 1.0}, "fwhm_arcsec": {"min": 0.6, "max": 0.8}, "galaxies_per_psf": 8},
    )
    path = tmp_path_factory.mktemp("oof") / "fine.h5"
    generate(card, "test", path, n=8)
    return path


def test_deconvnet_refuses_other_geometry_unless_asked(fine_pixel_file, tmp_path, one_torch_thread):
    pytest.importorskip("torch")
    batch = Batch(np.zeros((2, 48, 48)), np.zeros((2, 48, 48)), np.ones(2), 0.1, 0.5)
    with pytest.raises(MethodError, match="pixel_scale_arcsec"):
        load_method("deconvnet-torch").deconvolve(batch)
    with pytest.raises(MethodError, match="true or false"):
        load_method("deconvnet-torch", allow_out_of_family="yes")
    method = load_method("deconvnet-torch", allow_out_of_family=True)
    assert method.params()["allow_out_of_family"] is True
    assert "allow_out_of_family" not in load_method("deconvnet-torch").params()
    result = run_method(method, fine_pixel_file, tmp_path / "r.json", batch_size=8)
    assert result["failures"]["stamps_failed"] == 0
    evaluation = result["evaluation"]
    assert evaluation["family"] == "out-of-family" and evaluation["trained_on"] == "ground-v1"
    assert evaluation["reasons"][:2] == [
        "PSF families gaussian not in training (ground, moffat)",
        "pixel_scale_arcsec 0.1 arcsec/pixel (trained at 0.2)",
    ]
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["evaluation"] == evaluation and validation_problem(written) is None
    assert validation_problem({**written, "evaluation": {**evaluation, "family": "sort-of"}}).startswith(
        "field 'evaluation.family'"
    )
    wiener = run_method(load_method("wiener"), fine_pixel_file, tmp_path / "w.json", batch_size=8)
    assert "evaluation" not in wiener  # no training: the reference


def _result(name: str) -> dict:
    return json.loads((REPO / "results" / name).read_text())


def test_leaderboard_keeps_psf_error_and_out_of_family_rows_apart(tmp_path):
    fft = _result("metacal-v3-v3_noiseless_n2000_fft.json")
    runs = {"metacal-v3-v3_noiseless_n2000_fft.json": fft}
    for size, m, m_err in ((0.01, 0.015, 1e-3), (-0.01, -0.013, 1e-3)):
        run = copy.deepcopy(fft)
        run["psf_error"] = {"size": size, "e1": 0.0, "e2": 0.0, "convention": "c", "analytic": {"K": 1.4}}
        run["metacal"]["m"], run["metacal"]["m_err"] = m, m_err
        runs[canonical_name(run)] = run
    net = _result("metacal-v3-v3_noiseless_n2000_deconvnet-torch.json")
    net["evaluation"] = {"family": "out-of-family", "trained_on": "ground-v1", "reasons": ["pixel_scale_arcsec 0.1"]}
    runs[canonical_name(net)] = net
    wiener = _result("metacal-v3-v3_noiseless_n2000_wiener.json")
    runs["metacal-v3-v3_noiseless_n2000_wiener.json"] = wiener
    assert sorted(runs) == [
        "metacal-v3-v3_noiseless_n2000_deconvnet-torch_out-of-family.json",
        "metacal-v3-v3_noiseless_n2000_fft.json",
        "metacal-v3-v3_noiseless_n2000_fft_psferr-size+0.01-e1+0-e2+0.json",
        "metacal-v3-v3_noiseless_n2000_fft_psferr-size-0.01-e1+0-e2+0.json",
        "metacal-v3-v3_noiseless_n2000_wiener.json",
    ]
    for name, data in runs.items():
        (tmp_path / name).write_text(json.dumps(data))
    (section,) = leaderboard_sections(tmp_path)
    assert sorted(row["method"] for row in section["rows"]) == ["deconvnet-torch out-of-family", "fft", "wiener"]
    text = render_leaderboard(tmp_path)
    robustness = text.split("## Robustness: PSF-model errors and unseen PSFs")[1]
    # slope of m over size −0.01, 0 (fft's exact run), +0.01, weights 1/σ²
    x, y = np.array([-0.01, 0.0, 0.01]), np.array([-0.013, fft["metacal"]["m"], 0.015])
    w = 1 / np.array([1e-3, fft["metacal"]["m_err"], 1e-3]) ** 2
    xm = np.sum(w * x) / np.sum(w)
    slope = np.sum(w * (x - xm) * y) / np.sum(w * (x - xm) ** 2)
    assert f"| fft      | metacal-v3 v3 noiseless (n = 2000) | {slope:.3f} ± " in robustness
    assert "| 1.400 " in robustness
    assert "| deconvnet-torch | metacal-v3 v3 noiseless (n = 2000) | out-of-family" in robustness
    assert "| wiener          | metacal-v3 v3 noiseless (n = 2000) | reference (no training)" in robustness
    assert "pixel_scale_arcsec 0.1" in robustness
    page = render_leaderboard_html(tmp_path)
    assert "<h2>Robustness: PSF-model errors and unseen PSFs</h2>" in page and "reference (no training)" in page


def test_evaluation_text_is_checked_for_markup_on_submission():
    net = _result("metacal-v3-v3_noiseless_n2000_deconvnet-torch.json")
    net["evaluation"] = {"family": "out-of-family", "trained_on": "ground-v1", "reasons": ["pixel scale"]}
    validate_result(net)
    net["evaluation"]["reasons"] = ["a | b"]
    with pytest.raises(SubmissionError, match="evaluation.reasons"):
        validate_result(net)


def test_deconvfilter_declares_its_training_domain():
    """The learned filter is a trained method: its results carry the in/out-of-family block."""
    from deconvbench.methods import load_method

    method = load_method("deconvfilter")
    domain = method.training_domain()
    assert domain["card"] == "ground-v3" and domain["pixel_scale_arcsec"] == 0.2
    block = evaluation_block(domain, load_card("metacal-v3"))
    assert block["family"] == "in-family"
