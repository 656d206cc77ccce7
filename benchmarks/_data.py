"""Shared fixtures for the asv benchmarks: small generated datasets, methods.

Everything is generated from the cards (nothing is downloaded). asv calls ``setup_cache``
once per benchmark class and environment, in a temporary working directory that it
removes afterwards, and hands its return value to every benchmark: files are therefore
written under the working directory (never to a folder of their own that would stay
behind). A method that cannot be loaded fails its benchmark loudly: every benchmarked
method is part of the ``[all]`` install that asv uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deconvbench.cards import load_card
from deconvbench.methods import Batch, Deconvolver, MethodError, load_method
from deconvbench.sim.generate import generate
from deconvbench.store import open_dataset


def generate_split(card: str, split: str, n: int | None = None) -> str:
    """Generate ``card``/``split`` into the working directory (asv's cache folder)."""
    path = Path.cwd() / "deconvbench-asv-data" / f"{card}-{split}{'' if n is None else f'-n{n}'}.h5"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        generate(load_card(card), split, path, n=n)
    return str(path)


def benchmarked_method(name: str) -> Deconvolver:
    """Load ``name``; a missing method is an error of the benchmark, not a silent skip."""
    try:
        return load_method(name)
    except MethodError as exc:
        raise RuntimeError(f"benchmarked method {name!r} is missing (asv installs extras [all]): {exc}") from exc


def load_batch(path: str, size: int) -> Batch:
    """``size`` stamps of the file (tiled if the file is smaller) as a :class:`Batch`."""
    with open_dataset(path) as ds:
        arrays = {key: ds.read(key) for key in ("observed", "psf", "noise_sigma")}
        pixel, target = ds.pixel_scale_arcsec, ds.target_psf_fwhm_arcsec
    reps = -(-size // len(arrays["observed"]))
    arrays = {key: np.concatenate([value] * reps)[:size] for key, value in arrays.items()}
    return Batch(**arrays, pixel_scale_arcsec=pixel, target_fwhm_arcsec=target)
