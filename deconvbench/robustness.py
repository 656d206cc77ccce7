"""The leaderboard's robustness tables, from result files like every other column.

* **PSF-model sensitivities** (:func:`deconvbench.sensitivity.sensitivities`): per method
  and metacal split, the slopes dm/d(δT/T), dc1/dδg1 and dc2/dδg2 fitted over runs
  with ``--psf-error`` (δ = model − true; δT/T relative size error of T = Ixx + Iyy, δg a
  reduced shear), with 1σ errors, beside the analytic expectation K (dm/d(δT/T) ≈ K,
  dc/dδg ≈ −K; :mod:`deconvbench.psf_error`).
* **In-family / out-of-family** (:mod:`deconvbench.family`): every exact-PSF result of a
  trained method, marked in-family or out-of-family against its training card, with
  NMSE and m; methods without training on the same stamps are the reference rows.
"""

from __future__ import annotations

from .family import OUT_OF_FAMILY
from .sensitivity import sensitivities

SENSITIVITY_COLUMNS = [
    "method",
    "dataset",
    "dm/d(δT/T)",
    "dc1/dδg1",
    "dc2/dδg2",
    "analytic: dm/d(δT/T) = K, dc/dδg = −K",
    "runs",
]
FAMILY_COLUMNS = ["method", "dataset", "family", "NMSE", "m ± σm", "trained on", "why out-of-family", "result file"]

SENSITIVITY_NOTE = (
    "PSF-model sensitivities: slopes of m and c over runs with `--psf-error` (model − true; δT/T the relative "
    "error of the PSF size T = Ixx+Iyy, δg a reduced shear applied to the model PSF), weighted straight-line fit "
    "with the runs' bootstrap errors (the runs share their stamps, so the errors are upper bounds). K = "
    "Σ T_psf/(T_gal+T_Γ) / Σ T_gal/(T_gal+T_Γ) from adaptive moments of the same stamps (first-order expectation "
    "for moments-based shapes, Paulin-Henriksson et al. 2008)."
)
FAMILY_NOTE = (
    "In-family: the evaluated card's PSF families and geometry (pixel scale, stamp size, target FWHM) are those "
    "of the method's training card; out-of-family runs need the method's explicit option "
    "(e.g. `--option deconvnet-torch.allow_out_of_family=true`). Methods without training are the reference."
)


def _pm(value, err, spec: str) -> str:
    if value is None:
        return "–"
    return f"{format(value, spec)} ± {format(err, spec)}" if err is not None else format(value, spec)


def _dataset(card: str, version: str, split: str, n: int) -> str:
    return f"{card} v{version} {split} (n = {n})"


def sensitivity_rows(results: list[dict]) -> list[list[str]]:
    """Formatted cells of the sensitivity table (:data:`SENSITIVITY_COLUMNS`)."""
    rows = []
    for row in sensitivities(results):
        k = row["K"]
        runs = max(row["dm_dsize_runs"], row["dc1_de1_runs"], row["dc2_de2_runs"])
        rows.append(
            [
                row["method"],
                _dataset(row["card"], row["version"], row["split"], row["n"]),
                _pm(row["dm_dsize"], row["dm_dsize_err"], ".3f"),
                _pm(row["dc1_de1"], row["dc1_de1_err"], ".3f"),
                _pm(row["dc2_de2"], row["dc2_de2_err"], ".3f"),
                "–" if k is None else f"{k:.3f}",
                str(len(row["files"])) if runs else "0",
            ]
        )
    return rows


def family_rows(results: list[dict]) -> list[list[str]]:
    """Formatted cells of the in/out-of-family table (:data:`FAMILY_COLUMNS`): exact-PSF
    results of trained methods, and of untrained methods on the same stamps (reference)."""
    exact = [r for r in results if not r.get("psf_error")]
    datasets = {_key(r) for r in exact if r.get("evaluation")}
    chosen = [r for r in exact if _key(r) in datasets]
    rows = []
    for r in sorted(chosen, key=lambda r: (_key(r), r.get("evaluation") is None, r["method"]["name"])):
        evaluation = r.get("evaluation")
        mc = (r.get("metacal") or {}).get("overall") or {}
        nmse = ((r.get("metrics") or {}).get("overall") or {}).get("nmse", {}).get("mean")
        ds = r["dataset"]
        rows.append(
            [
                r["method"]["name"],
                _dataset(ds["card"], ds["version"], ds["split"], ds["n"]),
                evaluation["family"] if evaluation else "reference (no training)",
                "–" if nmse is None else f"{nmse:.3e}",
                _pm(mc.get("m"), mc.get("m_err"), ".1e"),
                (evaluation or {}).get("trained_on") or "–",
                "; ".join(evaluation["reasons"]) if evaluation and evaluation["family"] == OUT_OF_FAMILY else "–",
                r.get("_file", ""),
            ]
        )
    return rows


def _key(result: dict) -> tuple:
    ds = result["dataset"]
    return (ds["card"], ds["version"], ds["split"], ds["n"])
