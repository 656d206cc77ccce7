"""Shared fixtures for the asv benchmarks: small generated datasets in a temp folder.

Everything is generated from the cards (nothing is downloaded); asv calls ``setup_cache``
once per benchmark class and environment and hands its return value to every benchmark.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from deconvbench.cards import load_card
from deconvbench.methods import Batch
from deconvbench.sim.generate import generate
from deconvbench.store import open_dataset


def generate_split(card: str, split: str, n: int | None = None) -> str:
    folder = Path(tempfile.mkdtemp(prefix="deconvbench-asv-"))
    path = folder / f"{card}-{split}.h5"
    generate(load_card(card), split, path, n=n)
    return str(path)


def load_batch(path: str, size: int) -> Batch:
    """``size`` stamps of the file (tiled if the file is smaller) as a :class:`Batch`."""
    with open_dataset(path) as ds:
        arrays = {key: ds.read(key) for key in ("observed", "psf", "noise_sigma")}
        pixel, target = ds.pixel_scale_arcsec, ds.target_psf_fwhm_arcsec
    reps = -(-size // len(arrays["observed"]))
    arrays = {key: np.concatenate([value] * reps)[:size] for key, value in arrays.items()}
    return Batch(**arrays, pixel_scale_arcsec=pixel, target_fwhm_arcsec=target)
