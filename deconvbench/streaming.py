"""Streaming, shuffled mini-batches from a dataset HDF5 file, for training.

The file is read in contiguous blocks (cheap for chunked HDF5); each epoch visits the
blocks in a random order and shuffles stamps within a buffer of a few blocks, so memory
stays bounded by ``buffer_blocks * block_size`` stamps whatever the split size. The
order depends only on ``(seed, epoch)``: a resumed training run sees the same batches
as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .store import open_dataset

TRAINING_KEYS = ("observed", "psf", "truth", "noise_sigma")
INDEX_KEY = "index"  # pseudo-key: the stamps' indices in the file (int64)


def _read(ds, key: str, start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.int64) if key == INDEX_KEY else ds.read(key, start, stop)


def shuffled_plan(
    total: int, batch_size: int, seed: int, epoch: int, block_size: int = 512, buffer_blocks: int = 8
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """The shuffled order of one epoch over stamps ``0..total-1``, buffer by buffer.

    Yields ``(blocks, batches)``: the sorted start indices of the blocks in one shuffle
    buffer, and the batches drawn from it as positions in the concatenated buffer (sorted
    within each batch). Drawn from ``numpy.random.default_rng([seed, epoch])`` only."""
    rng = np.random.default_rng([seed, epoch])
    starts = np.arange(0, total, block_size)
    rng.shuffle(starts)
    for group in range(0, len(starts), buffer_blocks):
        blocks = sorted(int(s) for s in starts[group : group + buffer_blocks])
        size = sum(min(s + block_size, total) - s for s in blocks)
        order = rng.permutation(size)
        yield blocks, [np.sort(order[lo : lo + batch_size]) for lo in range(0, size, batch_size)]


def shuffled_index_batches(
    total: int, batch_size: int, seed: int, epoch: int, block_size: int = 512, buffer_blocks: int = 8
) -> Iterator[np.ndarray]:
    """The stamp indices of each batch of :func:`shuffled_batches` (same seed, same batches)."""
    for blocks, batches in shuffled_plan(total, batch_size, seed, epoch, block_size, buffer_blocks):
        index = np.concatenate([np.arange(s, min(s + block_size, total)) for s in blocks])
        for idx in batches:
            yield index[idx]


def shuffled_batches(
    path: str | Path,
    batch_size: int,
    seed: int,
    epoch: int,
    n: int | None = None,
    block_size: int = 512,
    buffer_blocks: int = 8,
    keys: Sequence[str] = TRAINING_KEYS,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield dicts of arrays (``batch_size`` stamps; the last batch of each buffer may be
    smaller) covering the first ``n`` stamps (default: all) once, in the order of
    :func:`shuffled_plan`. ``keys`` may include ``"index"`` (the stamps' indices in the file)."""
    with open_dataset(path) as ds:
        total = ds.n if n is None else min(n, ds.n)
        for blocks, batches in shuffled_plan(total, batch_size, seed, epoch, block_size, buffer_blocks):
            buffer = {
                key: np.concatenate([_read(ds, key, s, min(s + block_size, total)) for s in blocks]) for key in keys
            }
            for idx in batches:
                yield {key: value[idx] for key, value in buffer.items()}


def sequential_batches(
    path: str | Path, batch_size: int, n: int | None = None, keys: Sequence[str] = TRAINING_KEYS
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the first ``n`` stamps (default: all) in file order, ``batch_size`` at a time."""
    with open_dataset(path) as ds:
        total = ds.n if n is None else min(n, ds.n)
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            yield {key: _read(ds, key, lo, hi) for key in keys}
