"""Wall time of ``generate``, ``bias`` and ``run`` on each executor, back to back, with the
identity of what each run produced (the table of the README section "Running on a cluster").

    python benchmarks/executor_commands.py generate --card metacal-v3 --split snr20 --n 20000
    python benchmarks/executor_commands.py bias --method fft --card metacal-v3 --split snr20 --n 20000
    python benchmarks/executor_commands.py run --method fft --data FILE.h5 --metacal

Every command runs as its own process (start-up included), once per entry of ``--order``
(default ``local dask local dask``: alternating, so that a change of machine load shows up
as a difference between the two runs of the same executor rather than as executor
overhead), with ``--executor KIND -j WORKERS``. Printed per run: the load average before it,
the wall time and the identity of its output (the file's content checksum for
``generate``; m, c and the stamps' digest or checksum for ``bias`` and ``run``), then the
mean wall time per executor and the overhead of each executor against ``local``.

``--projection N W`` adds the wall time that N stamps would take on W workers of the
measured per-worker rate of each executor (stamps / wall seconds / workers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = ("local", "dask")


def command_line(args, kind: str, out: Path) -> list[str]:
    """The deconvbench command of one timed run."""
    base = [sys.executable, "-m", "deconvbench.cli"]
    where = ["--executor", kind, "-j", str(args.workers)]
    if args.command == "generate":
        extra = ["--n", str(args.n)] if args.n else []
        return [*base, "generate", args.card, "--split", args.split, *extra, *where, "--out", str(out)]
    if args.command == "bias":
        return [
            *base,
            "bias",
            "--method",
            args.method,
            "--card",
            args.card,
            "--split",
            args.split,
            "--n",
            str(args.n),
            *where,
            "--out",
            str(out),
        ]
    extra = ["--metacal"] if args.metacal else []
    extra += ["--n", str(args.n)] if args.n else []
    return [*base, "run", "--method", args.method, "--data", str(args.data), *extra, *where, "--out", str(out)]


def identity(command: str, out: Path) -> tuple[str, int]:
    """(what the run produced, in a few characters; number of stamps)."""
    if command == "generate":
        import h5py

        with h5py.File(out) as f:
            return f"checksum {str(f.attrs['checksum'])[:16]}", int(f.attrs["n"])
    result = json.loads(out.read_text())
    block = result.get("metacal") or {}
    numbers = f"m {block.get('m')!r} c {block.get('c')!r}" if block else ""
    nmse = result.get("metrics", {}).get("overall", {}).get("nmse", {}).get("mean")
    if nmse is not None:
        numbers += f" nmse {nmse!r}"
    return f"{numbers} data {result['dataset']['checksum'][:12]}", int(result["dataset"]["n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("generate", "bias", "run"))
    parser.add_argument("--card", default="metacal-v3")
    parser.add_argument("--split", default="snr20")
    parser.add_argument("--n", type=int, default=None, help="stamps (bias: required)")
    parser.add_argument("--method", default="fft")
    parser.add_argument("--data", type=Path, help="dataset file (run)")
    parser.add_argument("--metacal", action="store_true", help="run: with --metacal")
    parser.add_argument("--workers", "-j", type=int, default=2)
    parser.add_argument("--order", nargs="+", choices=EXECUTORS, default=["local", "dask", "local", "dask"])
    parser.add_argument("--projection", nargs=2, type=float, metavar=("N", "WORKERS"))
    args = parser.parse_args()
    if args.command == "bias" and not args.n:
        parser.error("bias needs --n")
    if args.command == "run" and args.data is None:
        parser.error("run needs --data")

    rows, walls = [], {kind: [] for kind in EXECUTORS}
    with tempfile.TemporaryDirectory(prefix="deconvbench-executors-") as folder:
        for index, kind in enumerate(args.order):
            out = Path(folder, f"{index}-{kind}.{'h5' if args.command == 'generate' else 'json'}")
            cmd = command_line(args, kind, out)
            load = os.getloadavg()
            start = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            what, n = identity(args.command, out)
            walls[kind].append((wall, n))
            rows.append((index + 1, kind, f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", wall, what))
    print(f"`deconvbench {args.command}` … `--executor KIND -j {args.workers}` (one process per run)\n")
    print("| # | executor | load average before (1/5/15 min) | wall s | output |")
    print("| --- | --- | --- | --- | --- |")
    for number, kind, load, wall, what in rows:
        print(f"| {number} | {kind} | {load} | {wall:.1f} | {what} |")
    means = {kind: sum(w for w, _ in runs) / len(runs) for kind, runs in walls.items() if runs}
    print()
    for kind, mean in means.items():
        n = walls[kind][0][1]
        rate = n / mean / args.workers
        line = f"{kind}: mean wall {mean:.1f} s over {len(walls[kind])} run(s), {rate:.1f} stamps/s per worker"
        if "local" in means and kind != "local":
            line += f", overhead vs local {100 * (mean / means['local'] - 1):+.1f} %"
        if args.projection:
            total, workers = args.projection
            line += f"; {total:.3g} stamps on {workers:.0f} such workers: {total / (rate * workers) / 3600:.2f} h"
        print(line)
    distinct = {row[4] for row in rows}
    print(f"\noutputs identical across runs: {'yes' if len(distinct) == 1 else 'NO: ' + ' / '.join(sorted(distinct))}")


if __name__ == "__main__":
    main()
