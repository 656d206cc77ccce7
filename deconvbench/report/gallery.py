"""The gallery's stamps: a few fixed stamps of a dataset, deconvolved by each method.

Result files hold no images, so the report regenerates the first ``pool`` stamps of the
section's split from its card (bit-identical to the first stamps of the published split:
each stamp's randomness depends only on (card seed, split, index)), picks up to
``count`` of them at different SNR levels (lowest, middle, highest; deterministic) and
runs every method of the section on them. A method that is not installed or fails is
named on the page instead of crashing the report.
"""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path

import numpy as np

from ..cards import load_card
from ..errors import DeconvbenchError
from ..methods import Batch, load_method
from ..metrics.aggregate import snr_labels
from ..sim.generate import generate
from ..store import open_dataset
from .collect import snr_sort_key


def pick_stamps(levels: list[str], count: int) -> list[int]:
    """Indices of up to ``count`` stamps with distinct SNR labels spread from the lowest to
    the highest level (first stamp of each chosen level)."""
    first: dict[str, int] = {}
    for index, label in enumerate(levels):
        first.setdefault(label, index)
    ordered = sorted(first, key=snr_sort_key)
    if len(ordered) <= count:
        chosen = ordered
    else:
        chosen = [ordered[int(round(i * (len(ordered) - 1) / max(count - 1, 1)))] for i in range(count)]
    return [first[label] for label in chosen]


def gallery_stamps(
    card_name: str,
    version: str,
    split: str,
    method_names: list[str],
    count: int = 3,
    pool: int = 12,
    workdir: str | Path | None = None,
    instances: dict | None = None,
) -> tuple[list[dict], dict[str, str]]:
    """(stamps, notes): the chosen stamps with each method's estimate, and a note per
    method that could not run (not installed, failed). ``instances`` caches loaded
    methods across calls (one load per report)."""
    instances = {} if instances is None else instances
    card = load_card(card_name)
    if str(card.version) != str(version):
        raise DeconvbenchError(f"card {card_name} is now version {card.version}, the results are for version {version}")
    n = min(pool, card.split(split).n)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{card_name}_{split}_first{n}.h5"
        generate(card, split, path, n=n)
        with open_dataset(path) as ds:
            arrays = {key: ds.read(key) for key in ("observed", "psf", "truth", "noise_sigma", "snr")}
            params = ds.params()
            pixel_scale, target_fwhm = ds.pixel_scale_arcsec, ds.target_psf_fwhm_arcsec
    levels = [str(s) for s in snr_labels(params["snr_level"])]
    chosen = pick_stamps(levels, count)
    batch = Batch(
        observed=arrays["observed"][chosen],
        psf=arrays["psf"][chosen],
        noise_sigma=arrays["noise_sigma"][chosen],
        pixel_scale_arcsec=pixel_scale,
        target_fwhm_arcsec=target_fwhm,
    )
    estimates: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for name in method_names:
        try:
            if name not in instances:
                instances[name] = load_method(name)
            method = instances[name]
            output = np.asarray(method.deconvolve(batch), dtype=np.float64)
            if output.shape != batch.observed.shape:
                raise ValueError(f"wrong output shape {output.shape}")
            estimates[name] = output
        except DeconvbenchError as exc:
            notes[name] = str(exc)
        except Exception as exc:  # a broken method is reported on the page, never fatal
            where = traceback.extract_tb(exc.__traceback__)[-1]
            notes[name] = f"failed: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    stamps = []
    for row, index in enumerate(chosen):
        family, profile = _text(params, "psf_family", index), _text(params, "gal_profile", index)
        snr = levels[index]
        stamps.append(
            {
                "index": int(index),
                "observed": arrays["observed"][index],
                "psf": arrays["psf"][index],
                "truth": arrays["truth"][index],
                "estimates": {name: est[row] for name, est in estimates.items()},
                "label": f"stamp {index}",
                "caption": f"{card_name}/{split} stamp {index}\nSNR {snr}, PSF {family}\ngalaxy {profile}\n"
                f"σ = {arrays['noise_sigma'][index]:.3g}",
            }
        )
    return stamps, notes


def _text(params: np.ndarray, column: str, index: int) -> str:
    if column not in (params.dtype.names or ()):
        return "?"
    value = params[column][index]
    return value.decode() if isinstance(value, bytes) else str(value)
