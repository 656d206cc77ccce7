"""Streaming precision test (deconvbench bias): same numbers as the harness on the same
stamps, resumable, a stamp digest, accepted by submit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deconvbench import leaderboard
from deconvbench.bias import STREAMING_MODE, render_groups, run_bias
from deconvbench.cards import cards_dir, load_card
from deconvbench.harness import run_method
from deconvbench.metacal.measure import MetacalConfig
from deconvbench.methods import load_method
from deconvbench.sim.generate import generate

from .conftest import make_card

N = 64


@pytest.fixture(scope="module")
def card():
    return make_card(
        "metacal-offsets",
        splits={"noiseless": {"n": 128, "seed": 3}, "leakage": {"n": 128, "seed": 4, "psf_shear": [0.05, 0.0]}},
    )


@pytest.fixture(scope="module")
def streamed(card, tmp_path_factory):
    out = tmp_path_factory.mktemp("bias") / "bias.json"
    return run_bias(load_method("fft"), card, "noiseless", N, out, chunk_groups=4)


def test_stream_equals_the_harness_on_the_same_stamps(card, streamed, tmp_path):
    path = tmp_path / "noiseless.h5"
    generate(card, "noiseless", path, n=N)
    harness = run_method(load_method("fft"), path, tmp_path / "r.json", batch_size=32, metacal=MetacalConfig())
    block = streamed["metacal"]
    assert block["mode"] == STREAMING_MODE
    for key in ("m", "c", "c1", "R11", "R22"):
        assert block[key] == pytest.approx(harness["metacal"][key], rel=1e-9, abs=1e-15), key
    assert block["n_pairs"] == N // 2
    # Poisson bootstrap over groups vs the harness's multinomial one: same size of error
    assert block["m_err"] == pytest.approx(harness["metacal"]["m_err"], rel=0.5)
    # the run's own floor: metacal of the truth images of the same stamps
    assert block["m_floor_truth"] == pytest.approx(block["truth_floor"]["overall"]["m"])
    assert abs(block["m"] - block["m_floor_truth"]) < 5e-6
    assert set(streamed) == set(harness)  # the result-file layout of run --metacal
    assert 50 < streamed["worker_peak_memory_mb"] < 4000  # MB, of the process that ran the chunks


def test_resume_after_a_kill_gives_the_same_result(card, streamed, tmp_path):
    out = tmp_path / "bias.json"
    assert run_bias(load_method("fft"), card, "noiseless", N, out, chunk_groups=4, stop_after_chunks=2) is None
    assert not out.exists() and out.with_name(out.name + ".partial.npz").exists()
    resumed = run_bias(load_method("fft"), card, "noiseless", N, out, chunk_groups=4)
    assert not out.with_name(out.name + ".partial.npz").exists()
    for key in ("m", "m_err", "c", "c_err", "m_floor_truth"):
        assert resumed["metacal"][key] == streamed["metacal"][key], key
    assert resumed["dataset"]["checksum"] == streamed["dataset"]["checksum"]


def test_extending_a_finished_run_equals_a_fresh_run(card, streamed, tmp_path):
    """A finished run keeps its state; ``extend`` continues it to a larger N and gives the
    fresh N-stamp run's numbers and digest exactly (only the new groups are rendered)."""
    from deconvbench.bias import BiasInputError, state_path

    first = tmp_path / "first.json"
    run_bias(load_method("fft"), card, "noiseless", N // 2, first, chunk_groups=4)
    assert state_path(first).exists() and not first.with_name(first.name + ".partial.npz").exists()
    extended = run_bias(load_method("fft"), card, "noiseless", N, tmp_path / "more.json", chunk_groups=4, extend=first)
    for key in ("m", "m_err", "c", "c_err", "c1", "m_floor_truth", "n_pairs"):
        assert extended["metacal"][key] == streamed["metacal"][key], key
    assert extended["dataset"]["checksum"] == streamed["dataset"]["checksum"]
    assert extended["dataset"]["n"] == N
    # not the same run, not on a chunk boundary, not larger, no state: one clear error each
    bad = [
        (dict(n=N, chunk_groups=8), "differ"),
        (dict(n=N, config=MetacalConfig(fixnoise=True)), "differ"),
        (dict(n=N // 4, chunk_groups=4), "larger --n"),
    ]
    for kwargs, message in bad:
        n = kwargs.pop("n")
        with pytest.raises(BiasInputError, match=message):
            run_bias(
                load_method("fft"),
                card,
                "noiseless",
                n,
                tmp_path / "x.json",
                **{"chunk_groups": 4, **kwargs},
                extend=first,
            )
    odd = tmp_path / "odd.json"
    run_bias(load_method("fft"), card, "noiseless", 20, odd, chunk_groups=4)  # 20 stamps: not whole 16-stamp chunks
    with pytest.raises(BiasInputError, match="chunk boundary"):
        run_bias(load_method("fft"), card, "noiseless", N, tmp_path / "y.json", chunk_groups=4, extend=odd)
    with pytest.raises(BiasInputError, match="not found"):
        run_bias(
            load_method("fft"), card, "noiseless", N, tmp_path / "z.json", chunk_groups=4, extend=tmp_path / "none.json"
        )


def test_stamp_digest_depends_on_the_stamps_not_on_chunking(card, streamed, tmp_path):
    other_chunks = run_bias(load_method("fft"), card, "noiseless", N, tmp_path / "a.json", chunk_groups=16)
    assert other_chunks["dataset"]["checksum"] == streamed["dataset"]["checksum"]
    assert other_chunks["metacal"]["m"] == pytest.approx(streamed["metacal"]["m"], rel=1e-12)
    reseeded = make_card("metacal-offsets", splits={"noiseless": {"n": 128, "seed": 5}})
    other = run_bias(load_method("fft"), reseeded, "noiseless", N, tmp_path / "b.json", chunk_groups=16)
    assert other["dataset"]["checksum"] != streamed["dataset"]["checksum"]


def test_leakage_alpha_and_floor(card, tmp_path):
    res = run_bias(load_method("fft"), card, "leakage", N, tmp_path / "l.json", chunk_groups=8)["metacal"]
    assert res["psf_g1"] == 0.05 and res["alpha"] == pytest.approx(res["c1"] / 0.05)
    assert abs(res["alpha"]) < 1e-4 and abs(res["truth_floor"]["overall"]["alpha"]) < 1e-6


def test_submit_accepts_a_stream_result_with_its_published_digest(streamed, monkeypatch, tmp_path):
    digest = streamed["dataset"]["checksum"]
    data = json.loads(json.dumps(streamed, default=float))
    data["dataset"]["card"], data["dataset"]["version"] = "metacal-offsets", "2"
    published = {("noiseless:stream", N): digest}
    monkeypatch.setattr(leaderboard, "expected_checksum", lambda card, split, n: published.get((split, n)))
    leaderboard.validate_result(data)
    assert leaderboard.canonical_name(data) == "metacal-offsets-v2_noiseless_n64_fft_bias.json"
    data["dataset"]["checksum"] = "0" * 64
    with pytest.raises(leaderboard.SubmissionError, match="checksum"):
        leaderboard.validate_result(data)


def test_published_stream_digest_is_the_bias_runs_digest(card, streamed, monkeypatch, tmp_path):
    """``record-stream-checksum``'s digest (the generator's stamps, no method, other chunks)
    is the ``dataset.checksum`` of a bias run; it is published under ``SPLIT:stream@N``,
    where ``submit`` looks it up."""
    import shutil

    from deconvbench import cards, dataset_files
    from deconvbench.bias import stream_digest

    assert stream_digest(card, "noiseless", N, chunk_groups=3) == streamed["dataset"]["checksum"]
    shutil.copy(cards.cards_dir() / "checksums.json", tmp_path / "checksums.json")
    monkeypatch.setattr(cards, "cards_dir", lambda: tmp_path)
    monkeypatch.setattr(dataset_files, "cards_dir", lambda: tmp_path)
    line = dataset_files.record_stream_checksum(card, "noiseless", N, streamed["dataset"]["checksum"])
    assert line.endswith(f"noiseless:stream@{N}: {streamed['dataset']['checksum']}")
    assert cards.expected_checksum(card, "noiseless:stream", N) == streamed["dataset"]["checksum"]
    assert cards.expected_checksum(card, "noiseless:stream", 2 * N) is None


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deconvbench.cli",
            "bias",
            "--method",
            "fft",
            "--card",
            "smoke",
            "--split",
            "test",
            "--n",
            "8",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "metacal" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for args, words in (
        (["smoke-metacal", "--split", "snr50", "--n", "6"], "multiple of 4"),
        ([str(cards_dir() / "smoke-metacal.toml"), "--split", "snr50", "--n", "8"], "not a card file"),
        (["smoke-metacal", "--split", "nope", "--n", "8"], "no split"),
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "deconvbench.cli", "record-stream-checksum", *args], capture_output=True, text=True
        )
        assert bad.returncode == 2 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _bias_cli(tmp_path, *extra):
    args = ["bias", "--method", "fft", "--card", "smoke-metacal", "--split", "snr50", "--n", "8"]
    return subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", *args, "--out", str(tmp_path / "o.json"), *extra],
        capture_output=True,
        text=True,
    )


def test_cli_passes_method_options(tmp_path):
    """``bias --option fft.precision=float32`` builds the method with it (recorded in the
    result's method params); options of another method or unknown to the method are one
    line and exit 2."""
    import json

    proc = _bias_cli(tmp_path, "--option", "fft.precision=float32")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o.json").read_text())["method"]["params"]["precision"] == "float32"
    for bad, message in (("wiener.x=1", "other than --method"), ("fft.bogus=1", "bogus")):
        proc = _bias_cli(tmp_path, "--option", bad)
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_set_runs_a_card_variant(tmp_path):
    """``bias --set stamp.psf_stamp=drawimage`` renders a variant of the card: the result records
    the variant's card hash and another stamps digest than the card's own run (which a
    published stream checksum would then refuse); a bad setting is one line and exit 2."""
    published = _bias_cli(tmp_path)
    assert published.returncode == 0, published.stderr
    base = json.loads((tmp_path / "o.json").read_text())
    proc = _bias_cli(tmp_path, "--set", "stamp.psf_stamp=drawimage")
    assert proc.returncode == 0, proc.stderr
    variant = json.loads((tmp_path / "o.json").read_text())
    assert variant["dataset"]["card_hash"] != base["dataset"]["card_hash"]
    assert variant["dataset"]["checksum"] != base["dataset"]["checksum"]
    bad = _bias_cli(tmp_path, "--set", "stamp.psf_stamp=galsim")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "psf_stamp" in bad.stderr


def test_a_split_size_changes_no_stamp():
    """A split's ``n`` only caps how many stamps can be drawn: the stamps of the first groups
    (and their digests, which chain into a bias run's dataset checksum) are the same for a
    10× larger split, so raising a streamed split's size keeps every earlier run valid."""
    card = load_card("smoke-metacal")
    split = card.splits["snr50"].model_copy(update={"n": 10 * card.splits["snr50"].n})
    bigger = card.model_copy(update={"splits": {**card.splits, "snr50": split}})
    assert bigger.card_hash() != card.card_hash()
    a, b = render_groups(card, "snr50", 1, 2), render_groups(bigger, "snr50", 1, 2)
    for key in ("observed", "noiseless", "truth", "psf", "noise_sigma"):
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(a["params"], b["params"])
