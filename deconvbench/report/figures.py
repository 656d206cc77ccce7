"""The report's figures, drawn on matplotlib Figure objects with the Agg canvas.

No pyplot: nothing registers global figures, and style settings are passed to each
artist (or scoped with ``matplotlib.rc_context``), so importing or calling this module
changes no global matplotlib state. Every function returns PNG bytes.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..metacal.measure import C_REQUIREMENT, M_REQUIREMENT
from .collect import snr_sort_key

DPI = 90


def method_colours(names) -> dict[str, tuple]:
    """A fixed colour per method name (sorted), shared by every figure of the page."""
    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(sorted(set(names)))}


def to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _snr_axis(ax, labels: list[str]) -> dict[str, int]:
    position = {label: i for i, label in enumerate(labels)}
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel("SNR level (matched-filter SNR; 'noiseless' = no noise)")
    return position


def _labels(series: dict) -> list[str]:
    return sorted({p[0] for points in series.values() for p in points}, key=snr_sort_key)


def metrics_vs_snr(nmse: dict, e_err: dict, colours: dict) -> bytes:
    """Two panels: mean NMSE and mean |Δe| against SNR level, one line per method."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, series, ylabel, log in (
        (fig.add_subplot(1, 2, 1), nmse, "mean NMSE = Σ(est−truth)²/Σtruth²", True),
        (fig.add_subplot(1, 2, 2), e_err, "mean |Δe| (adaptive moments, est vs truth)", True),
    ):
        position = _snr_axis(ax, _labels(series))
        for name, points in series.items():
            ax.plot([position[p[0]] for p in points], [p[1] for p in points], "o-", color=colours[name], label=name)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return to_png(fig)


def _symlog_band(ax, requirement: float, linthresh: float) -> None:
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhspan(-requirement, requirement, color="tab:green", alpha=0.15, lw=0)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.grid(True, which="major", alpha=0.3)


def bias_vs_snr(m: dict, c: dict, alpha: dict, colours: dict, m_floor: float | None) -> bytes:
    """m ± σm and c ± σc against SNR level (shaded: the requirement |m| < 1e-3,
    |c| < 1e-4; symmetric-log axes) and the PSF leakage α ± σα per method."""
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    width = max(len(m), 1)
    for index, (series, key, requirement) in enumerate(((m, "m", M_REQUIREMENT), (c, "c", C_REQUIREMENT))):
        ax = fig.add_subplot(1, 3, index + 1)
        position = _snr_axis(ax, _labels(series))
        for k, (name, points) in enumerate(sorted(series.items())):
            shift = (k - (width - 1) / 2) * 0.08  # side by side, so error bars do not hide each other
            ax.errorbar(
                [position[p[0]] + shift for p in points],
                [p[1] for p in points],
                yerr=[p[2] or 0.0 for p in points],
                fmt="o",
                capsize=3,
                color=colours[name],
                label=name,
            )
        _symlog_band(ax, requirement, requirement / 10)
        if key == "m" and m_floor:
            ax.axhline(m_floor, color="grey", ls=":", lw=1, label=f"estimator floor {m_floor:.0e}")
        ax.set_ylabel(f"{key} ± σ{key} (band: |{key}| < {requirement:g})")
        ax.set_title(f"{'multiplicative' if key == 'm' else 'additive'} shear bias {key}", fontsize=10)
    fig.axes[0].legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    names = sorted(alpha)
    if names:
        ax.errorbar(
            range(len(names)),
            [alpha[n][0] for n in names],
            yerr=[alpha[n][1] or 0.0 for n in names],
            fmt="none",
            ecolor="k",
            capsize=3,
        )
        ax.scatter(range(len(names)), [alpha[n][0] for n in names], c=[colours[n] for n in names], zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yscale("symlog", linthresh=1e-6)  # no requirement band: the suite sets none for α
        ax.axhline(0.0, color="k", lw=0.6)
        ax.grid(True, which="major", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no leakage split in the results", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("PSF leakage α ± σα")
    ax.set_title("PSF leakage α = c1 / e_psf (leakage split)", fontsize=10)
    return to_png(fig)


def pareto(points: list[dict], fronts: list[list[int]], colours: dict, error_label: str, speed_label: str) -> bytes:
    """Error against throughput (both log scale); each Pareto front (one per split: errors
    of different splits are not comparable) as a dashed step line through circled points."""
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    splits = sorted({p["split"] for p in points})
    markers = dict(zip(splits, "osD^v<>ph", strict=False))
    for name in sorted({p["method"] for p in points}):
        for p in (q for q in points if q["method"] == name):
            label = name if len(splits) == 1 else f"{name} ({p['split']})"
            ax.errorbar(
                p["speed"],
                p["error"],
                yerr=p["error_err"] if p["error_err"] else None,
                fmt=markers[p["split"]],
                color=colours[name],
                ms=8,
                capsize=3,
                label=label,
            )
    for k, front in enumerate(f for f in fronts if f):
        xs, ys = [points[i]["speed"] for i in front], [points[i]["error"] for i in front]
        ax.step(
            xs,
            ys,
            where="post",
            color="k",
            lw=1,
            ls="--",
            label=("Pareto front" + (" (per split)" if len(splits) > 1 else "")) if k == 0 else None,
        )
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="k", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(speed_label)
    ax.set_ylabel(error_label)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return to_png(fig)


def gallery(stamps: list[dict], methods: list[str], colours: dict, residual_fraction: float) -> bytes:
    """Rows of (observed, PSF, truth, each method's estimate) with a row of residuals
    (estimate − truth) below. Observed, truth and estimates share one linear colour
    scale per stamp (truth's range); residuals one symmetric scale of ±``residual_fraction``
    × truth's peak; the PSF is shown on its own scale."""
    columns = 3 + len(methods)
    fig = Figure(figsize=(1.55 * columns, 3.3 * len(stamps)), layout="constrained")
    grid = fig.add_gridspec(2 * len(stamps), columns)
    scale = None
    for row, stamp in enumerate(stamps):
        truth = stamp["truth"]
        vmin, vmax = float(truth.min()), float(truth.max())
        panels = [
            ("observed", stamp["observed"], "viridis", vmin, vmax),
            ("PSF", stamp["psf"], "magma", 0.0, None),
            ("truth", truth, "viridis", vmin, vmax),
        ]
        panels += [(name, stamp["estimates"].get(name), "viridis", vmin, vmax) for name in methods]
        for col, (title, image, cmap, lo, hi) in enumerate(panels):
            ax = fig.add_subplot(grid[2 * row, col])
            _image(ax, image, cmap, lo, hi)
            ax.set_title(title, fontsize=8, color=colours.get(title, "k"))
            if col == 0:
                ax.set_ylabel(stamp["label"], fontsize=8)
            if col >= 3:
                res_ax = fig.add_subplot(grid[2 * row + 1, col])
                residual = None if image is None else (image - truth) / vmax
                scale = _image(res_ax, residual, "RdBu_r", -residual_fraction, residual_fraction) or scale
                res_ax.set_title(f"{title} − truth", fontsize=7)
        info = fig.add_subplot(grid[2 * row + 1, :3])
        info.axis("off")
        info.text(0.0, 0.5, stamp["caption"], fontsize=7, va="center", family="monospace", transform=info.transAxes)
    if scale is not None:
        fig.colorbar(scale, ax=fig.axes, shrink=0.3, label="(estimate − truth) / truth peak")
    return to_png(fig)


def _image(ax, image, cmap, vmin, vmax):
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
        return None
    return ax.imshow(np.asarray(image), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
