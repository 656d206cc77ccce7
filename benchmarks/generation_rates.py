"""Generation rate (stamps/s) and peak memory per card and worker count.

Run: ``python benchmarks/generation_rates.py ground-v3:4096 space-v3:2048 --workers 1 2``.
A spec ``CARD:N:KEY=VALUE:...`` sets card fields first (as ``validate-render --set``), e.g.
``ground-v3:4096:stamp.kernel_wrap=truncated:stamp.psf_stamp=kernel``: a renderer variant
of a card, measured in the same run as the card itself.
Generates the first N stamps of each card's first split into a temporary folder and
prints one line per (card, workers): stamps/s (wall clock of ``generate``, process
start-up included), peak resident memory of the busiest process (MB) and the CPU seconds
of the main process (rendering with 1 worker; hashing, compressing and writing) and of the
worker processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from deconvbench.cards import load_card
from deconvbench.sim.generate import generate
card = load_card(sys.argv[1], json.loads(sys.argv[5])); split = next(iter(card.splits))
t0 = time.perf_counter()
report = generate(card, split, sys.argv[2], n=int(sys.argv[3]), workers=int(sys.argv[4]))
seconds = time.perf_counter() - t0
usage_self = resource.getrusage(resource.RUSAGE_SELF)
usage_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
own, kids = usage_self.ru_maxrss / 1024, usage_kids.ru_maxrss / 1024
print(json.dumps(dict(card=card.name, settings=json.loads(sys.argv[5]), split=split, n=report.n, workers=report.workers,
                      seconds=seconds, rate=report.n / seconds, checksum=report.checksum,
                      main_mb=own, worker_mb=kids if report.workers > 1 else own,
                      main_cpu_s=usage_self.ru_utime + usage_self.ru_stime,
                      workers_cpu_s=usage_kids.ru_utime + usage_kids.ru_stime)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "cards",
        nargs="+",
        help="CARD:N[:KEY=VALUE...], e.g. ground-v3:4000 or ground-v3:4000:psf.galaxies_per_psf=256 "
        "(CARD: a card's name or TOML path)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    specs = [spec.split(":") for spec in args.cards]
    for spec, parts in zip(args.cards, specs, strict=True):
        if len(parts) < 2 or not parts[1].isdigit():
            parser.error(f"a card spec is CARD:N[:KEY=VALUE...], got {spec!r}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="deconvbench-rates-") as folder:
        for number, (name, n, *settings) in enumerate(specs):
            for workers in args.workers:
                out = Path(folder) / f"{number}-{Path(name).stem}-{workers}.h5"  # a card's name or its TOML path
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, name, str(out), n, str(workers), json.dumps(settings)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:  # reported; the other cards still run
                    print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
                    failed += 1
                    continue
                print(proc.stdout.strip(), flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
