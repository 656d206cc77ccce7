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
from deconvbench.store import CONTENT_KEYS, IMAGE_CHUNK_STAMPS, DatasetWriter, open_dataset, shuffle_bytes, verify

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


@pytest.mark.parametrize("pieces", [[5, 64, 1, 100, 33], [203], [64, 64, 64, 11]])
def test_writer_round_trips_any_write_sizes_through_standard_filters(tmp_path, pieces):
    """Stamps arrive in pieces of any size; chunks are compressed once, by the writer, and
    the file reads back exactly with plain HDF5 (shuffle + gzip), edge chunk included."""
    n, size = sum(pieces), 9
    rng = np.random.default_rng(7)
    images = {key: rng.normal(size=(n, size, size)).astype("<f4") for key in ("observed", "noiseless", "truth", "psf")}
    params = np.zeros(n, dtype=[("index", "<i8"), ("value", "<f8")])
    params["index"], params["value"] = np.arange(n), rng.normal(size=n)
    path = tmp_path / "pieces.h5"
    with DatasetWriter(path, n, size, params.dtype, {"card_name": "t"}) as writer:
        start = 0
        for count in pieces:
            piece = slice(start, start + count)
            writer.write(
                {
                    **{k: v[piece] for k, v in images.items()},
                    "params": params[piece],
                    "noise_sigma": params["value"][piece],
                    "snr": np.full(count, 3.0),
                }
            )
            start += count
        checksum = writer.close()
    assert verify(path) == checksum
    with h5py.File(path, "r") as handle:
        for key, value in images.items():
            assert handle[key].compression == "gzip" and handle[key].shuffle
            assert handle[key].chunks == (IMAGE_CHUNK_STAMPS, size, size)
            np.testing.assert_array_equal(handle[key][:], value)
        np.testing.assert_array_equal(handle["params"][:], params)
        np.testing.assert_array_equal(handle["noise_sigma"][:], params["value"])


def test_shuffle_bytes_is_hdf5_shuffle():
    values = np.array([1.0, 2.0], dtype="<f4")
    raw = values.tobytes()
    assert shuffle_bytes(values) == bytes([raw[0], raw[4], raw[1], raw[5], raw[2], raw[6], raw[3], raw[7]])


def test_writer_refuses_more_stamps_than_the_file_holds(tmp_path):
    dtype = np.dtype([("index", "<i8")])
    with (
        pytest.raises(DataError, match="3 stamps written to a file of 2"),
        DatasetWriter(tmp_path / "over.h5", 2, 3, dtype, {}) as writer,
    ):
        writer.write(
            {
                **{k: np.zeros((3, 3, 3)) for k in ("observed", "noiseless", "truth", "psf")},
                "params": np.zeros(3, dtype),
                "noise_sigma": np.zeros(3),
                "snr": np.zeros(3),
            }
        )
    assert not (tmp_path / "over.h5").exists() and not (tmp_path / "over.h5.partial").exists()


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
