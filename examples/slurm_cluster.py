"""Start Dask workers as SLURM jobs (dask-jobqueue) and run deconvbench work on them.

Needs ``pip install 'deconvbench[dask]' dask-jobqueue`` on the login node and the same
deconvbench environment on the compute nodes (a shared file system). Not run by the tests.

    # show the sbatch script of one worker job, submit nothing
    python examples/slurm_cluster.py --jobs 10 --cores 16 --memory 64GB --dry-run

    # 10 jobs × 16 single-thread workers; write the scheduler file, run a command, scancel
    python examples/slurm_cluster.py --jobs 10 --cores 16 --memory 64GB --walltime 04:00:00 \\
        --queue normal --account myproject --scheduler-file scheduler.json \\
        -- python my_pipeline.py --scheduler-file scheduler.json

    # without a command: keep the cluster up until Ctrl-C; connect from elsewhere with
    # ExecutorSpec(kind="dask", scheduler_file=Path("scheduler.json"))

The scheduler runs in this process (on the login node); each SLURM job starts ``--cores``
worker processes of one thread and one BLAS thread each (the executor's convention), so
``--jobs 10 --cores 16`` gives 160 workers. The jobs read the Dask settings of
``examples/dask-config/`` (``DASK_CONFIG``): glibc's malloc defaults (dask's own
``MALLOC_TRIM_THRESHOLD_`` made rendering cost 40-50 % more CPU) and no worker profiler,
as in the LocalCluster that ``--executor dask`` starts. Ending this script cancels the jobs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

DASK_CONFIG = Path(__file__).resolve().parent / "dask-config"  # on the shared file system
WORKER_ENV = [
    "export OMP_NUM_THREADS=1",
    "export OPENBLAS_NUM_THREADS=1",
    "export MKL_NUM_THREADS=1",
    "unset MALLOC_TRIM_THRESHOLD_",
    f"export DASK_CONFIG={DASK_CONFIG}",
]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True, help="SLURM jobs to submit")
    parser.add_argument("--cores", type=int, required=True, help="cores per job = worker processes per job")
    parser.add_argument("--memory", required=True, help="memory per job, e.g. 64GB")
    parser.add_argument("--walltime", default="01:00:00")
    parser.add_argument("--queue", help="SLURM partition (#SBATCH -p)")
    parser.add_argument("--account", help="SLURM account (#SBATCH -A)")
    parser.add_argument("--scheduler-file", default="scheduler.json")
    parser.add_argument("--min-workers", type=int, default=1, help="wait for this many workers before the command")
    parser.add_argument("--dry-run", action="store_true", help="print one job script and exit")
    return parser.parse_args(argv), command


def main(argv: list[str]) -> int:
    args, command = parse_args(argv)
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,
        processes=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        job_script_prologue=WORKER_ENV,
    )
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        client = Client(cluster)
        client.write_scheduler_file(args.scheduler_file)
        cluster.scale(jobs=args.jobs)
        print(
            f"scheduler {cluster.scheduler_address}, file {args.scheduler_file}; waiting for "
            f"{args.min_workers} worker(s)",
            flush=True,
        )
        client.wait_for_workers(args.min_workers)
        if command:
            return subprocess.call(command)
        print("cluster up; Ctrl-C ends it and cancels the jobs", flush=True)
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        return 130
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
