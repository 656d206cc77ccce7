"""Determinism, checksums, atomic writes, corruption detection, CLI errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from deconvbench.cards import load_card
from deconvbench.errors import CardError, DataError
from deconvbench.sim import generate as generate_module
from deconvbench.sim.generate import generate
from deconvbench.store import CONTENT_KEYS, open_dataset, verify

from .conftest import make_card


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deconvbench.cli", *args], capture_output=True, text=True, env=env)


def test_one_and_two_workers_give_identical_files(tmp_path):
    card = make_card("smoke", splits={"test": {"n": 40, "seed": 103}})
    r1 = generate(card, "test", tmp_path / "w1.h5", workers=1)
    r2 = generate(card, "test", tmp_path / "w2.h5", workers=2)
    assert r1.checksum == r2.checksum
    with open_dataset(tmp_path / "w1.h5") as a, open_dataset(tmp_path / "w2.h5") as b:
        for key in CONTENT_KEYS:
            np.testing.assert_array_equal(a.read(key), b.read(key))


def test_prefix_equals_start_of_split_and_seed_matters(tmp_path, smoke_test_file):
    card = load_card("smoke")
    generate(card, "test", tmp_path / "prefix.h5", n=16)
    with open_dataset(tmp_path / "prefix.h5") as p, open_dataset(smoke_test_file) as full:
        np.testing.assert_array_equal(p.read("observed"), full.read("observed", 0, 16))
    other = make_card("smoke", splits={"test": {"n": 16, "seed": 999}})
    generate(other, "test", tmp_path / "other.h5")
    with open_dataset(tmp_path / "prefix.h5") as p, open_dataset(tmp_path / "other.h5") as o:
        assert p.checksum != o.checksum
        assert not np.allclose(p.read("truth"), o.read("truth"))


def test_checksum_detects_changed_values(tmp_path, smoke_test_file):
    path = tmp_path / "tampered.h5"
    shutil.copy(smoke_test_file, path)
    assert verify(path)
    with h5py.File(path, "r+") as f:
        f["observed"][3, 10, 10] += 1.0
    with pytest.raises(DataError, match="checksum mismatch"):
        verify(path)
    result = _cli("verify", str(path))
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr


def test_flipped_bytes_are_caught(tmp_path, smoke_test_file):
    path = tmp_path / "flipped.h5"
    shutil.copy(smoke_test_file, path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(len(data) // 4, len(data) - 1, size=64):
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    result = _cli("verify", str(path))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_failed_generation_leaves_no_file(tmp_path, monkeypatch):
    card = make_card("smoke", splits={"test": {"n": 64, "seed": 103}})
    calls = {"n": 0}
    original = generate_module.render_chunk

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return original(*args)

    monkeypatch.setattr(generate_module, "render_chunk", failing)
    out = tmp_path / "crash.h5"
    with pytest.raises(RuntimeError):
        generate(card, "test", out)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_card_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (load_card.__globals__["cards_dir"]() / "smoke.toml")
        .read_text()
        .replace("pixel_scale_arcsec = 0.2", "pixel_scale_arcsec = -1")
    )
    with pytest.raises(CardError, match=r"stamp\.pixel_scale_arcsec"):
        load_card(bad)
    result = _cli("generate", str(bad), "--split", "test", "--out", str(tmp_path / "x.h5"))
    assert result.returncode == 2
    assert "stamp.pixel_scale_arcsec" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "no-such-card", "--split", "test"], "unknown dataset card"),
        (["generate", "smoke", "--split", "nope"], "no split 'nope'"),
        (["generate", "smoke-metacal", "--split", "noiseless", "--n", "6"], "multiple of 4"),
        (["generate", "smoke", "--split", "test", "--out", "/proc/forbidden/x.h5"], "cannot write"),
        (["verify", "/no/such/file.h5"], "no such dataset file"),
    ],
)
def test_cli_bad_input_is_one_line(args, message):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_not_hdf5_is_reported(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(DataError, match="not a readable HDF5"):
        verify(path)
