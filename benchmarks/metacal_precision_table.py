"""The precision table of the metacal shear bias: m with and without fixnoise at SNR 20, 50
and 100, from ``deconvbench bias`` result files, with wall time and peak memory.

    python -m benchmarks.metacal_precision_table commands [N] [METHOD] [OUTDIR]
    python -m benchmarks.metacal_precision_table table RESULT.json ...

``commands`` prints the six ``deconvbench bias`` commands (card metacal-offsets, splits
snr20/snr50/snr100, with and without ``--fixnoise``; default N = 1000000 stamps, method
fft, results under ``results/precision/``); run them when the machine is free (each
checkpoints and resumes). ``table`` reads result files written by ``deconvbench bias`` and
prints one row per file: method, split, fixnoise, N, m ± σm, c ± σc, the run's truth floor
m, wall time of the stream (``throughput.stream_seconds``) and peak memory (the larger of
the collecting process's ``peak_memory_mb`` and the workers' ``worker_peak_memory_mb``,
which runs record since it exists), sorted by method, SNR and fixnoise. (Not an asv benchmark: asv only
imports this module.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPLITS = ("snr20", "snr50", "snr100")
CARD = "metacal-offsets"


def commands(n: int = 1_000_000, method: str = "fft", outdir: str = "results/precision") -> list[str]:
    """The ``deconvbench bias`` command lines of the table."""
    lines = []
    for split in SPLITS:
        for fixnoise in (False, True):
            tag = "_fixnoise" if fixnoise else ""
            lines.append(
                f"deconvbench bias --method {method} --card {CARD} --split {split} --n {n}"
                f"{' --fixnoise' if fixnoise else ''} --out {outdir}/{method}_{CARD}_{split}_{n}{tag}.json"
            )
    return lines


def row(result: dict) -> dict:
    """The table's columns from one ``deconvbench bias`` result."""
    block = result["metacal"]
    throughput = result.get("throughput", {})
    return {
        "method": result["method"]["name"],
        "split": result["dataset"]["split"],
        "fixnoise": bool(block.get("fixnoise")),
        "n": result["dataset"]["n"],
        "m": block["m"],
        "m_err": block["m_err"],
        "c": block["c"],
        "c_err": block["c_err"],
        "m_floor_truth": block.get("m_floor_truth"),
        "seconds": throughput.get("stream_seconds"),
        "peak_memory_mb": max(
            (v for v in (result.get("peak_memory_mb"), result.get("worker_peak_memory_mb")) if v is not None),
            default=None,
        ),
    }


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(paths: list[str]) -> str:
    """The markdown table of the result files ``paths``."""
    rows = [row(json.loads(Path(p).read_text())) for p in paths]
    order = {split: i for i, split in enumerate(SPLITS)}
    rows.sort(key=lambda r: (r["method"], order.get(r["split"], len(order)), r["split"], r["fixnoise"]))
    out = [
        "| method | split | fixnoise | N | m | σm | c | σc | truth floor m | wall time (s) | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['split']} | {'yes' if r['fixnoise'] else 'no'} | {r['n']} | {r['m']:+.2e} | "
            f"{r['m_err']:.1e} | {r['c']:+.2e} | {r['c_err']:.1e} | {_fmt(r['m_floor_truth'], '+.2e')} | "
            f"{_fmt(r['seconds'], '.0f')} | {_fmt(r['peak_memory_mb'], '.0f')} |"
        )
    return "\n".join(out)


USAGE = "usage: python -m benchmarks.metacal_precision_table commands [N] [METHOD] [OUTDIR] | table RESULT.json ..."


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["commands"] and len(argv) <= 4:
            print("\n".join(commands(int(argv[1]) if len(argv) > 1 else 1_000_000, *argv[2:4])))
            return 0
        if argv[:1] == ["table"] and len(argv) > 1:
            print(table(argv[1:]))
            return 0
    except ValueError as exc:  # a bad N, or a file that is not JSON
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, KeyError, TypeError) as exc:
        print(f"error: not a deconvbench bias result ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
