"""Parallel, deterministic generation of a dataset split into one HDF5 file.

Work is cut into chunks of whole PSF groups (galaxies sharing one PSF); workers
(processes) render chunks independently and the main process writes them in index
order. Every stamp depends only on (card, split, index), so the output, and its
checksum, is bit-identical for any ``workers``.

Interruption: Ctrl-C/SIGTERM of the main process cancels the pending chunks, terminates
the workers and removes the ``.partial`` file before re-raising. Workers also watch their
parent: if it dies without cleaning up (``kill -9``), they exit at their next check
(every ``WATCH_PARENT_SECONDS``) instead of rendering on as orphans.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import galsim
import numpy as np
from threadpoolctl import threadpool_limits

from .. import __version__
from ..cards import DatasetCard
from ..errors import CardError, DeconvbenchError
from ..store import DatasetWriter
from .render import render_group
from .sampling import card_params_dtype, draw_galaxies, group_size

CHUNK_STAMPS = 32  # stamps per chunk, rounded up to whole PSF groups


@dataclass
class GenerationReport:
    path: Path
    card: str
    version: str
    split: str
    n: int
    workers: int
    seconds: float
    checksum: str
    file_bytes: int

    @property
    def stamps_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def render_chunk(card_json: str, split: str, first_galaxy: int, n_galaxies: int) -> dict[str, np.ndarray]:
    """Render ``n_galaxies`` consecutive galaxies (runs in a worker process)."""
    card = DatasetCard.model_validate_json(card_json)
    rows = draw_galaxies(card, split, first_galaxy, n_galaxies)
    with threadpool_limits(1):  # small matrix products: BLAS threads only add overhead
        images = render_group(card, rows)
    images["params"] = rows
    images["noise_sigma"] = rows["noise_sigma"].copy()
    images["snr"] = rows["snr"].copy()
    return images


def chunk_galaxies(card: DatasetCard) -> int:
    """Galaxies per chunk: whole PSF groups, about ``CHUNK_STAMPS`` stamps."""
    per_psf = card.psf.galaxies_per_psf
    stamps_per_psf = per_psf * group_size(card)
    return per_psf * max(1, -(-CHUNK_STAMPS // stamps_per_psf))


WATCH_PARENT_SECONDS = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit as soon as the parent process is gone (no orphans)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(WATCH_PARENT_SECONDS)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel pending chunks and terminate the workers now (on interruption or error)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


def file_attrs(card: DatasetCard, split: str, n: int) -> dict:
    return {
        "card_name": card.name,
        "card_version": card.version,
        "card_hash": card.card_hash(),
        "card_json": card.canonical_json(),
        "split": split,
        "n": n,
        "kind": card.kind,
        "stamp_size": card.stamp.size,
        "pixel_scale_arcsec": card.stamp.pixel_scale_arcsec,
        "target_psf_fwhm_arcsec": card.stamp.target_psf_fwhm_arcsec,
        "deconvbench_version": __version__,
        "galsim_version": galsim.__version__,
    }


def generate(
    card: DatasetCard,
    split: str,
    out: str | Path,
    n: int | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> GenerationReport:
    """Generate ``n`` stamps (default: the split's count) of ``split`` into ``out``."""
    spec = card.split(split)
    n = spec.n if n is None else n
    size = group_size(card)
    if n <= 0 or n % size:
        raise CardError(f"--n must be a positive multiple of {size} for card {card.name!r}, got {n}")
    if workers < 1:
        raise DeconvbenchError(f"--workers must be >= 1, got {workers}")
    n_galaxies = n // size
    step = chunk_galaxies(card)
    chunks = [(g, min(step, n_galaxies - g)) for g in range(0, n_galaxies, step)]
    card_json = card.model_dump_json()
    start = time.perf_counter()
    with DatasetWriter(out, n, card.stamp.size, card_params_dtype(card), file_attrs(card, split, n)) as writer:
        if workers == 1:
            for first, count in chunks:
                arrays = render_chunk(card_json, split, first, count)
                writer.write(arrays)
                if progress:
                    progress(len(arrays["params"]))
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)
            )
            try:
                pending: deque = deque()
                todo = iter(chunks)
                for first, count in todo:  # keep a bounded window of chunks in flight
                    pending.append(pool.submit(render_chunk, card_json, split, first, count))
                    if len(pending) >= 3 * workers:
                        break
                while pending:
                    arrays = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(render_chunk, card_json, split, *nxt))
                    writer.write(arrays)
                    if progress:
                        progress(len(arrays["params"]))
            except BaseException:
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
        checksum = writer.close()
    seconds = time.perf_counter() - start
    out = Path(out)
    return GenerationReport(out, card.name, card.version, split, n, workers, seconds, checksum, out.stat().st_size)
