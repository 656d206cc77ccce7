"""docs/hdf5-schema.toml documents exactly what the writers produce (names, dtypes, shapes)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from deconvbench.harness import run_method
from deconvbench.methods import load_method
from deconvbench.store import CONTENT_KEYS, FORMAT_VERSION

REPO = Path(__file__).resolve().parent.parent
SCHEMA = tomllib.loads((REPO / "docs" / "hdf5-schema.toml").read_text())
ATTR_TYPES = {"str": (str, bytes), "int": (int, np.integer), "float": (float, np.floating)}


def _dtype_name(dataset: h5py.Dataset) -> str:
    return "structured" if dataset.dtype.names else dataset.dtype.name


def _check(handle: h5py.File, documented: dict, n: int, size: int) -> None:
    assert sorted(handle.keys()) == sorted(documented["datasets"])
    for name, spec in documented["datasets"].items():
        dataset = handle[name]
        assert _dtype_name(dataset) == spec["dtype"], name
        assert list(dataset.shape) == [{"N": n, "n": size}[d] for d in spec["shape"]], name
        assert dataset.dtype.byteorder in "<=|", name  # little-endian on disk
        assert spec["unit"] and spec["meaning"], name
    assert sorted(handle.attrs.keys()) == sorted(documented["attributes"])
    for name, spec in documented["attributes"].items():
        assert isinstance(handle.attrs[name], ATTR_TYPES[spec["dtype"]]), name
        assert spec["meaning"], name


def test_schema_names_every_content_dataset_and_the_format_version():
    assert SCHEMA["format_version"] == FORMAT_VERSION
    assert sorted(SCHEMA["dataset_file"]["datasets"]) == sorted(CONTENT_KEYS)


def test_dataset_file_matches_the_schema(smoke_test_file):
    with h5py.File(smoke_test_file, "r") as handle:
        _check(handle, SCHEMA["dataset_file"], n=64, size=48)
        assert handle.attrs["format_version"] == SCHEMA["format_version"]


def test_estimate_file_matches_the_schema(smoke_test_file, tmp_path):
    run_method(
        load_method("fft"), smoke_test_file, tmp_path / "r.json", batch_size=64, save_outputs=tmp_path / "est.h5"
    )
    with h5py.File(tmp_path / "est.h5", "r") as handle:
        _check(handle, SCHEMA["estimate_file"], n=64, size=48)


def test_an_undocumented_attribute_is_caught(smoke_test_file, tmp_path):
    """The check itself can fail: a file with one extra attribute does not match."""
    copy = tmp_path / "copy.h5"
    copy.write_bytes(Path(smoke_test_file).read_bytes())
    with h5py.File(copy, "a") as handle:
        handle.attrs["undocumented"] = 1
    with h5py.File(copy, "r") as handle, pytest.raises(AssertionError):
        _check(handle, SCHEMA["dataset_file"], n=64, size=48)
