"""Run a deconvolver over a dataset: batching, timing, memory, failures, resume, results.

The harness streams the dataset file in batches (memory bounded by the batch size),
hands each batch to the method (numpy in, numpy out), checks the output (shape, finite
values) and computes per-stamp metrics against ``truth``. A batch on which the method
raises, or returns the wrong shape, marks its stamps as failed; non-finite stamps are
marked as such. Failed stamps never enter the averages: they are counted and reported
with the first error message.

After every batch the per-stamp state is checkpointed atomically next to the result
(``RESULT.partial.npz``); ``resume=True`` continues a killed run from its last completed
batch, provided method, parameters, dataset checksum and batch size are unchanged.

The file's content checksum is recomputed while the batches stream (every dataset of the
file is read once, no second pass); the result records the verified value
(``dataset.checksum``), the value stored in the file (``dataset.checksum_recorded``) and
whether they agree (``dataset.checksum_verified``), so an edited file cannot pass for the
published data. Throughput counts only stamps that produced an estimate.

The work of one batch is :func:`process_batch`, wherever it runs. With an executor
(:mod:`deconvbench.execution`: local processes or a Dask cluster) a task is a range of
batches of one file, :func:`run_batch_range` of a :class:`RunTask`: the worker reads the
range, runs its own instance of the method (built once per worker process) and returns
the per-stamp results; this process merges them in index order and stays the only writer
of the result, the estimates file and the checkpoint (saved after every task, so a killed
run resumes at a task boundary, on any executor). Per-stamp numbers are bit-identical for
any executor, worker count and task size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_write, check_writable, json_safe, write_json_atomic
from .errors import DataError, OutputError, UsageError
from .execution import ExecutorSpec, make_executor
from .execution.method_cache import MethodRef, worker_method
from .metacal.measure import MEASUREMENT_KEYS, MetacalConfig, measure_batch, measure_deconvolved, summarise
from .metacal.psf_fit import reconv_fwhm
from .methods import Batch, Deconvolver
from .metrics.aggregate import aggregate, snr_labels, stamp_metrics
from .psf_error import ModelPSFs, PSFError, result_block
from .results_schema import SCHEMA_VERSION
from .runinfo import PeakMemory, git_commit, hardware, package_versions, process_peak_rss_mb, utc_now
from .store import CONTENT_KEYS, ContentHasher, open_dataset

STATUS_OK, STATUS_RAISED, STATUS_BAD_SHAPE, STATUS_NONFINITE = 0, 1, 2, 3
STATUS_NAMES = {STATUS_RAISED: "raised", STATUS_BAD_SHAPE: "wrong_shape", STATUS_NONFINITE: "nonfinite"}


@dataclass
class RunState:
    """Everything needed to resume: per-stamp metrics and bookkeeping."""

    n: int
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    status: np.ndarray | None = None
    next_index: int = 0
    deconv_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)
    mcal: dict[str, np.ndarray] = field(default_factory=dict)
    mcal_truth: dict[str, np.ndarray] = field(default_factory=dict)
    metacal_seconds: float = 0.0
    wall_seconds: float = 0.0

    def save(self, path: Path) -> None:
        meta = {
            "next_index": self.next_index,
            "deconv_seconds": self.deconv_seconds,
            "metacal_seconds": self.metacal_seconds,
            "wall_seconds": self.wall_seconds,
            "errors": self.errors,
            "identity": self.identity,
        }
        arrays = {
            "status": self.status,
            **{f"m_{k}": v for k, v in self.metrics.items()},
            **{f"c_{k}": v for k, v in self.mcal.items()},
            **{f"t_{k}": v for k, v in self.mcal_truth.items()},
            "meta": np.array(json.dumps(meta)),
        }
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: Path) -> RunState:
        """Read a checkpoint; a corrupt or foreign file is a :class:`DataError`."""
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                metrics = {k[2:]: data[k] for k in data.files if k.startswith("m_")}
                mcal = {k[2:]: data[k] for k in data.files if k.startswith("c_")}
                mcal_truth = {k[2:]: data[k] for k in data.files if k.startswith("t_")}
                status = data["status"]
            state = cls(n=len(status), metrics=metrics, status=status, mcal=mcal, mcal_truth=mcal_truth)
            state.metacal_seconds = meta.get("metacal_seconds", 0.0)
            state.wall_seconds = meta.get("wall_seconds", 0.0)
            state.next_index = int(meta["next_index"])
            state.deconv_seconds = float(meta["deconv_seconds"])
            state.errors = list(meta["errors"])
            state.identity = meta["identity"]
        except Exception as exc:  # zip, pickle, JSON or key errors: all mean "not a usable checkpoint"
            raise DataError(
                f"cannot resume from {path}: corrupt checkpoint ({type(exc).__name__}); remove it to start afresh"
            ) from None
        return state


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.npz")


@dataclass(frozen=True)
class RunPlan:
    """One (dataset file, method) run and where its outputs go."""

    data: Path
    method: str
    tag: str  # CARD-vV_SPLIT
    n: int
    result: Path
    outputs: Path | None


def _option_suffix(options: dict) -> str:
    """``_key=value-...`` for method options (a short hash when long or unusual)."""
    if not options:
        return ""
    text = "-".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(options.items())).replace('"', "")
    if len(text) <= 40 and all(ch.isalnum() or ch in "=.+-_" for ch in text):
        return f"_{text}"
    return "_opt" + hashlib.sha256(text.encode()).hexdigest()[:8]


def result_stem(
    method: str,
    tag: str,
    n: int,
    full_n: int,
    options: dict | None = None,
    metacal: MetacalConfig | None = None,
    psf_error: PSFError | None = None,
) -> str:
    """File name stem of a run: method, card/split, then every choice that changes the
    numbers (prefix of n stamps, method options, metacal estimator, fixnoise and centring,
    PSF-model error), so different runs never overwrite each other."""
    stem = f"{method}_{tag}"
    if n != full_n:
        stem += f"_n{n}"
    stem += _option_suffix(options or {})
    if metacal is not None:
        stem += metacal_suffix(metacal)
    if psf_error is not None:
        stem += f"_{psf_error.tag()}"
    return stem


def metacal_suffix(metacal: MetacalConfig) -> str:
    """The part of a result's file name that says how metacal measured (empty for the
    defaults): ``_ESTIMATOR`` unless wmom, ``_fixnoise``, ``_CENTRING`` unless newton."""
    suffix = "" if metacal.estimator == "wmom" else f"_{metacal.estimator}"
    suffix += "_fixnoise" if metacal.fixnoise else ""
    return suffix + ("" if metacal.centring == "newton" else f"_{metacal.centring}")


def plan_outputs(
    files: list[Path],
    methods: list[str],
    options: dict[str, dict],
    out: Path | None,
    save_outputs: Path | None,
    metacal: MetacalConfig | None = None,
    psf_error: PSFError | None = None,
) -> list[RunPlan]:
    """Result and estimate paths of every run, checked before any work starts.

    ``out`` is a folder holding ``STEM.json`` per run (default ``out/``), except for a single
    run given a file name ending in ``.json`` that is not an existing folder: then it is the
    result file. ``save_outputs`` likewise, with ``.h5``/``.hdf5``. Raises :class:`OutputError` for an output
    that cannot be written (read-only folder, a directory where a file is expected) and
    :class:`UsageError` when two runs would write the same file."""
    plans = []
    several = len(files) * len(methods) > 1
    for path in files:
        with open_dataset(path) as dataset:
            attrs, n = dataset.attrs, dataset.n
            full_n = int(dataset.card.get("splits", {}).get(attrs["split"], {}).get("n", n))
        tag = f"{attrs['card_name']}-v{attrs['card_version']}_{attrs['split']}"
        for name in methods:
            stem = result_stem(name, tag, n, full_n, options.get(name), metacal, psf_error)
            if out is None:
                result = Path("out") / f"{stem}.json"
            else:
                result = out / f"{stem}.json" if _is_folder(out, several, (".json",)) else out
            outputs = None
            if save_outputs is not None:
                folder = _is_folder(save_outputs, several, (".h5", ".hdf5"))
                outputs = save_outputs / f"{stem}.h5" if folder else save_outputs
            plans.append(RunPlan(Path(path), name, tag, n, result, outputs))
    targets = [p.result for p in plans] + [p.outputs for p in plans if p.outputs is not None]
    if len(set(targets)) != len(targets):
        raise UsageError("two runs would write the same output file; give --out a folder")
    for plan in plans:
        check_writable(plan.result, "result file")
        if plan.outputs is not None:
            check_writable(plan.outputs, "--save-outputs file")
    return plans


def _is_folder(path: Path, several: bool, file_suffixes: tuple[str, ...]) -> bool:
    """Whether an output argument names a folder: several runs, an existing folder, or a name
    without one of ``file_suffixes`` (``--out out/results`` is a folder, ``--out r.json`` a file)."""
    return several or path.is_dir() or path.suffix.lower() not in file_suffixes


class OutputWriter:
    """Estimates written to HDF5 (``estimate`` (N,n,n) f4 + provenance), atomically."""

    def __init__(self, path: Path, n: int, stamp_size: int, attrs: dict, resume: bool):
        self.path = check_writable(path, "--save-outputs file")
        self.partial = self.path.with_name(self.path.name + ".partial")
        try:
            self._file = h5py.File(self.partial, "a" if resume and self.partial.exists() else "w")
        except OSError as exc:
            raise OutputError(f"cannot write {self.partial}: {exc}") from None
        if "estimate" not in self._file:
            self._file.create_dataset(
                "estimate",
                shape=(n, stamp_size, stamp_size),
                dtype="<f4",
                chunks=(min(64, n), stamp_size, stamp_size),
                compression="gzip",
                shuffle=True,
            )
            for key, value in attrs.items():
                self._file.attrs[key] = value

    def write(self, start: int, estimate: np.ndarray) -> None:
        self._file["estimate"][start : start + len(estimate)] = estimate

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self.partial.replace(self.path)


def run_method(
    method: Deconvolver,
    data_path: str | Path,
    out: str | Path,
    batch_size: int = 256,
    save_outputs: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    command: str | None = None,
    metacal: MetacalConfig | None = None,
    psf_error: PSFError | None = None,
    executor: ExecutorSpec | None = None,
    method_options: dict | None = None,
    task_batches: int | None = None,
) -> dict:
    """Run ``method`` on every stamp of ``data_path``; write and return the result dict.

    With ``psf_error`` (a :class:`deconvbench.psf_error.PSFError`), the method and the
    metacal step's fit of Γ get model PSF stamps instead of the stored ones (the true PSF
    of the stamps is unchanged) and the result gets a ``psf_error`` block.

    With ``metacal`` (a :class:`deconvbench.metacal.measure.MetacalConfig`), every batch
    also goes through the metacal step (``measure_batch``) and the result gets a
    ``metacal`` block (bias m, c, α with bootstrap errors, overall and per SNR level) and
    ``throughput.metacal_gal_per_s``.

    ``executor`` says where the batches run (default: in this process, with ``method``).
    On an executor, a task is a range of ``task_batches`` consecutive batches (default
    :func:`batches_per_task`) that a worker reads from the file and puts through
    :func:`process_batch` with its own instance, ``load_method(method.name,
    **method_options)`` built once per worker; this process merges the per-stamp results in
    index order and stays the only writer of the result, the estimates and the checkpoint
    (saved after every task). The numbers do not depend on the executor, the worker count
    or ``task_batches``: batches are cut at the same indices everywhere."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    out = check_writable(out, "result file")
    ckpt = checkpoint_path(out)
    with open_dataset(data_path) as dataset:
        attrs = dataset.attrs
        n, size = dataset.n, dataset.stamp_size
        params = _read(dataset, "params", 0, None)
        psf_error = _with_split_psf_error(psf_error, dataset)
        hasher = ContentHasher()
        hasher.update("params", params)
        method_params = method.params()
        identity = {
            "method": method.name,
            "params": method_params,
            "checksum": dataset.checksum,
            "batch_size": batch_size,
            "n": n,
            "metacal": metacal.to_dict() if metacal else None,
        }
        if psf_error is not None:
            identity["psf_error"] = psf_error.to_dict()
        models = ModelPSFs(_card(dataset), params, psf_error) if psf_error is not None else None
        evaluation = _evaluation(method, dataset)
        identity = json.loads(json.dumps(json_safe(identity)))
        state = None
        if resume and ckpt.exists():
            state = RunState.load(ckpt)
            if state.identity != identity:
                raise DataError(
                    f"cannot resume from {ckpt}: it belongs to a different run "
                    "(method, parameters, dataset or batch size changed); remove it"
                )
        if state is None:
            state = RunState(n=n, status=np.zeros(n, dtype=np.int8), identity=identity)
        writer = None
        if save_outputs:
            writer = OutputWriter(
                Path(save_outputs),
                n,
                size,
                {
                    "method": method.name,
                    "dataset_checksum": dataset.checksum,
                    "card_name": attrs["card_name"],
                    "split": attrs["split"],
                },
                resume=resume and state.next_index > 0,
            )
        if state.next_index:
            for _, arrays in _stream(dataset, batch_size, 0, state.next_index):  # resumed: hash the done part
                for key in STREAMED_KEYS:
                    hasher.update(key, arrays[key])
            if progress:
                progress(state.next_index)
        since = time.perf_counter()
        where = {"executor": "in-process", "workers": 1}
        worker_peak_mb = 0.0
        with PeakMemory() as memory:
            if executor is None or executor.kind == "inline":
                outcomes = _outcomes_in_process(
                    method, dataset, params, state.next_index, batch_size, metacal, hasher, writer is not None, models
                )
            else:
                task_method = MethodRef.of(method.name, method_options)
                outcomes = _outcomes_on_executor(
                    executor,
                    task_method,
                    dataset,
                    state.next_index,
                    batch_size,
                    metacal,
                    hasher,
                    writer is not None,
                    task_batches,
                    where,
                    psf_error,
                )
            with contextlib.closing(outcomes):  # an error or Ctrl-C here shuts the executor down at once
                for outcome, range_done in outcomes:
                    _merge_outcome(state, outcome, writer)
                    worker_peak_mb = max(worker_peak_mb, outcome.peak_rss_mb)
                    if range_done:  # a checkpoint after every task (every batch in process)
                        if writer:
                            writer.flush()
                        now = time.perf_counter()
                        state.wall_seconds += now - since
                        since = now
                        state.save(ckpt)
                    if progress:
                        progress(outcome.part.n)
        if writer:
            writer.close()
    attrs = {**attrs, "checksum_recorded": attrs["checksum"], "checksum": hasher.hexdigest()}
    result = build_result(method, attrs, params, state, batch_size, memory, command, metacal)
    if psf_error is not None:
        result["psf_error"] = result_block(data_path, psf_error, metacal.step if metacal else 0.01)
    if evaluation is not None:
        result["evaluation"] = evaluation
    result["throughput"].update(_wall_throughput(state, where))
    # the largest peak RSS of a process that ran batches (this one in process), this invocation
    result["worker_peak_memory_mb"] = worker_peak_mb or None
    write_json_atomic(out, json_safe(result))
    ckpt.unlink(missing_ok=True)
    return result


STREAMED_KEYS = tuple(key for key in CONTENT_KEYS if key != "params")
WORK_KEYS = ("observed", "psf", "noise_sigma", "truth")  # what a batch's work reads
MAX_ERRORS = 20  # error messages kept in a result
TASK_STAMPS = 2048  # stamps per executor task at most (about 8 s of fft + metacal per worker)
TASKS_PER_WORKER = 4  # at least this many tasks per worker when the run is small


def batches_per_task(n_batches: int, batch_size: int, workers: int) -> int:
    """Batches in one executor task: at most ``TASK_STAMPS`` stamps, and small enough that
    every worker gets ``TASKS_PER_WORKER`` tasks (load balance at the end of a run)."""
    most = max(1, TASK_STAMPS // batch_size)
    balanced = max(1, math.ceil(n_batches / (TASKS_PER_WORKER * max(1, workers))))
    return min(most, balanced)


@dataclass
class BatchOutcome:
    """What one batch of stamps ``start .. start+part.n`` produced: its per-stamp state
    (indices relative to the batch), when asked for the estimates (float32), and the peak
    resident memory (MB) of the process that ran it."""

    start: int
    part: RunState
    estimate: np.ndarray | None = None
    peak_rss_mb: float = 0.0


@dataclass(frozen=True)
class RunTask:
    """One executor task of a run: batches ``start .. stop`` (cut every ``batch_size``
    stamps from the file's first stamp) of the dataset file ``data``."""

    method: object  # a MethodRef (built by the worker), or the instance for in-process tasks
    data: str
    start: int
    stop: int
    batch_size: int
    metacal: MetacalConfig | None
    keep_estimates: bool
    psf_error: PSFError | None = None  # the method is told a model PSF (see deconvbench.psf_error)


def _batch_of(arrays: dict[str, np.ndarray], dataset, model_psf: np.ndarray | None = None) -> Batch:
    """The method's input for one batch read from ``dataset``; with ``model_psf`` (a PSF-model
    error run) the method is told that PSF instead of the stored one."""
    return Batch(
        observed=arrays["observed"],
        psf=arrays["psf"] if model_psf is None else model_psf,
        noise_sigma=arrays["noise_sigma"],
        pixel_scale_arcsec=dataset.pixel_scale_arcsec,
        target_fwhm_arcsec=dataset.target_psf_fwhm_arcsec,
    )


def process_batch(
    method, batch: Batch, truth: np.ndarray, noise_seed: np.ndarray, start: int, metacal, keep_estimate: bool
) -> BatchOutcome:
    """The work of one batch, wherever it runs: deconvolve, check the output, image metrics
    against ``truth`` (float64), and with ``metacal`` the metacal step and the truth floor.
    A method that raises or returns the wrong shape marks the batch's stamps as failed."""
    count = len(truth)
    part = RunState(n=count, status=np.zeros(count, dtype=np.int8))
    sl = slice(0, count)
    if metacal:
        part.mcal = {key: np.full(count, np.nan) for key in MEASUREMENT_KEYS}
        part.mcal_truth = {key: np.full(count, np.nan) for key in MEASUREMENT_KEYS}
        _measure_truth_floor(batch, truth, metacal, part, sl)
    estimate, status, error = _call_method(method, batch, part)
    kept = None
    if estimate is not None:
        per_stamp = stamp_metrics(estimate, truth)
        finite = np.isfinite(estimate).all(axis=(1, 2))
        part.metrics = {key: np.where(finite, values, np.nan) for key, values in per_stamp.items()}
        part.status[:] = np.where(finite, STATUS_OK, STATUS_NONFINITE)
        if not finite.all():
            part.errors.append(f"stamps {start}..{start + count - 1}: {int((~finite).sum())} non-finite estimate(s)")
        if keep_estimate:
            kept = estimate.astype(np.float32)
        if metacal:
            _measure_metacal(method, batch, estimate, metacal, noise_seed, part, sl, start)
    else:
        part.status[:] = status
        part.errors.append(f"stamps {start}..{start + count - 1}: {error}")
    return BatchOutcome(start, part, kept, process_peak_rss_mb())


def run_batch_range(task: RunTask) -> list[BatchOutcome]:
    """Read batches ``task.start .. task.stop`` from the file and process them (a pure
    function of ``task``: the function an executor runs)."""
    method = worker_method(task.method)
    outcomes = []
    with open_dataset(task.data) as dataset:
        rows = _read(dataset, "params", task.start, task.stop)
        noise_seed = rows["noise_seed"]
        models = None
        if task.psf_error is not None:  # the whole table: a PSF group's rows pick its FFT grid
            models = ModelPSFs(_card(dataset), _read(dataset, "params", 0, None), task.psf_error)
        for lo in range(task.start, task.stop, task.batch_size):
            hi = min(lo + task.batch_size, task.stop)
            arrays = {key: _read(dataset, key, lo, hi) for key in WORK_KEYS}
            model_psf = None if models is None else models.stamps(rows[lo - task.start : hi - task.start])
            batch = _batch_of(arrays, dataset, model_psf)
            truth = arrays["truth"].astype(np.float64)
            seeds = noise_seed[lo - task.start : hi - task.start]
            outcomes.append(process_batch(method, batch, truth, seeds, lo, task.metacal, task.keep_estimates))
    return outcomes


def _outcomes_in_process(
    method, dataset, params, start: int, batch_size: int, metacal, hasher, keep: bool, models=None
):
    """(outcome, True) per batch, run here; the content hash follows the stream. ``models``
    (a :class:`~deconvbench.psf_error.ModelPSFs`) replaces the stored PSFs the method sees."""
    for lo, arrays in _stream(dataset, batch_size, start, dataset.n):
        for key in STREAMED_KEYS:
            hasher.update(key, arrays[key])
        truth = arrays["truth"].astype(np.float64)
        sl = slice(lo, lo + len(truth))
        model_psf = None if models is None else models.stamps(params[sl])
        batch = _batch_of(arrays, dataset, model_psf)
        yield process_batch(method, batch, truth, params["noise_seed"][sl], lo, metacal, keep), True


def _outcomes_on_executor(
    spec: ExecutorSpec,
    task_method,
    dataset,
    start: int,
    batch_size: int,
    metacal,
    hasher,
    keep: bool,
    task_batches,
    where: dict,
    psf_error: PSFError | None = None,
):
    """(outcome, last of its task) per batch, in index order, from tasks of batch ranges run
    by the executor of ``spec``; this process reads the same ranges for the content hash.
    ``where`` receives the executor's kind and worker count."""
    n = dataset.n
    with make_executor(spec) as executor:
        where.update(executor=executor.kind, workers=executor.workers)
        n_batches = math.ceil((n - start) / batch_size)
        step = batch_size * (task_batches or batches_per_task(n_batches, batch_size, executor.workers))
        tasks = (
            RunTask(task_method, str(dataset.path), lo, min(lo + step, n), batch_size, metacal, keep, psf_error)
            for lo in range(start, n, step)
        )
        for outcomes in executor.imap_ordered(run_batch_range, tasks):
            for _, arrays in _stream(dataset, batch_size, outcomes[0].start, outcomes[-1].start + outcomes[-1].part.n):
                for key in STREAMED_KEYS:
                    hasher.update(key, arrays[key])
            for index, outcome in enumerate(outcomes):
                yield outcome, index == len(outcomes) - 1


def _wall_throughput(state: RunState, where: dict) -> dict:
    """Throughput of the whole run as the client saw it: stamps with an estimate per second
    of wall-clock time (reading, deconvolution, metrics, metacal, executor overhead, all
    workers together), next to ``deconv_gal_per_s`` and ``metacal_gal_per_s``, which divide
    by compute seconds summed over workers (the rate of one worker)."""
    ok = int(np.sum(state.status == STATUS_OK))
    wall = state.wall_seconds
    return {
        "wall_seconds": wall,
        "wall_gal_per_s": ok / wall if wall > 0 and ok else None,
        "executor": where["executor"],
        "workers": where["workers"],
    }


def _merge_outcome(state: RunState, outcome: BatchOutcome, writer) -> None:
    """Put one batch's per-stamp results into the run's state (and its estimates into the
    outputs file), at the batch's indices."""
    part, n = outcome.part, state.n
    sl = slice(outcome.start, outcome.start + part.n)
    for key, values in part.metrics.items():
        if key not in state.metrics:
            state.metrics[key] = np.full(n, np.nan)
        state.metrics[key][sl] = values
    state.status[sl] = part.status
    for whole, piece in ((state.mcal, part.mcal), (state.mcal_truth, part.mcal_truth)):
        for key, values in piece.items():
            if key not in whole:
                whole[key] = np.full(n, np.nan)
            whole[key][sl] = values
    state.errors.extend(part.errors[: max(0, MAX_ERRORS - len(state.errors))])
    state.deconv_seconds += part.deconv_seconds
    state.metacal_seconds += part.metacal_seconds
    state.next_index = sl.stop
    if writer and outcome.estimate is not None:
        writer.write(outcome.start, outcome.estimate)


def _with_split_psf_error(psf_error: PSFError | None, dataset) -> PSFError | None:
    """The PSF-model error of a run: the split's ``psf_model_error`` (a card variant), or
    ``psf_error`` (``run --psf-error``); both at once is a :class:`UsageError`."""
    spec = _card(dataset).splits.get(dataset.attrs["split"])
    if spec is None or spec.psf_model_error is None:
        return psf_error
    if psf_error is not None:
        raise UsageError(
            f"split {dataset.attrs['split']!r} of {dataset.attrs['card_name']} already tells the method a model "
            "PSF with an error (its psf_model_error); drop --psf-error"
        )
    return PSFError(**spec.psf_model_error.model_dump())


def _evaluation(method, dataset) -> dict | None:
    """In-family / out-of-family block of a trained method (:mod:`deconvbench.family`)."""
    if not hasattr(method, "training_domain"):
        return None
    from .family import evaluation_block

    return evaluation_block(method.training_domain(), _card(dataset))


def _card(dataset):
    """The dataset's card (recorded in the file) as a :class:`~deconvbench.cards.DatasetCard`."""
    from .cards import DatasetCard

    return DatasetCard.model_validate(dataset.card)


def _read(dataset, key: str, start: int, stop: int | None) -> np.ndarray:
    """``dataset.read`` with a corrupt chunk reported as :class:`DataError` (one line)."""
    try:
        return dataset.read(key, start, stop)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{dataset.path}: corrupt or unreadable data in '{key}' at stamps {start}..{stop}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def _stream(dataset, batch_size: int, start: int, stop: int):
    """(start, {key: array}) for every content dataset but ``params``, in index order."""
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        yield lo, {key: _read(dataset, key, lo, hi) for key in STREAMED_KEYS}


def _measure_metacal(
    method, batch: Batch, estimate: np.ndarray, config, noise_seed, state: RunState, sl: slice, start: int
) -> None:
    """Metacal step for one batch; an exception is recorded as a failed measurement."""
    t0 = time.perf_counter()
    try:
        values = measure_batch(method, batch, estimate, config, noise_seed=noise_seed)
    except Exception as exc:  # reported, never fatal
        where = traceback.extract_tb(exc.__traceback__)[-1]
        state.mcal["flags"][sl] = -1
        if len(state.errors) < 20:
            state.errors.append(
                f"stamps {start}..{start + sl.stop - sl.start - 1}: metacal step failed: {type(exc).__name__}: {exc} "
                f"({Path(where.filename).name}:{where.lineno})"
            )
        values = None
    state.metacal_seconds += time.perf_counter() - t0
    if values is not None:
        for key in MEASUREMENT_KEYS:
            state.mcal[key][sl] = values[key]


def _measure_truth_floor(batch: Batch, truth: np.ndarray, config: MetacalConfig, state: RunState, sl: slice) -> None:
    """Metacal on the ``truth`` images of the batch (perfect deconvolution, no fixnoise):
    the run's own floor of m, reported next to m (not timed)."""
    reconv = reconv_fwhm(batch.psf, batch.pixel_scale_arcsec, config.step)
    values = measure_deconvolved(
        truth, batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, reconv, replace(config, fixnoise=False)
    )
    for key in MEASUREMENT_KEYS:
        state.mcal_truth[key][sl] = values[key]


def _call_method(method: Deconvolver, batch: Batch, state: RunState):
    """Run one batch; returns (estimate or None, status, error message)."""
    t0 = time.perf_counter()
    try:
        estimate = method.deconvolve(batch)
    except Exception as exc:  # a broken method is reported, never fatal
        state.deconv_seconds += time.perf_counter() - t0
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return None, STATUS_RAISED, f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    state.deconv_seconds += time.perf_counter() - t0
    estimate = np.asarray(estimate)
    if estimate.shape != batch.observed.shape:
        return None, STATUS_BAD_SHAPE, f"wrong output shape {estimate.shape}, expected {batch.observed.shape}"
    return estimate.astype(np.float64, copy=False), STATUS_OK, ""


def failure_summary(state: RunState) -> dict:
    counts = {name: int(np.sum(state.status == code)) for code, name in STATUS_NAMES.items()}
    return {
        "stamps_failed": int(np.sum(state.status != STATUS_OK)),
        **counts,
        "first_error": state.errors[0] if state.errors else None,
        "errors": state.errors,
    }


def build_result(
    method,
    attrs: dict,
    params: np.ndarray,
    state: RunState,
    batch_size: int,
    memory: PeakMemory,
    command: str | None,
    metacal=None,
) -> dict:
    groups = {
        "snr": snr_labels(params["snr_level"]),
        "psf_family": np.array([f.decode() for f in params["psf_family"]]),
    }
    metrics = aggregate(state.metrics, groups) if state.metrics else {}
    ok = int(np.sum(state.status == STATUS_OK))
    seconds = state.deconv_seconds
    versions = package_versions(tuple(getattr(method, "requires", ()) or ()))
    throughput = {
        "deconv_gal_per_s": ok / seconds if seconds > 0 and ok else None,
        "deconv_seconds": seconds,
        "batch_size": batch_size,
        "device": getattr(method, "device", "cpu"),
        "stamps_ok": ok,
    }
    result = {
        "schema_version": SCHEMA_VERSION,
        "method": {
            "name": method.name,
            "params": method.params(),
            "device": getattr(method, "device", "cpu"),
            "version": getattr(method, "version", versions["deconvbench"]),
        },
        "dataset": {
            "card": attrs["card_name"],
            "version": attrs["card_version"],
            "split": attrs["split"],
            "n": int(attrs["n"]),
            "checksum": attrs["checksum"],
            "card_hash": attrs["card_hash"],
            "checksum_recorded": attrs.get("checksum_recorded", attrs["checksum"]),
            "checksum_verified": attrs.get("checksum_recorded", attrs["checksum"]) == attrs["checksum"],
        },
        "versions": versions,
        "git_commit": git_commit(),
        "hardware": hardware(getattr(method, "device", "cpu")),
        "metrics": metrics,
        "failures": failure_summary(state),
        "throughput": throughput,
        "peak_memory_mb": memory.peak_mb,
        "memory_increase_mb": memory.increase_mb,
        "timestamp": utc_now(),
        "command": command,
    }
    if metacal is not None and state.mcal:
        result["metacal"] = summarise(state.mcal, state.status == STATUS_OK, params, metacal)
        if state.mcal_truth:
            floor = summarise(state.mcal_truth, np.ones(len(params), dtype=bool), params, metacal)
            result["metacal"]["m_floor_truth"] = floor["m"]
            result["metacal"]["m_floor_truth_err"] = floor["m_err"]
            result["metacal"]["truth_floor"] = {"overall": floor["overall"], "by_snr": floor["by_snr"]}
        # a method with its own metacal route (galsim-mcal) does the deconvolution inside
        # it; for the others the metacal step is deconvolution + shear/reconvolution + estimator
        own_route = hasattr(method, "metacal_images")
        total = state.metacal_seconds + (0.0 if own_route else seconds)
        throughput["metacal_seconds"] = total
        throughput["metacal_gal_per_s"] = ok / total if total > 0 and ok else None
    return result
