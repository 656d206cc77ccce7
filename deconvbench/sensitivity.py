"""Sensitivities of the shear bias to PSF-model errors, fitted over result files.

Runs of one method on the same stamps that differ only in the PSF-model error
(``deconvbench run --psf-error``, :mod:`deconvbench.psf_error`) form a *series*. Along
each axis of the error (the others zero) the metacal bias is a straight line to first
order, and its slope is the sensitivity:

* ``dm/d(δT/T)``: m against the size error ``size`` (runs with e1 = e2 = 0);
* ``dc1/dδg1``: c1 against ``e1`` (runs with size = e2 = 0);
* ``dc2/dδg2``: c (component 2) against ``e2`` (runs with size = e1 = 0).

The slope comes from a weighted least-squares line through the runs, weights
``1/σ²`` from each run's bootstrap error (over ±g pairs). The runs share their stamps,
so their errors are correlated; the fit treats them as independent, which over-states
the slope's error for a noiseless set (an upper bound). The analytic expectation ``K``
(:func:`deconvbench.psf_error.analytic_coefficient`) recorded in the runs' ``psf_error``
block stands beside it: ``dm/d(δT/T) ≈ K``, ``dc_i/dδg_i ≈ −K``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

#: (name, error axis, metacal key of the bias, key of its error)
AXES = (
    ("dm_dsize", "size", "m", "m_err"),
    ("dc1_de1", "e1", "c1", "c1_err"),
    ("dc2_de2", "e2", "c", "c_err"),
)


@dataclass(frozen=True)
class LineFit:
    """``y = intercept + slope · x`` with 1σ errors; ``n`` points."""

    slope: float
    slope_err: float
    intercept: float
    intercept_err: float
    n: int


def fit_line(x, y, y_err) -> LineFit:
    """Weighted least-squares straight line (weights ``1/y_err²``; errors from the
    covariance of the estimate). Needs at least two distinct x; zero or missing errors
    fall back to equal weights with errors scaled by the residuals."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    err = np.asarray(y_err, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two distinct x values")
    weighted = np.all(np.isfinite(err) & (err > 0))
    w = 1.0 / err**2 if weighted else np.ones_like(x)
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    intercept, slope = cov @ (design.T @ (w * y))
    if not weighted:
        dof = max(len(x) - 2, 1)
        cov = cov * float(np.sum((y - intercept - slope * x) ** 2)) / dof
    return LineFit(float(slope), float(math.sqrt(cov[1, 1])), float(intercept), float(math.sqrt(cov[0, 0])), len(x))


def psf_error_of(result: dict) -> dict:
    """(size, e1, e2) of a result: its ``psf_error`` block, zeros for an exact-PSF run."""
    block = result.get("psf_error") or {}
    return {key: float(block.get(key, 0.0)) for key in ("size", "e1", "e2")}


def series_key(result: dict) -> tuple:
    """What a series shares: method and its parameters, dataset file content, metacal setup.
    Not the split's name: the splits of a PSF-model variant card (``psf_model_error``) hold
    the same stamps under different names and form one series."""
    mc = result.get("metacal") or {}
    ds = result["dataset"]
    method = result["method"]
    return (
        method["name"],
        json.dumps(method.get("params", {}), sort_keys=True),
        ds["card"],
        ds["version"],
        ds["n"],
        ds["checksum"],
        mc.get("estimator"),
        bool(mc.get("fixnoise")),
    )


def _splits_label(runs: list[dict]) -> str:
    """The split of a series, or ``"N variant splits"`` for the splits of a variant card."""
    splits = sorted({r["dataset"]["split"] for r in runs})
    return splits[0] if len(splits) == 1 else f"{len(splits)} variant splits"


def sensitivities(results: list[dict]) -> list[dict]:
    """One row per series holding at least one run with a PSF-model error: method, card,
    version, split, n, and for each axis with two or more error values its slope
    ``{name}``, ``{name}_err`` and the number of runs ``{name}_runs`` (None otherwise), the
    analytic ``K`` of the series and the result files used. Sorted by card, split, method."""
    series: dict[tuple, list[dict]] = {}
    for result in results:
        if result.get("metacal"):
            series.setdefault(series_key(result), []).append(result)
    rows = []
    for key, runs in series.items():
        if not any(r.get("psf_error") for r in runs):
            continue
        row = {
            "method": key[0],
            "card": key[2],
            "version": key[3],
            "split": _splits_label(runs),
            "n": key[4],
            "K": next((r["psf_error"]["analytic"]["K"] for r in runs if r.get("psf_error")), None),
            "files": sorted(r.get("_file", "") for r in runs),
        }
        for name, axis, value, error in AXES:
            points = {}
            for r in runs:
                err = psf_error_of(r)
                if all(err[other] == 0.0 for other in ("size", "e1", "e2") if other != axis):
                    block = r["metacal"]
                    points[err[axis]] = (block.get(value), block.get(error))  # one run per error value
            usable = {x: p for x, p in points.items() if p[0] is not None}
            row[name] = row[f"{name}_err"] = None
            row[f"{name}_runs"] = len(usable)
            if len(usable) >= 2:
                xs = sorted(usable)
                fit = fit_line(xs, [usable[x][0] for x in xs], [usable[x][1] or 0.0 for x in xs])
                row[name], row[f"{name}_err"] = fit.slope, fit.slope_err
        rows.append(row)
    rows.sort(key=lambda r: (r["card"], r["split"], r["n"], r["method"]))
    return rows
