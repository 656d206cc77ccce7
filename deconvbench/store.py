"""HDF5 storage of datasets: schema, checksums, atomic writes, streaming reads.

One file per split. Datasets (N = number of stamps, n = stamp side):

=============== ============ ===========================================================
``observed``    (N, n, n) f4 galaxy ⊗ effective PSF + noise
``noiseless``   (N, n, n) f4 the same without noise
``truth``       (N, n, n) f4 galaxy ⊗ round Gaussian target ⊗ pixel
``psf``         (N, n, n) f4 effective PSF (optics ⊗ atmosphere ⊗ pixel), sum 1
``noise_sigma`` (N,) f8      Gaussian noise standard deviation (0 = noiseless)
``snr``         (N,) f8      sqrt(Σ noiseless²)/noise_sigma (inf = noiseless)
``params``      (N,) struct  every galaxy, PSF, shear and seed parameter
=============== ============ ===========================================================

Attributes: ``format_version``, ``card_name``, ``card_version``, ``card_hash``,
``card_json``, ``split``, ``n``, ``stamp_size``, ``pixel_scale_arcsec``,
``target_psf_fwhm_arcsec``, ``kind``, ``deconvbench_version``, ``galsim_version`` and
``checksum``: the content checksum, a sha256 over the per-dataset sha256 of every
dataset's little-endian bytes in index order (independent of chunking and compression).

Files are written to ``NAME.partial`` and renamed into place only when complete, so an
interrupted run never leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import DataError

FORMAT_VERSION = 1
IMAGE_KEYS = ("observed", "noiseless", "truth", "psf")
VECTOR_KEYS = ("noise_sigma", "snr", "params")
CONTENT_KEYS = IMAGE_KEYS + VECTOR_KEYS


class ContentHasher:
    """Incremental content checksum: feed chunks in index order, any chunk sizes."""

    def __init__(self) -> None:
        self._hashes = {key: hashlib.sha256() for key in CONTENT_KEYS}

    def update(self, key: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype.fields is None and array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        self._hashes[key].update(array.tobytes())

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for key in CONTENT_KEYS:
            total.update(f"{key}:{self._hashes[key].hexdigest()}\n".encode())
        return total.hexdigest()


class DatasetWriter:
    """Write a split sequentially; the file appears under ``path`` only on success."""

    def __init__(self, path: str | Path, n: int, stamp_size: int, params_dtype: np.dtype, attrs: dict):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.partial, "w", track_order=True)
        except OSError as exc:
            raise DataError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.n = n
        self.hasher = ContentHasher()
        self.written = 0
        chunk = (min(64, n), stamp_size, stamp_size)
        for key in IMAGE_KEYS:
            self._file.create_dataset(
                key,
                shape=(n, stamp_size, stamp_size),
                dtype="<f4",
                chunks=chunk,
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )
        for key, dtype in (("noise_sigma", "<f8"), ("snr", "<f8"), ("params", params_dtype)):
            self._file.create_dataset(key, shape=(n,), dtype=dtype, chunks=(min(1024, n),), compression="gzip")
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.attrs["format_version"] = FORMAT_VERSION

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the next chunk (arrays for stamps written..written+len)."""
        count = len(arrays["params"])
        sl = slice(self.written, self.written + count)
        for key in CONTENT_KEYS:
            data = arrays[key]
            self._file[key][sl] = data
            self.hasher.update(key, np.asarray(data, dtype=self._file[key].dtype))
        self.written += count

    def close(self) -> str:
        if self.written != self.n:
            raise DataError(f"internal error: wrote {self.written} of {self.n} stamps")
        checksum = self.hasher.hexdigest()
        self._file.attrs["checksum"] = checksum
        self._file.close()
        os.replace(self.partial, self.path)
        return checksum

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


@dataclass
class DatasetFile:
    """A read-only handle on a dataset file; use as a context manager."""

    path: Path
    _file: h5py.File

    @property
    def attrs(self) -> dict:
        return {key: (value.decode() if isinstance(value, bytes) else value) for key, value in self._file.attrs.items()}

    @property
    def n(self) -> int:
        return int(self._file["observed"].shape[0])

    @property
    def stamp_size(self) -> int:
        return int(self._file["observed"].shape[-1])

    @property
    def pixel_scale_arcsec(self) -> float:
        return float(self._file.attrs["pixel_scale_arcsec"])

    @property
    def target_psf_fwhm_arcsec(self) -> float:
        return float(self._file.attrs["target_psf_fwhm_arcsec"])

    @property
    def checksum(self) -> str:
        return str(self._file.attrs["checksum"])

    @property
    def card(self) -> dict:
        return json.loads(self._file.attrs["card_json"])

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._file[key][start:stop]

    def params(self) -> np.ndarray:
        return self._file["params"][:]

    def iter_batches(self, batch_size: int, start: int = 0, keys=CONTENT_KEYS) -> Iterator[tuple[int, dict]]:
        """Yield (start index, {key: array}) in order; memory bounded by ``batch_size``."""
        for lo in range(start, self.n, batch_size):
            hi = min(lo + batch_size, self.n)
            yield lo, {key: self._file[key][lo:hi] for key in keys}

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_dataset(path: str | Path) -> DatasetFile:
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such dataset file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot read {path}: not a readable HDF5 file ({exc})") from None
    missing = [key for key in CONTENT_KEYS if key not in handle]
    if missing or "checksum" not in handle.attrs:
        handle.close()
        raise DataError(f"{path} is not a deconvbench dataset (missing: {', '.join(missing) or 'checksum'})")
    return DatasetFile(path, handle)


def compute_checksum(dataset: DatasetFile, chunk: int = 512) -> str:
    hasher = ContentHasher()
    for key in CONTENT_KEYS:
        ds = dataset._file[key]
        for lo in range(0, ds.shape[0], chunk):
            hasher.update(key, ds[lo : lo + chunk])
    return hasher.hexdigest()


def verify(path: str | Path) -> str:
    """Recompute the content checksum; raise :class:`DataError` on any mismatch or read error."""
    try:
        with open_dataset(path) as dataset:
            stored = dataset.checksum
            actual = compute_checksum(dataset)
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: corrupt or unreadable ({exc})") from None
    if actual != stored:
        raise DataError(f"{path}: checksum mismatch (stored {stored[:12]}…, content {actual[:12]}…): file is corrupt")
    return actual
