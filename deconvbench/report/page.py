"""``deconvbench report``: one self-contained HTML page from the result files.

Per section (dataset): mean NMSE and |Δe| against SNR per method; for metacal cards m ± σm
and c ± σc against SNR with the requirement band and the PSF leakage α; error against
throughput with the Pareto front; a gallery of fixed stamps (observed, PSF, truth, each
method's estimate and residual); the failure counts. Figures are PNG, embedded in the
page as data URIs and also written beside it (``figures/``). The page has no clock and
no external resources; given the same results (and the same installed methods for the
gallery) it is the same bytes.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..metacal.measure import C_REQUIREMENT, M_REQUIREMENT
from . import figures
from .collect import (
    Section,
    alpha_points,
    bias_series,
    display_name,
    failure_rows,
    load_sections,
    metric_series,
    pareto_front,
    speed_points,
)

RESIDUAL_FRACTION = 0.25

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef; } td:first-child { text-align: left; font-weight: 600; }
td.text { text-align: left; font-weight: normal; max-width: 40em; overflow-wrap: anywhere; }
section { border-top: 3px solid #99c; margin-top: 2.5em; }
p.note, ul.note { color: #444; max-width: 70em; }
nav a { margin-right: 1em; }
"""


@dataclass
class Report:
    path: Path
    figures: list[Path] = field(default_factory=list)
    sections: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _figure_html(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list], text_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=text' if i in text_columns else ''}>{html.escape('–' if v is None else str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def build_report(
    results_dir: str | Path,
    out_dir: str | Path,
    gallery: bool = True,
    gallery_count: int = 3,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Write ``out_dir/report.html`` (and ``out_dir/figures/*.png``); return what was made.

    Raises :class:`deconvbench.report.collect.ReportError` for a missing or empty results
    directory."""
    sections = load_sections(results_dir)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    report = Report(out_dir / "report.html", sections=len(sections))
    colours = figures.method_colours(display_name(r) for s in sections for r in s.results)
    pngs: list[tuple[str, bytes]] = []
    instances: dict = {}  # methods loaded once for every gallery

    def figure(name: str, png: bytes, alt: str) -> str:
        pngs.append((name, png))
        return _figure_html(png, alt)

    n_files = sum(len(s.results) for s in sections)
    body = [
        "<h1>deconvbench report</h1>",
        f'<p class="note">Made by <code>deconvbench report</code> from {n_files} result file(s) in '
        f"<code>{html.escape(Path(results_dir).name)}/</code>. NMSE = Σ(est−truth)²/Σtruth² per stamp; |Δe| = "
        "ellipticity error of GalSim adaptive moments of the estimate against the truth; SNR = "
        "sqrt(Σ noiseless²)/noise_sigma. Shear bias: m, c from ±g pairs sharing noise (bootstrap σ), requirement "
        f"|m| &lt; {M_REQUIREMENT:g}, |c| &lt; {C_REQUIREMENT:g} (green band, symmetric-log axes). "
        "Means over stamps; failed stamps are counted, never averaged.</p>",
        "<nav>" + "".join(f'<a href="#{html.escape(s.slug)}">{html.escape(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        if log:
            log(f"section {section.title}")
        body.append(f'<section id="{html.escape(section.slug)}"><h2>{html.escape(section.title)}</h2>')
        body.append(
            _table(
                ["method", "split", "result file", "command"],
                [[display_name(r), r["dataset"]["split"], r.get("_file"), r.get("command")] for r in section.results],
                text_columns=(2, 3),
            )
        )
        nmse, e_err = metric_series(section, "nmse"), metric_series(section, "e_err")
        if nmse:
            body.append("<h3>Image and shape errors against SNR</h3>")
            body.append(
                figure(
                    f"{section.slug}_metrics.png",
                    figures.metrics_vs_snr(nmse, e_err, colours),
                    f"mean NMSE and |Δe| against SNR, {section.title}",
                )
            )
        if section.is_metacal:
            m, c, alpha = bias_series(section, "m"), bias_series(section, "c"), alpha_points(section)
            floor = next((r["metacal"].get("m_floor_estimator") for r in section.results), None)
            body.append("<h3>Shear bias against SNR and PSF leakage</h3>")
            body.append(
                figure(
                    f"{section.slug}_bias.png",
                    figures.bias_vs_snr(m, c, alpha, colours, floor),
                    f"m and c against SNR and alpha, {section.title}",
                )
            )
        points = speed_points(section)
        if points:
            fronts = []
            for split in sorted({p["split"] for p in points}):  # errors of different splits are not comparable
                members = [i for i, p in enumerate(points) if p["split"] == split]
                fronts.append(
                    [members[j] for j in pareto_front([(points[i]["speed"], points[i]["error"]) for i in members])]
                )
            error_label = "|m| (± σm)" if section.is_metacal else "mean NMSE"
            speed_label = (
                "metacal galaxies/s (deconvolution + 5 metacal images + estimator)"
                if section.is_metacal
                else "deconvolution stamps/s"
            )
            body.append("<h3>Error against throughput</h3>")
            body.append(
                figure(
                    f"{section.slug}_pareto.png",
                    figures.pareto(points, fronts, colours, error_label, speed_label),
                    f"error against throughput, {section.title}",
                )
            )
            body.append(
                '<p class="note">Pareto front (dashed, circled; one per split): no other run on the same '
                "split is both faster and more accurate. Throughput depends on the machine; see each result's "
                "hardware in the leaderboard.</p>"
            )
        if gallery and not section.is_metacal:
            body.append(_gallery_html(section, gallery_count, colours, figure, report, instances))
        body.append("<h3>Failures</h3>")
        rows = [
            [
                r["method"],
                r["split"],
                r["n"],
                r["failed"],
                r["raised"],
                r["wrong_shape"],
                r["nonfinite"],
                r["moment_failures"],
                r["metacal_failed"],
                r["metacal_excluded"],
                r["first_error"],
            ]
            for r in failure_rows(section)
        ]
        body.append(
            _table(
                [
                    "method",
                    "split",
                    "stamps",
                    "failed",
                    "raised",
                    "wrong shape",
                    "non-finite",
                    "moment failures (|Δe|)",
                    "metacal failed",
                    "metacal excluded",
                    "first error",
                ],
                rows,
                text_columns=(10,),
            )
        )
        body.append("</section>")
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>deconvbench report</title>",
            f"<style>{STYLE}</style></head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )
    for name, png in pngs:
        target = out_dir / "figures" / name
        atomic_write(target, lambda handle, data=png: handle.write(data))
        report.figures.append(target)
    atomic_write(report.path, lambda handle: handle.write(page.encode("utf-8")))
    return report


def _gallery_html(section: Section, count: int, colours: dict, figure, report: Report, instances: dict) -> str:
    from .gallery import gallery_stamps  # rendering and methods: imported only when a gallery is drawn

    methods = sorted({r["method"]["name"] for r in section.results})
    parts = ["<h3>Gallery</h3>"]
    try:
        stamps, notes = gallery_stamps(
            section.card, section.version, section.split, methods, count=count, instances=instances
        )
    except Exception as exc:  # the gallery is an illustration: a problem is reported, the page still made
        message = f"no gallery for {section.title}: {exc}"
        report.notes.append(message)
        return "\n".join(parts + [f'<p class="note">{html.escape(message)}</p>'])
    shown = [name for name in methods if name not in notes]
    parts.append(
        figure(
            f"{section.slug}_gallery.png",
            figures.gallery(stamps, shown, colours, RESIDUAL_FRACTION),
            f"gallery of {len(stamps)} stamps, {section.title}",
        )
    )
    parts.append(
        f'<p class="note">The first stamps of {html.escape(section.card)}/{html.escape(section.split)} '
        "at different SNR levels, regenerated from the card (identical to the published split's first "
        "stamps) and deconvolved by each method with its default options, now. Observed, truth and "
        "estimates share one linear colour scale per stamp (the truth's range); residuals "
        f"(estimate − truth) in units of the truth's peak, scale ±{RESIDUAL_FRACTION:g}; the PSF is on its own scale. "
        "Origin lower left; pixel (n//2, n//2) is the centre.</p>"
    )
    if notes:
        report.notes += [f"{name}: {note}" for name, note in notes.items()]
        parts.append(
            '<ul class="note">'
            + "".join(
                f"<li>{html.escape(name)} not shown: {html.escape(note)}</li>" for name, note in sorted(notes.items())
            )
            + "</ul>"
        )
    return "\n".join(parts)
