"""Plain-text tables of result dicts and generation reports (what the CLI prints).

Pure functions from result dicts (the result JSON, see :mod:`deconvbench.results_schema`)
to strings; numbers keep the units of the result file (NMSE dimensionless, flux error
relative, size error relative, throughput in stamps/s).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tabulate import tabulate

from .metacal.measure import format_flag_counts


def _fmt(block: dict, metric: str, stat: str, spec: str = ".3e") -> str:
    value = block.get(metric, {}).get(stat) if isinstance(block.get(metric), dict) else None
    return "-" if value is None else format(value, spec)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if _finite(value) else "-"


def _pm(value: Any, err: Any) -> str:
    if not _finite(value):
        return "-"
    return f"{value:+.2e} ± {err:.1e}" if _finite(err) else f"{value:+.2e}"


def excluded_reasons(block: dict) -> str:
    """One line naming why stamps were excluded from m (``flag_counts`` of a metacal block),
    or "" where none was."""
    counts = block.get("flag_counts") or {}
    if not counts:
        return ""
    return "excluded stamps by reason: " + format_flag_counts(counts)


def _snr_order(label: str) -> tuple:
    return (label == "noiseless", float(label) if label != "noiseless" else 0.0)


def comparison_table(results: list[dict]) -> str:
    """One row per (method, SNR level): means/medians of the image and shape metrics,
    then one row per method with throughput (stamps that produced output, per second),
    peak memory and the number of failed stamps."""
    rows = []
    for result in results:
        name = result["method"]["name"]
        metrics = result["metrics"]
        groups = metrics.get("by_snr", {})
        for label in sorted(groups, key=_snr_order) + ["overall"]:
            block = groups[label] if label != "overall" else metrics.get("overall", {})
            if not block:
                continue
            rows.append(
                [
                    name,
                    label,
                    block.get("count"),
                    _fmt(block, "nmse", "mean"),
                    _fmt(block, "nmse", "median"),
                    _fmt(block, "psnr", "median", ".1f"),
                    _fmt(block, "ssim", "median", ".3f"),
                    _fmt(block, "e_err", "mean", ".4f"),
                    _fmt(block, "size_err", "median", "+.3f"),
                    _fmt(block, "flux_err", "median", "+.4f"),
                    block.get("failures", 0),
                ]
            )
        fail = result["failures"]["stamps_failed"]
        speed = result["throughput"]["deconv_gal_per_s"]
        rows.append(
            [
                name,
                "stamps/s",
                f"{speed:,.0f}" if speed else "-",
                "",
                "",
                "",
                "",
                "",
                "",
                f"peak {result['peak_memory_mb']:.0f} MB",
                f"{fail} failed" if fail else "",
            ]
        )
    headers = [
        "method",
        "SNR",
        "N",
        "NMSE mean",
        "NMSE med",
        "PSNR med",
        "SSIM med",
        "|Δe| mean",
        "size err med",
        "flux err med",
        "failures",
    ]
    return tabulate(rows, headers=headers, disable_numparse=True)


def metacal_table(results: list[dict]) -> str:
    """One row per (method, split, SNR level): m ± σm, c ± σc, α, ⟨R11⟩, pairs, speed."""
    rows = []
    floor = None
    for result in results:
        block = result.get("metacal")
        if not block:
            continue
        speed = result["throughput"].get("metacal_gal_per_s")
        labels = list(block["by_snr"]) if len(block["by_snr"]) > 1 else []
        for label in labels + ["overall"]:
            stats = block["overall"] if label == "overall" else block["by_snr"][label]
            rows.append(
                [
                    result["method"]["name"],
                    result["dataset"]["split"],
                    label if labels else next(iter(block["by_snr"])),
                    _pm(stats.get("m"), stats.get("m_err")),
                    _pm(stats.get("c"), stats.get("c_err")),
                    _pm(stats.get("c1"), stats.get("c1_err")),
                    _pm(stats.get("alpha"), stats.get("alpha_err")),
                    _num(stats.get("R11"), ".4f"),
                    stats.get("n_pairs"),
                    stats.get("n_excluded"),
                    stats.get("requirement", "–"),
                    f"{speed:,.1f}" if speed and label == "overall" else "",
                ]
            )
        floor = block.get("m_floor_estimator")
    headers = [
        "method",
        "split",
        "SNR",
        "m ± σm",
        "c ± σc",
        "c1 ± σ",
        "α ± σα",
        "<R11>",
        "pairs",
        "excluded",
        "|m|<1e-3 & |c|<1e-4",
        "metacal gal/s",
    ]
    text = tabulate(rows, headers=headers, disable_numparse=True)
    if rows:
        estimator = next(r["metacal"]["estimator"] for r in results if r.get("metacal"))
        text += (
            f"\nestimator {estimator}; requirement |m| < 1e-3, |c| < 1e-4; "
            f"estimator non-linearity floor m ≈ 0.9·g² = {floor:.1e} (not a metacal error)"
        )
    for result in results:
        reasons = excluded_reasons(result.get("metacal") or {})
        if reasons:
            text += f"\n{result['method']['name']} {result['dataset']['split']}: {reasons}"
    return text


def generation_table(report, params: np.ndarray) -> str:
    """Summary of a generated split: file, counts per SNR level and PSF family, size, speed."""
    from .metrics.aggregate import snr_labels

    levels = sorted(set(params["snr_level"].tolist()))
    families = sorted(set(p.decode() for p in params["psf_family"]))
    profiles = sorted(set(p.decode() for p in params["gal_profile"]))
    mb = report.file_bytes / 1e6
    table = [
        ["file", str(report.path)],
        ["card", f"{report.card} v{report.version} / {report.split}"],
        ["stamps", report.n],
        [
            "SNR levels",
            ", ".join(
                f"{label} ({int(np.sum(params['snr_level'] == s))})"
                for s, label in zip(levels, snr_labels(levels), strict=True)
            ),
        ],
        ["PSF families", ", ".join(f"{f} ({int(np.sum(params['psf_family'] == f.encode()))})" for f in families)],
        ["galaxy profiles", ", ".join(profiles)],
        ["file size", f"{mb:.2f} MB ({mb / report.n * 1000:.1f} MB per 1000 stamps)"],
        ["time", f"{report.seconds:.1f} s ({report.stamps_per_second:.1f} stamps/s, {report.workers} worker(s))"],
        ["checksum", report.checksum],
    ]
    return tabulate(table, tablefmt="simple")


def methods_table(infos, options: dict[str, dict] | None = None) -> str:
    """``list-methods``: name, availability, description (and constructor options)."""
    rows = []
    for info in infos:
        row = [info.name, "yes" if info.available else f"no: {info.reason}", info.description]
        if options is not None:
            row.append(", ".join(f"{k}={v!r}" for k, v in options.get(info.name, {}).items()) or "-")
        rows.append(row)
    headers = ["method", "available", "description"] + (["options (defaults)"] if options is not None else [])
    return tabulate(rows, headers=headers)


def datasets_table(cards) -> str:
    """``list-datasets``: one row per card with its splits (stamp size in pixels, pixel scale in arcsec)."""
    rows = []
    for card in cards:
        splits = ", ".join(f"{k}={v.n}" for k, v in card.splits.items())
        rows.append(
            [
                card.name,
                card.version,
                card.kind,
                f"{card.stamp.size}",
                f"{card.stamp.pixel_scale_arcsec}",
                ", ".join(card.psf.families),
                splits,
            ]
        )
    return tabulate(rows, headers=["card", "version", "kind", "stamp", "pixel [arcsec]", "PSF families", "splits"])


def bias_table(result: dict) -> str:
    """The per-SNR table of a streaming bias result (``deconvbench bias``)."""
    block = result["metacal"]
    rows = [
        [
            label,
            s["n"],
            f"{_num(s['m'], '+.3e')} ± {_num(s['m_err'], '.1e')}",
            f"{_num(s['c'], '+.2e')} ± {_num(s['c_err'], '.1e')}",
            _num(block["truth_floor"]["by_snr"][label]["m"], "+.3e"),
            _num(s["R11"], ".4f"),
        ]
        for label, s in block["by_snr"].items()
    ]
    text = tabulate(rows, headers=["SNR", "N", "m ± σm", "c ± σc", "m floor (truth)", "<R11>"], disable_numparse=True)
    reasons = excluded_reasons(block)
    return text + ("\n" + reasons if reasons else "")


def render_validation_table(rows) -> str:
    """The table of ``deconvbench validate-render`` (rows of :func:`deconvbench.sim.validate.validate_render`)."""
    body = [
        [
            r.by,
            r.name,
            r.image,
            r.n,
            f"{r.max_rel:.2e}",
            f"{r.rms_rel:.2e}",
            f"{r.flux_ratio_min - 1:+.2e}",
            f"{r.flux_ratio_max - 1:+.2e}",
        ]
        for r in rows
    ]
    headers = [
        "by",
        "name",
        "image",
        "stamps",
        "max |Δ|/peak",
        "rms over stamps",
        "min flux ratio − 1",
        "max flux ratio − 1",
    ]
    return tabulate(body, headers=headers, tablefmt="simple")
