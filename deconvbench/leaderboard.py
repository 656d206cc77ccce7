"""Results → validated submissions → ``leaderboard.md``.

``results/`` holds one result JSON per (method, dataset, split): the leaderboard's source
of truth. :func:`validate_result` checks a result before it may enter (schema, known card
and version, dataset checksum equal to the card's published checksum, finite values in
range, method name and version, no markup in free-text fields); :func:`render_leaderboard`
turns the directory into markdown deterministically (sorted input, no clock).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .atomic import atomic_write
from .cards import expected_checksum, load_card
from .errors import CardError, DeconvbenchError
from .family import OUT_OF_FAMILY
from .metacal.measure import C_REQUIREMENT, M_REQUIREMENT, format_flag_counts, requirement_verdict
from .psf_error import PSFError
from .results_schema import SCHEMA_VERSION, validation_problem

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MARKUP_RE = re.compile(r"[<>|`\[\]\n\r\\*]|https?:|javascript:", re.IGNORECASE)


class SubmissionError(DeconvbenchError, ValueError):
    """A result file that may not enter results/."""


def default_results_dir() -> Path:
    """``results/`` at the top of the source checkout."""
    return Path(__file__).resolve().parent.parent / "results"


def default_leaderboard_path() -> Path:
    """``leaderboard.md`` at the top of the source checkout."""
    return Path(__file__).resolve().parent.parent / "leaderboard.md"


def stamps_failed(data: dict) -> int:
    """Stamps of a result that produced no usable estimate (raised, wrong shape, non-finite)."""
    value = (data.get("failures") or {}).get("stamps_failed", 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _require(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SubmissionError(f"missing field '{dotted}'")
        node = node[part]
    return node


def _walk(node: Any, keep, path: str = ""):
    """(dotted path, leaf) for every leaf of a JSON tree for which ``keep(leaf)`` is true."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, keep, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, keep, f"{path}[{i}]")
    elif keep(node):
        yield path, node


def _walk_strings(node: Any):
    return _walk(node, lambda leaf: isinstance(leaf, str))


def _walk_numbers(node: Any):
    return _walk(node, lambda leaf: isinstance(leaf, (int, float)) and not isinstance(leaf, bool))


# free-text fields that end up in the leaderboard (or could be shown there)
DISPLAYED_TEXT = (
    "method.name",
    "method.version",
    "method.device",
    "hardware.cpu",
    "hardware.device",
    "hardware.machine",
    "versions",
    "timestamp",
    "dataset.card",
    "dataset.split",
    "git_commit",
    "evaluation",
)


def validate_result(data: Any, allow_failures: bool = False) -> None:
    """Raise :class:`SubmissionError` naming the first problem; return None if valid.

    A result in which every stamp failed is always rejected; one with some failed stamps
    only with ``allow_failures`` (the leaderboard then shows the count)."""
    if not isinstance(data, dict):
        raise SubmissionError("a result must be a JSON object")
    if _require(data, "schema_version") != SCHEMA_VERSION:
        raise SubmissionError(f"schema_version must be {SCHEMA_VERSION}")
    metacal = data.get("metacal")
    overall = metacal.get("overall") if isinstance(metacal, dict) else None
    if isinstance(overall, dict) and overall.get("m") is None and overall.get("n_pairs") == 0:
        reasons = format_flag_counts(metacal.get("flag_counts") or {})
        raise SubmissionError(
            "metacal.overall has no measurement: no valid ±g pair" + (f" (excluded: {reasons})" if reasons else "")
        )
    problem = validation_problem(data)  # the typed schema (deconvbench/result.schema.json)
    if problem:
        raise SubmissionError(problem)
    failed, total = stamps_failed(data), _require(data, "dataset.n")
    first = (data.get("failures") or {}).get("first_error")
    if isinstance(total, int) and failed >= total > 0:
        raise SubmissionError(f"every stamp failed ({failed} of {total}; first error: {first})")
    if failed and not allow_failures:
        raise SubmissionError(
            f"{failed} of {total} stamps failed (first error: {first}); fix the method, or "
            "submit with --allow-failures to show the result with its failure count"
        )
    if data.get("dataset", {}).get("checksum_verified") is False:
        raise SubmissionError("the data file's content did not match its recorded checksum during the run")
    name = _require(data, "method.name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SubmissionError(f"method.name {name!r} must match {NAME_RE.pattern}")
    version = _require(data, "method.version")
    if not isinstance(version, str) or not version:
        raise SubmissionError("method.version must be a non-empty string")
    for path, text in _walk_strings(data):
        shown = any(path == f or path.startswith(f + ".") for f in DISPLAYED_TEXT)
        if shown and MARKUP_RE.search(text):
            raise SubmissionError(f"field '{path}' contains markup or links: {text[:40]!r}")
        if len(text) > 2000:
            raise SubmissionError(f"field '{path}' is too long")
    card_name = _require(data, "dataset.card")
    try:
        card = load_card(card_name) if isinstance(card_name, str) and NAME_RE.match(card_name) else None
    except CardError:
        card = None
    if card is None:
        raise SubmissionError(f"unknown dataset card {card_name!r}")
    if _require(data, "dataset.version") != card.version:
        raise SubmissionError(
            f"dataset.version {data['dataset']['version']!r} is not the card's version {card.version!r}"
        )
    split = _require(data, "dataset.split")
    if split not in card.splits:
        raise SubmissionError(f"card {card.name} has no split {split!r}")
    n = _require(data, "dataset.n")
    streaming = (data.get("metacal") or {}).get("mode") == "streaming-bias"  # deconvbench.bias: stream digest
    expected = expected_checksum(card, f"{split}:stream" if streaming else split, n)
    if expected is None:
        raise SubmissionError(f"no published checksum for {card.name}/{split} with n={n} (see datasets/checksums.json)")
    if _require(data, "dataset.checksum") != expected:
        raise SubmissionError(f"dataset.checksum does not match the published checksum of {card.name}/{split} (n={n})")
    for path, value in _walk_numbers(data):
        if isinstance(value, float) and not math.isfinite(value):
            raise SubmissionError(f"field '{path}' is not finite")
    overall = _require(data, "metrics.overall")
    for metric, low, high in (("nmse", 0.0, 1e6), ("ssim", -1.0, 1.0), ("psnr", -100.0, 400.0)):
        for stat in ("mean", "median"):
            value = overall.get(metric, {}).get(stat)
            if value is not None and not low <= value <= high:
                raise SubmissionError(f"metrics.overall.{metric}.{stat} = {value} is out of range [{low}, {high}]")
    speed = _require(data, "throughput.deconv_gal_per_s")
    if speed is not None and not (isinstance(speed, (int, float)) and speed > 0):
        raise SubmissionError("throughput.deconv_gal_per_s must be > 0")
    if not (isinstance(data.get("peak_memory_mb"), (int, float)) and data["peak_memory_mb"] > 0):
        raise SubmissionError("peak_memory_mb must be > 0")
    if "metacal" in data:
        block = _require(data, "metacal.overall")
        for key in ("m", "m_err", "c", "c_err"):
            value = block.get(key)
            if not isinstance(value, (int, float)) or abs(value) > 10:
                raise SubmissionError(f"metacal.overall.{key} missing or out of range")


def _variant(data: dict) -> str:
    """Suffix distinguishing runs of one method on one split (metacal options)."""
    block = data.get("metacal") or {}
    parts = ["bias"] if block.get("mode") == "streaming-bias" else []
    if block.get("estimator", "wmom") != "wmom":
        parts.append(str(block["estimator"]))
    if block.get("fixnoise"):
        parts.append("fixnoise")
    if block.get("centring", "newton") != "newton":
        parts.append(str(block["centring"]))
    if data.get("psf_error"):  # a model PSF with an error: kept apart from the exact-PSF rows
        parts.append(PSFError(**{k: float(data["psf_error"][k]) for k in ("size", "e1", "e2")}).tag())
    if (data.get("evaluation") or {}).get("family") == OUT_OF_FAMILY:
        parts.append(OUT_OF_FAMILY)
    return "".join(f"_{p}" for p in parts)


def canonical_name(data: dict) -> str:
    ds = data["dataset"]
    prefix = ""
    try:
        if ds["n"] != load_card(ds["card"]).split(ds["split"]).n:
            prefix = f"_n{ds['n']}"
    except DeconvbenchError:
        pass
    return f"{ds['card']}-v{ds['version']}_{ds['split']}{prefix}_{data['method']['name']}{_variant(data)}.json"


def submit(path: str | Path, results_dir: str | Path, replace: bool = False, allow_failures: bool = False) -> Path:
    """Validate ``path`` and copy it into ``results_dir`` under its canonical name."""
    path, results_dir = Path(path), Path(results_dir)
    try:
        data = json.loads(Path(path).read_text(), parse_constant=lambda c: float(c))
    except (FileNotFoundError, IsADirectoryError):
        raise SubmissionError(f"no such file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path} is not valid JSON: {exc}") from None
    validate_result(data, allow_failures=allow_failures)
    target = results_dir / canonical_name(data)
    if target.exists() and not replace:
        raise SubmissionError(f"{target} exists (use --replace to supersede it)")
    content = path.read_bytes()
    atomic_write(target, lambda handle: handle.write(content))
    return target


def load_results(results_dir: str | Path) -> list[dict]:
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        data["_file"] = path.name
        results.append(data)
    return results


def _num(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _pm(value: Any, err: Any, spec: str) -> str:
    if value is None:
        return "–"
    return f"{format(value, spec)} ± {format(err, spec)}" if err is not None else format(value, spec)


def quality_q(m: float | None, c: float | None) -> float | None:
    """GREAT3-style quality score Q = 2000 / sqrt(1 + (m/1e-3)² + (c/1e-4)²).

    Like GREAT3's Q it rewards small multiplicative and additive biases, measured in units
    of the requirement; unlike GREAT3 it has no per-branch normalisation: Q = 2000 for an
    unbiased method, ≈ 1155 with both |m| and |c| at the requirement."""
    if m is None or c is None:
        return None
    return 2000.0 / math.sqrt(1.0 + (m / M_REQUIREMENT) ** 2 + (c / C_REQUIREMENT) ** 2)


def leaderboard_sections(results_dir: str | Path) -> list[dict]:
    """The leaderboard's content, one section per (card, version, split, stamps n), sorted.

    Each section: ``card``, ``version``, ``split``, ``n``, ``has_metacal`` and ``rows``
    (dicts of raw values, ranked: by Q where metacal results exist, else by mean NMSE).
    ``leaderboard.md`` and ``leaderboard.html`` are both rendered from this."""
    by_dataset: dict[tuple, list[dict]] = {}
    for result in load_results(results_dir):
        if result.get("psf_error"):  # runs with a PSF-model error: the robustness section only
            continue
        ds = result["dataset"]
        # results on a prefix of a split (dataset.n) are ranked only against the same stamps
        by_dataset.setdefault((ds["card"], ds["version"], ds["split"], ds["n"]), []).append(result)
    sections = []
    for (card, version, split, _), rows in sorted(by_dataset.items()):
        table = []
        for r in rows:
            overall = r.get("metrics", {}).get("overall", {})
            mc = r.get("metacal", {}).get("overall", {})
            alpha = r.get("metacal", {}).get("alpha")
            thr = r.get("throughput", {})
            table.append(
                {
                    "method": r["method"]["name"] + _variant(r).replace("_", " "),
                    "NMSE": overall.get("nmse", {}).get("mean"),
                    "SSIM": overall.get("ssim", {}).get("mean"),
                    "|Δe|": overall.get("e_err", {}).get("mean"),
                    "m": mc.get("m"),
                    "m_err": mc.get("m_err"),
                    "c": mc.get("c"),
                    "c_err": mc.get("c_err"),
                    "alpha": alpha,
                    "alpha_err": r.get("metacal", {}).get("alpha_err"),
                    "req": requirement_verdict(mc) if mc else "–",
                    "Q": quality_q(mc.get("m"), mc.get("c")) if mc else None,
                    "mcal/s": thr.get("metacal_gal_per_s"),
                    "deconv/s": thr.get("deconv_gal_per_s"),
                    "mem": r.get("peak_memory_mb"),
                    "failures": stamps_failed(r),
                    "hardware": f"{r['hardware'].get('cores')}× {r['hardware'].get('cpu', '')}"[:40]
                    + f" ({r['hardware'].get('device')})",
                    "version": r["method"].get("version"),
                    "date": (r.get("timestamp") or "")[:10],
                    "file": r["_file"],
                }
            )
        has_metacal = any(row["m"] is not None for row in table)
        if has_metacal:
            table.sort(key=lambda row: (row["Q"] is None, -(row["Q"] or 0), row["method"]))
        else:
            table.sort(key=lambda row: (row["NMSE"] is None, row["NMSE"] or 0, row["method"]))
        sections.append(
            {
                "card": card,
                "version": version,
                "split": split,
                "n": rows[0]["dataset"]["n"],
                "has_metacal": has_metacal,
                "rows": table,
            }
        )
    return sections


def leaderboard_columns(has_metacal: bool) -> list[str]:
    """Column headers of a section (plain text; markdown escapes its pipes)."""
    headers = ["method", "NMSE", "SSIM", "|Δe|"]
    if has_metacal:
        headers += ["m ± σm", "c ± σc", "α", "req", "Q", "metacal gal/s"]
    return headers + ["deconv stamps/s", "failures", "peak MB", "hardware", "version", "date", "result file"]


def leaderboard_cells(row: dict, has_metacal: bool) -> list[str]:
    """The formatted cells of one row, in the order of :func:`leaderboard_columns`."""
    entry = [row["method"], _num(row["NMSE"], ".3e"), _num(row["SSIM"], ".3f"), _num(row["|Δe|"], ".4f")]
    if has_metacal:
        entry += [
            _pm(row["m"], row["m_err"], ".1e"),
            _pm(row["c"], row["c_err"], ".1e"),
            _pm(row["alpha"], row["alpha_err"], ".1e"),
            row["req"],
            _num(row["Q"], ".0f"),
            _num(row["mcal/s"], ",.0f"),
        ]
    return entry + [
        _num(row["deconv/s"], ",.0f"),
        str(row["failures"]),
        _num(row["mem"], ",.0f"),
        row["hardware"],
        row["version"],
        row["date"],
        row["file"],
    ]


LEADERBOARD_NOTE = (
    f"Requirement marked in **req**: |m| < {M_REQUIREMENT:g} and |c| < {C_REQUIREMENT:g} for both c1 and c2 "
    "(central values; "
    '"no" also where a bias exceeds it by more than 3σ; "σ too large" where σm or σc exceeds the '
    "requirement otherwise, so the test cannot tell). "
    "Q = 2000 / sqrt(1 + (m/1e-3)² + (c/1e-4)²), c the component-2 bias shown. "
    "NMSE, SSIM: means over stamps; |Δe|: mean adaptive-moment "
    "ellipticity error. failures: stamps for which the method raised, returned the wrong shape or non-finite "
    "values (excluded from every average)."
)


def render_leaderboard(results_dir: str | Path) -> str:
    sections = leaderboard_sections(results_dir)
    lines = [
        "# deconvbench leaderboard",
        "",
        "Generated by `deconvbench leaderboard` from the result files in `results/`; do not edit by hand.",
        "Every row names its result file: rerun the `command` stored in it to reproduce the row.",
        LEADERBOARD_NOTE,
        "",
    ]
    for section in sections:
        lines += [f"## {section['card']} v{section['version']} — {section['split']} (n = {section['n']})", ""]
        out = []
        for row in section["rows"]:
            cells = leaderboard_cells(row, section["has_metacal"])
            out.append(cells[:-1] + [f"`{cells[-1]}`"])
        headers = [h.replace("|", "\\|") for h in leaderboard_columns(section["has_metacal"])]
        lines += [tabulate(out, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if not sections:
        lines += ["No results yet.", ""]
    lines += robustness_markdown(load_results(results_dir))
    return "\n".join(lines)


def robustness_markdown(results: list[dict]) -> list[str]:
    """The robustness section (:mod:`deconvbench.robustness`) as markdown lines; none
    without PSF-error or trained-method results."""
    from .robustness import (
        FAMILY_COLUMNS,
        FAMILY_NOTE,
        SENSITIVITY_COLUMNS,
        SENSITIVITY_NOTE,
        family_rows,
        sensitivity_rows,
    )

    sensitivity, family = sensitivity_rows(results), family_rows(results)
    if not sensitivity and not family:
        return []
    lines = ["## Robustness: PSF-model errors and unseen PSFs", ""]
    for title, note, headers, rows in (
        ("PSF-model sensitivities", SENSITIVITY_NOTE, SENSITIVITY_COLUMNS, sensitivity),
        ("In-family and out-of-family", FAMILY_NOTE, FAMILY_COLUMNS, family),
    ):
        if rows:
            body = [row[:-1] + [f"`{row[-1]}`"] if headers[-1] == "result file" else row for row in rows]
            lines += [
                f"### {title}",
                "",
                note,
                "",
                tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
                "",
            ]
    return lines
