"""What the executors cost: tasks per second with trivial tasks, and the overhead with
busy tasks of a given length (the figures of the README section "Running on a cluster").

    python examples/executor_overhead.py --workers 2
    python examples/executor_overhead.py --workers 2 --trivial 4000 --durations 0.01 0.03 0.1 0.3
    python examples/executor_overhead.py --workers 2 --render metacal-v1 snr20 2048

``--render CARD SPLIT N`` renders the first N stamps of a split in the generator's chunks
(the work of ``deconvbench generate``, without the file) through each executor, back to
back, and prints wall times and a sha256 of every array in order (equal = same content).

Overhead = wall time / ideal − 1, ideal = tasks × duration / workers. The busy tasks spin
on the CPU for ``duration`` seconds of wall time, so the executor's own processes
(scheduler, client, nannies) compete with them for the cores, as in a real run.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from deconvbench.execution import ExecutorSpec, make_executor


def trivial(x: int) -> int:
    return x


def spin(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def tasks_per_second(executor, n: int, window: int | None) -> float:
    start = time.perf_counter()
    for _ in executor.imap_ordered(trivial, range(n), max_in_flight=window):
        pass
    return n / (time.perf_counter() - start)


def raw_dask_tasks_per_second(client, n: int) -> float:
    """The scheduler alone: submit everything at once, gather (no ordering, no window)."""
    start = time.perf_counter()
    client.gather(client.map(trivial, range(n), pure=False))
    return n / (time.perf_counter() - start)


def overhead(executor, duration: float, workers: int, busy_seconds: float, window: int | None) -> tuple[int, float]:
    n = max(2 * workers, round(busy_seconds * workers / duration))
    start = time.perf_counter()
    for _ in executor.imap_ordered(spin, [duration] * n, max_in_flight=window):
        pass
    wall = time.perf_counter() - start
    return n, wall / (n * duration / workers) - 1


def render(task: tuple[str, str, int, int]) -> dict:
    from deconvbench.sim.generate import render_chunk

    return render_chunk(*task)


def compare_render(card_name: str, split: str, n: int, workers: int, kinds: list[str]) -> None:
    from deconvbench.cards import load_card
    from deconvbench.sim.generate import CHUNK_GROUPS
    from deconvbench.sim.sampling import group_size

    card = load_card(card_name)
    n_groups = n // group_size(card)
    chunks = [
        (card.model_dump_json(), split, g, min(CHUNK_GROUPS, n_groups - g)) for g in range(0, n_groups, CHUNK_GROUPS)
    ]
    for kind in kinds:
        with make_executor(ExecutorSpec(kind=kind, workers=workers)) as executor:
            executor.map_ordered(trivial, range(4 * workers))  # workers up and warm
            digest = hashlib.sha256()
            start = time.perf_counter()
            for arrays in executor.imap_ordered(render, chunks):
                for key in sorted(arrays):
                    digest.update(arrays[key].tobytes())
            wall = time.perf_counter() - start
        print(
            f"{kind:5s} {workers} workers: {n} stamps of {card_name}/{split} in {len(chunks)} tasks: "
            f"{wall:6.1f} s ({n / wall:6.1f} stamps/s), sha256 {digest.hexdigest()[:16]}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trivial", type=int, default=4000, help="number of trivial tasks")
    parser.add_argument("--durations", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--busy-seconds", type=float, default=6.0, help="ideal wall time of each overhead run")
    parser.add_argument("--executors", nargs="+", default=["dask", "local"])
    parser.add_argument("--render", nargs=3, metavar=("CARD", "SPLIT", "N"))
    args = parser.parse_args()
    w = args.workers
    if args.render:
        card_name, split, n = args.render
        compare_render(card_name, split, int(n), w, args.executors)
        return
    for kind in args.executors:
        with make_executor(ExecutorSpec(kind=kind, workers=w)) as executor:
            executor.map_ordered(trivial, range(4 * w))  # workers up and warm
            windows = [None, 16 * w, 256]
            for window in windows:
                rate = tasks_per_second(executor, args.trivial, window)
                label = f"default ({2 * w})" if window is None else str(window)
                print(f"{kind:5s} {w} workers: trivial tasks, window {label:>11s}: {rate:7.0f} tasks/s", flush=True)
            if kind == "dask":
                rate = raw_dask_tasks_per_second(executor.client, args.trivial)
                print(f"{kind:5s} {w} workers: trivial tasks, client.map + gather: {rate:7.0f} tasks/s", flush=True)
            for duration in args.durations:
                n, over = overhead(executor, duration, w, args.busy_seconds, None)
                print(
                    f"{kind:5s} {w} workers: {n:5d} busy tasks of {duration:5.3f} s: overhead {100 * over:+6.1f} %",
                    flush=True,
                )


if __name__ == "__main__":
    main()
