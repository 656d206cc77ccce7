"""Training-data access over the dataset HDF5 files (one file per split).

* :class:`StampDataset` — a PyTorch map-style ``Dataset`` (needs extra ``[torch]``): item
  ``i`` is a dict of tensors for stamp ``i``. Safe with ``DataLoader(num_workers=k)``:
  every process opens its own read-only handle on first access, no HDF5 handle crosses
  a fork.
* :class:`BlockShuffleBatchSampler` — its ``batch_sampler``: the same shuffled batches
  as :func:`numpy_batches`, read block by block (fast on compressed HDF5).
* :func:`numpy_batches` / :func:`jax_batches` — shuffled (or sequential) mini-batches as
  dicts of numpy / JAX arrays, in an order that depends only on ``(seed, epoch)``; memory
  is bounded by the shuffle buffer whatever the split size.

Keys are the file's datasets (``observed``, ``noiseless``, ``truth``, ``psf`` (n, n) per
stamp, in the file's flux units; ``noise_sigma``, ``snr`` scalars) and the pseudo-key
``index`` (the stamp's index in the file); ``docs/hdf5-schema.toml`` documents them.
Images are centred on pixel (n//2, n//2); the target of deconvolution is ``truth``.
"""

from __future__ import annotations

from .batches import TRAINING_KEYS, jax_batches, numpy_batches

__all__ = ["BlockShuffleBatchSampler", "StampDataset", "TRAINING_KEYS", "jax_batches", "numpy_batches"]


def __getattr__(name: str):
    # torch is an optional extra: import it only when the Dataset is asked for
    if name in ("StampDataset", "BlockShuffleBatchSampler"):
        from . import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
