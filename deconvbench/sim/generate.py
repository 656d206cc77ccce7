"""Parallel, deterministic generation of a dataset split into one HDF5 file.

Work is cut into chunks of whole PSF groups (galaxies sharing one PSF), the tasks
``(card_json, split, first_galaxy, n_galaxies)``; an executor (:mod:`deconvbench.execution`:
local worker processes, a Dask cluster, or inline) renders them and hands the arrays back
in task order, straight into the :class:`~deconvbench.store.DatasetWriter`. Every stamp
depends only on (card, split, index), so the output, and its checksum, is bit-identical
for any executor and worker count.

Interruption: Ctrl-C/SIGTERM of the main process makes the executor kill its workers
(none is left behind, even after ``kill -9`` of the main process) and the writer removes
the ``.partial`` file before the interrupt is re-raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import galsim
import numpy as np
from threadpoolctl import threadpool_limits

from .. import __version__
from ..cards import DatasetCard
from ..errors import CardError, DeconvbenchError
from ..execution import ExecutorSpec, make_executor
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


def render_task(task: tuple[str, str, int, int]) -> dict[str, np.ndarray]:
    """:func:`render_chunk` of one task ``(card_json, split, first_galaxy, n_galaxies)``
    (the function an executor runs)."""
    return render_chunk(*task)


def chunk_tasks(card: DatasetCard, split: str, n_galaxies: int) -> list[tuple[str, str, int, int]]:
    """The render tasks of the first ``n_galaxies`` galaxies of ``split``, in index order."""
    step = chunk_galaxies(card)
    card_json = card.model_dump_json()
    return [(card_json, split, g, min(step, n_galaxies - g)) for g in range(0, n_galaxies, step)]


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
    executor: ExecutorSpec | None = None,
) -> GenerationReport:
    """Generate ``n`` stamps (default: the split's count) of ``split`` into ``out``.

    ``executor`` says where the chunks are rendered; without it, ``workers`` local
    processes (inline for ``workers=1``)."""
    spec = card.split(split)
    n = spec.n if n is None else n
    size = group_size(card)
    if n <= 0 or n % size:
        raise CardError(f"--n must be a positive multiple of {size} for card {card.name!r}, got {n}")
    if executor is None:
        if workers < 1:
            raise DeconvbenchError(f"--workers must be >= 1, got {workers}")
        executor = ExecutorSpec(kind="inline" if workers == 1 else "local", workers=workers)
    tasks = chunk_tasks(card, split, n // size)
    start = time.perf_counter()
    with (
        make_executor(executor) as ex,
        DatasetWriter(out, n, card.stamp.size, card_params_dtype(card), file_attrs(card, split, n)) as writer,
    ):
        for arrays in ex.imap_ordered(render_task, tasks):
            writer.write(arrays)
            if progress:
                progress(len(arrays["params"]))
        checksum = writer.close()
        used_workers = ex.workers
    seconds = time.perf_counter() - start
    out = Path(out)
    return GenerationReport(out, card.name, card.version, split, n, used_workers, seconds, checksum, out.stat().st_size)
