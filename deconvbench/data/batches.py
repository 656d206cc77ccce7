"""Mini-batch iterators (numpy, JAX) with deterministic shuffling by seed.

Thin public layer over :mod:`deconvbench.streaming`: the split is read in contiguous
blocks of ``block_size`` stamps (cheap for chunked HDF5), blocks are visited in a random
order and stamps are shuffled within a buffer of ``buffer_blocks`` blocks, with the
generator ``numpy.random.default_rng([seed, epoch])``. The same (file, seed, epoch) always
gives the same batches; each epoch covers every stamp exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DeconvbenchError
from ..store import open_dataset
from ..streaming import TRAINING_KEYS, sequential_batches, shuffled_batches

__all__ = ["TRAINING_KEYS", "jax_batches", "numpy_batches"]

_KNOWN_KEYS = ("observed", "noiseless", "truth", "psf", "noise_sigma", "snr", "params", "index")


class BatchError(DeconvbenchError, ValueError):
    """Bad arguments to a batch iterator."""


def numpy_batches(
    path: str | Path,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    n: int | None = None,
    keys: Sequence[str] = TRAINING_KEYS,
    block_size: int = 512,
    buffer_blocks: int = 8,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{key: array}`` with ``batch_size`` stamps along axis 0 (images (B, n, n)
    float32, scalars (B,)), covering the first ``n`` stamps (default: all) once.

    ``shuffle=False`` gives file order (for validation). ``drop_last`` drops a final
    smaller batch. Memory holds at most ``block_size * buffer_blocks`` stamps."""
    keys = tuple(keys)
    unknown = [key for key in keys if key not in _KNOWN_KEYS]
    if unknown or not keys:
        raise BatchError(f"unknown key(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(_KNOWN_KEYS)}")
    if batch_size < 1 or block_size < 1 or buffer_blocks < 1:
        raise BatchError("batch_size, block_size and buffer_blocks must be >= 1")
    with open_dataset(path):  # a clear DataError for a missing or foreign file, before iterating
        pass
    if shuffle:
        stream = shuffled_batches(
            path, batch_size, seed, epoch, n=n, block_size=block_size, buffer_blocks=buffer_blocks, keys=keys
        )
    else:
        stream = sequential_batches(path, batch_size, n=n, keys=keys)
    for batch in stream:
        if drop_last and len(batch[keys[0]]) < batch_size:
            continue
        yield batch


def jax_batches(
    path: str | Path, batch_size: int, seed: int = 0, epoch: int = 0, device=None, **options
) -> Iterator[dict]:
    """:func:`numpy_batches` as ``jax.Array`` dicts on ``device`` (default: JAX's default
    device); ``params`` (a structured array) stays numpy. Float64 arrays (``noise_sigma``,
    ``snr``) become float32 unless ``jax_enable_x64`` is set. Needs extra ``[jax]``."""
    try:
        import jax
    except ImportError:
        raise BatchError("jax_batches needs extra [jax] (pip install 'deconvbench[jax]')") from None
    for batch in numpy_batches(path, batch_size, seed=seed, epoch=epoch, **options):
        yield {key: value if value.dtype.fields else jax.device_put(value, device) for key, value in batch.items()}
