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
    """Yield dicts of arrays (``batch_size`` stamps; the last batch may be smaller)
    covering the first ``n`` stamps (default: all) once, in an order drawn from
    ``numpy.random.default_rng([seed, epoch])``."""
    rng = np.random.default_rng([seed, epoch])
    with open_dataset(path) as ds:
        total = ds.n if n is None else min(n, ds.n)
        starts = np.arange(0, total, block_size)
        rng.shuffle(starts)
        for group in range(0, len(starts), buffer_blocks):
            blocks = sorted(int(s) for s in starts[group : group + buffer_blocks])
            buffer = {
                key: np.concatenate([ds.read(key, s, min(s + block_size, total)) for s in blocks]) for key in keys
            }
            order = rng.permutation(len(buffer[keys[0]]))
            for lo in range(0, len(order), batch_size):
                idx = np.sort(order[lo : lo + batch_size])
                yield {key: value[idx] for key, value in buffer.items()}


def sequential_batches(
    path: str | Path, batch_size: int, n: int | None = None, keys: Sequence[str] = TRAINING_KEYS
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the first ``n`` stamps (default: all) in file order, ``batch_size`` at a time."""
    with open_dataset(path) as ds:
        total = ds.n if n is None else min(n, ds.n)
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            yield {key: ds.read(key, lo, hi) for key in keys}
