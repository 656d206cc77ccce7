"""All per-stamp metrics at once, and their aggregation into JSON-ready summaries.

:func:`stamp_metrics` evaluates every metric of :mod:`.image` and :mod:`.shapes` on a
batch; :func:`aggregate` summarises per-stamp arrays over the whole set ("overall") and
over each value of one or more grouping labels (e.g. SNR level, PSF family)::

    {"overall": block, "by_snr": {"10": block, ..., "noiseless": block},
     "by_psf_family": {"ground": block, "moffat": block}}

A block (all numbers plain Python ints/floats, NaN -> None)::

    {"n": stamps in the set,
     "count": stamps evaluated (at least one finite metric; a stamp on which the method
              failed has every metric NaN and is left out),
     "failures": evaluated stamps with a NaN metric or a failed shape measurement,
     "nmse": {"mean": ..., "median": ..., "count": finite values used,
              "failures": non-finite values (NaN, ±inf) among the evaluated stamps},
     ... one entry per metric}

Flag metrics (:data:`FLAG_METRICS`, ``shape_failed``; bool, or float 0/1 with NaN for
"not evaluated") are summarised as the fraction of set flags (``mean``; ``median`` is
the majority, 0 or 1) and ``failures`` = the number of set flags. A PSNR of +inf (a
perfect estimate) is left out of the mean and median and counted in that metric's
``failures`` but does not make the stamp a failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .image import centroid_error, flux_error, nmse, psnr, ssim
from .shapes import shape_errors

METRICS = (
    "nmse",
    "psnr",
    "ssim",
    "flux_err",
    "centroid_err",
    "de1",
    "de2",
    "e_err",
    "size_err",
    "shape_failed",
)


def stamp_metrics(
    est: np.ndarray, truth: np.ndarray, truth_moments: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every per-stamp metric of ``est`` against ``truth`` ((B, n, n) each): a dict of (B,)
    arrays with keys :data:`METRICS`: ``nmse``, ``psnr`` (dB), ``ssim``, ``flux_err``
    (relative), ``centroid_err`` (pixels), ``de1``, ``de2`` (distortion errors),
    ``e_err`` = hypot(de1, de2), ``size_err`` (sigma_est/sigma_truth − 1) and
    ``shape_failed`` (bool). ``truth_moments``: optional cached
    :func:`~deconvbench.metrics.shapes.adaptive_moments` of ``truth``."""
    est = np.asarray(est, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if est.ndim == 2:
        est, truth = est[None], truth[None]
    if est.shape != truth.shape or est.ndim != 3:
        raise ValueError(f"est and truth must both be (B, n, n), got {est.shape} and {truth.shape}")
    shapes = shape_errors(est, truth, truth_moments)
    return {
        "nmse": nmse(est, truth),
        "psnr": psnr(est, truth),
        "ssim": ssim(est, truth),
        "flux_err": flux_error(est, truth),
        "centroid_err": centroid_error(est, truth),
        "de1": shapes["de1"],
        "de2": shapes["de2"],
        "e_err": np.hypot(shapes["de1"], shapes["de2"]),
        "size_err": shapes["size_err"],
        "shape_failed": shapes["failed"],
    }


FLAG_METRICS = ("shape_failed",)


def _float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(per_stamp: Mapping[str, np.ndarray], select: np.ndarray | None = None) -> dict[str, Any]:
    """Block (see the module doc) of the stamps where ``select`` (bool mask) is True."""
    arrays = {name: np.asarray(v) for name, v in per_stamp.items()}
    n_total = len(next(iter(arrays.values()))) if arrays else 0
    sel = np.ones(n_total, bool) if select is None else np.asarray(select, bool)
    values = {name: (a[sel].astype(np.float64)) for name, a in arrays.items()}
    size = int(sel.sum())
    if values:
        evaluated = np.any(np.stack([np.isfinite(v) for v in values.values()]), axis=0)
    else:
        evaluated = np.zeros(size, bool)
    failed = np.zeros(size, bool)
    block: dict[str, Any] = {"n": size, "count": int(evaluated.sum()), "failures": 0}
    for name, v in values.items():
        v = v[evaluated]
        finite = v[np.isfinite(v)]
        if name in FLAG_METRICS:
            flags = np.isfinite(v) & (v != 0)
            frac = float(flags.sum() / finite.size) if finite.size else None
            block[name] = {
                "mean": frac,
                "median": None if frac is None else float(frac > 0.5),
                "count": int(finite.size),
                "failures": int(flags.sum()),
            }
            failed[evaluated] |= flags
            continue
        block[name] = {
            "mean": _float(finite.mean()) if finite.size else None,
            "median": _float(np.median(finite)) if finite.size else None,
            "count": int(finite.size),
            "failures": int(v.size - finite.size),
        }
        failed[evaluated] |= np.isnan(v) | np.isneginf(v) | (np.isposinf(v) & (name != "psnr"))
    block["failures"] = int(failed.sum())
    return block


def label(value: Any) -> str:
    """String label of a group value: bytes decoded, integral numbers without '.0'."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode()
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return str(int(v)) if v.is_integer() else f"{v:g}"
    return str(value)


def snr_labels(snr: np.ndarray) -> np.ndarray:
    """Labels of SNR levels: '10', '20', ..., 'noiseless' for inf (stored SNRs are rounded
    to the nearest integer level, e.g. 199.99... -> '200')."""
    out = []
    for s in np.asarray(snr, dtype=np.float64):
        if math.isinf(s) and s > 0:
            out.append("noiseless")
        elif math.isnan(s):
            out.append("nan")
        else:
            out.append(label(float(np.round(s)) if abs(s - np.round(s)) < 1e-3 * max(abs(s), 1) else s))
    return np.array(out, dtype=object)


def _sort_key(text: str):
    special = {"inf": math.inf, "noiseless": math.inf, "-inf": -math.inf}
    try:
        return (0, special[text] if text in special else float(text), text)
    except ValueError:
        return (1, 0.0, text)


def aggregate(per_stamp: Mapping[str, np.ndarray], groups: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Summaries over all stamps and per group value.

    ``per_stamp``: metric name -> (N,) array (e.g. concatenated :func:`stamp_metrics`);
    ``groups``: group name -> (N,) labels (strings or numbers; converted with
    :func:`label`, so pass :func:`snr_labels` for SNR levels). Returns
    ``{"overall": block, "by_<group name>": {label: block, ...}, ...}`` (see the module
    doc) with labels in numeric order where they are numbers (then 'inf'/'noiseless'),
    else alphabetical. Means and medians use finite values only; the result is
    JSON-serialisable (``json.dumps(..., allow_nan=False)`` works).
    """
    per_stamp = {k: np.asarray(v) for k, v in per_stamp.items()}
    lengths = {len(v) for v in per_stamp.values()}
    if len(lengths) > 1:
        raise ValueError(f"per-stamp arrays have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    out: dict[str, Any] = {"overall": summarize(per_stamp)}
    for group_name, labels in (groups or {}).items():
        labels = np.asarray(labels, dtype=object)
        if labels.shape != (n,):
            raise ValueError(f"group {group_name!r} has {labels.shape} labels for {n} stamps")
        text = np.array([label(v) for v in labels], dtype=object)
        out[f"by_{group_name}"] = {
            value: summarize(per_stamp, text == value) for value in sorted(set(text), key=_sort_key)
        }
    return out
