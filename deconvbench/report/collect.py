"""Result files → the series the report plots (pure functions, no matplotlib).

A *section* of the report is one dataset: a (card, version, split) for image-metric runs,
or a whole constant-shear card (all its splits) for metacal runs. Series are keyed by
the method's display name (name + variant suffix, e.g. ``fft fixnoise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeconvbenchError
from ..leaderboard import _variant, load_results


class ReportError(DeconvbenchError, ValueError):
    """The report cannot be made from the given input (no results, unreadable file)."""


@dataclass
class Section:
    """One dataset of the report and the results that belong to it."""

    card: str
    version: str
    split: str | None  # None: every split of a metacal card
    results: list[dict] = field(default_factory=list)

    @property
    def title(self) -> str:
        where = self.split if self.split is not None else "metacal splits " + ", ".join(self.splits)
        return f"{self.card} v{self.version} — {where}"

    @property
    def slug(self) -> str:
        return f"{self.card}-v{self.version}_{self.split or 'metacal'}"

    @property
    def splits(self) -> list[str]:
        return sorted({r["dataset"]["split"] for r in self.results})

    @property
    def is_metacal(self) -> bool:
        return self.split is None


def display_name(result: dict) -> str:
    return result["method"]["name"] + _variant(result).replace("_", " ")


def snr_sort_key(label: str) -> tuple:
    """SNR labels in increasing order, 'noiseless' last, anything else after."""
    if label == "noiseless":
        return (1, math.inf, label)
    try:
        return (0, float(label), label)
    except ValueError:
        return (2, 0.0, label)


def load_sections(results_dir: str | Path) -> list[Section]:
    """Every result file of ``results_dir`` grouped into sections (sorted, deterministic)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportError(f"no results directory {results_dir}")
    try:
        results = load_results(results_dir)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"a result file in {results_dir} is not valid JSON: {exc}") from None
    if not results:
        raise ReportError(f"no result files (*.json) in {results_dir}: run `deconvbench run` first")
    sections: dict[tuple, Section] = {}
    for result in results:
        if result.get("psf_error"):  # PSF-model error runs: the leaderboard's robustness section
            continue
        try:
            ds = result["dataset"]
            key = (ds["card"], str(ds["version"]), None if "metacal" in result else ds["split"])
            display_name(result)
        except (KeyError, TypeError):
            raise ReportError(f"{result.get('_file')}: not a deconvbench result (no dataset/method block)") from None
        sections.setdefault(key, Section(*key)).results.append(result)
    for section in sections.values():
        section.results.sort(key=lambda r: (display_name(r), r["dataset"]["split"]))
    return [sections[key] for key in sorted(sections, key=lambda k: (k[2] is None, k[0], k[1], k[2] or ""))]


def metric_series(section: Section, metric: str, stat: str = "mean") -> dict[str, list[tuple[str, float]]]:
    """{method: [(SNR label, value)]} from ``metrics.by_snr`` of the section's results.

    Leakage splits (sheared PSFs) are left out; where two splits share an SNR label the
    first split (alphabetical) is used."""
    series: dict[str, dict[str, float]] = {}
    for result in section.results:
        if (result.get("metacal") or {}).get("leakage_variant"):
            continue
        points = series.setdefault(display_name(result), {})
        for label, block in (result.get("metrics") or {}).get("by_snr", {}).items():
            value = (block.get(metric) or {}).get(stat) if isinstance(block, dict) else None
            if value is not None and label not in points:
                points[label] = value
    return {name: sorted(points.items(), key=lambda p: snr_sort_key(p[0])) for name, points in series.items() if points}


def bias_series(section: Section, key: str) -> dict[str, list[tuple[str, float, float | None]]]:
    """{method: [(SNR label, value, error)]} of metacal ``m`` or ``c`` per SNR level
    (leakage splits left out: their PSFs are sheared)."""
    series: dict[str, dict[str, tuple]] = {}
    for result in section.results:
        block = result.get("metacal") or {}
        if block.get("leakage_variant"):
            continue
        points = series.setdefault(display_name(result), {})
        for label, stats in block.get("by_snr", {}).items():
            if stats.get(key) is not None and label not in points:
                points[label] = (stats[key], stats.get(f"{key}_err"))
    return {
        name: sorted(((lab, *v) for lab, v in points.items()), key=lambda p: snr_sort_key(p[0]))
        for name, points in series.items()
        if points
    }


def alpha_points(section: Section) -> dict[str, tuple[float, float | None]]:
    """{method: (α, σα)} from the leakage splits."""
    out = {}
    for result in section.results:
        block = result.get("metacal") or {}
        if block.get("alpha") is not None:
            out.setdefault(display_name(result), (block["alpha"], block.get("alpha_err")))
    return out


def speed_points(section: Section) -> list[dict]:
    """Error against throughput, one point per (method, split) with both numbers.

    Image sections: overall mean NMSE against deconvolution stamps/s. Metacal sections:
    |m| (with σm) against metacal galaxies/s, per split (leakage splits left out)."""
    points = []
    for result in section.results:
        thr = result.get("throughput") or {}
        if section.is_metacal:
            block = result.get("metacal") or {}
            overall = block.get("overall") or {}
            if block.get("leakage_variant") or overall.get("m") is None or not thr.get("metacal_gal_per_s"):
                continue
            points.append(
                {
                    "method": display_name(result),
                    "split": result["dataset"]["split"],
                    "speed": thr["metacal_gal_per_s"],
                    "error": abs(overall["m"]),
                    "error_err": overall.get("m_err"),
                }
            )
        else:
            nmse = ((result.get("metrics") or {}).get("overall") or {}).get("nmse", {}).get("mean")
            if nmse is None or not thr.get("deconv_gal_per_s"):
                continue
            points.append(
                {
                    "method": display_name(result),
                    "split": result["dataset"]["split"],
                    "speed": thr["deconv_gal_per_s"],
                    "error": nmse,
                    "error_err": None,
                }
            )
    return points


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another (higher speed and lower error, one
    of them strictly), in order of increasing speed."""
    front = []
    for i, (speed, error) in enumerate(points):
        dominated = any(
            s >= speed and e <= error and (s > speed or e < error) for j, (s, e) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def failure_rows(section: Section) -> list[dict]:
    """Per result: stamps, failed stamps by kind, moment failures, metacal exclusions."""
    rows = []
    for result in section.results:
        failures = result.get("failures") or {}
        overall = (result.get("metrics") or {}).get("overall") or {}
        mcal = (result.get("metacal") or {}).get("overall") or {}
        rows.append(
            {
                "method": display_name(result),
                "split": result["dataset"]["split"],
                "n": result["dataset"].get("n"),
                "failed": failures.get("stamps_failed"),
                "raised": failures.get("raised"),
                "wrong_shape": failures.get("wrong_shape"),
                "nonfinite": failures.get("nonfinite"),
                "moment_failures": (overall.get("e_err") or {}).get("failures"),
                "metacal_failed": mcal.get("n_failed_measurement"),
                "metacal_excluded": mcal.get("n_excluded"),
                "first_error": failures.get("first_error"),
            }
        )
    return rows
