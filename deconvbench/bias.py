"""Streaming precision test of the metacal shear bias: render → deconvolve → metacal → sums.

``deconvbench bias --method M --card CARD --split S --n N`` measures m, c (and α on a
split with sheared PSFs) on N stamps of a metacal card without storing any stamp:

* stamps are rendered group by group through the dataset generator
  (:func:`render_groups`, the one call into :mod:`deconvbench.sim`), bit-identical to
  the stamps of a generated file of the same card and split;
* each chunk of groups is deconvolved by the method, put through the metacal step
  (:func:`deconvbench.metacal.measure.measure_batch`, optionally with fixnoise) and
  reduced to per-group sums ``[Σe1+, Σe1−, Σe2+, Σe2−, n+, n−, ΣR11, ΣR22]`` over the
  groups of 4 whose four measurements all succeeded (a failed stamp drops its group,
  as in :mod:`deconvbench.metacal.bias`); only totals per SNR level are kept;
* errors are a Poisson bootstrap over groups: every group gets ``Poisson(1)`` weights in
  ``n_boot`` replicates (drawn from ``SeedSequence([bootstrap_seed, first group of the
  chunk])``), and the weighted sums are accumulated per replicate. Memory is
  ``O(n_boot)``, independent of N;
* the run's own floor: metacal applied to the *truth* images of the same stamps
  (perfect deconvolution), accumulated the same way and reported next to m;
* a digest of the rendered stamps: ``sha256`` chained over groups, each group hashed
  with the dataset checksum's content hasher (:class:`deconvbench.store.ContentHasher`);
* each chunk is one task, :func:`bias_chunk` of a :class:`BiasTask`, run by an executor
  (:mod:`deconvbench.execution`: inline, local processes or a Dask cluster; a worker
  builds the method once and caches it by name and options). The client adds the
  returned per-chunk sums **in task order**, so sums, m and c are bit-identical for any
  executor and worker count;
* after every chunk (in order) the accumulators are checkpointed atomically to
  ``OUT.partial.npz``; a killed run started again with the same arguments continues
  from the last completed chunk (the result does not depend on where it was killed);
* a finished run keeps its final accumulators as ``OUT.state.npz``, so a later run with
  the same arguments and a larger N can start from it (``--extend OUT``) instead of from
  the first stamp: it renders only the new groups and gives the result, digest included,
  of a fresh run with the larger N (the earlier N must be a whole number of chunks, so the
  chunks and their bootstrap seeds line up).

m = (⟨e1⟩₊ − ⟨e1⟩₋)/(2 g ⟨R11⟩) − 1, c = (⟨e2⟩₊ + ⟨e2⟩₋)/(2⟨R22⟩), c1 likewise on
component 1, α = c1 / PSF g1 (reduced shears g; e is the estimator's ellipticity).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write, check_writable, json_safe, write_json_atomic
from .cards import DatasetCard
from .errors import DeconvbenchError, MethodError, UsageError
from .execution import ExecutorSpec, make_executor
from .execution.method_cache import MethodRef
from .execution.method_cache import worker_method as _worker_method
from .metacal.bias import _ratio_stats
from .metacal.measure import (
    C_REQUIREMENT,
    M_REQUIREMENT,
    MetacalConfig,
    flag_counts,
    measure_batch,
    measure_deconvolved,
    requirement_verdict,
)
from .metacal.psf_fit import reconv_fwhm
from .methods import Batch
from .metrics.aggregate import snr_labels
from .runinfo import process_peak_rss_mb
from .store import CONTENT_KEYS, ContentHasher

#: marker of a streaming bias result (``metacal.mode``)
STREAMING_MODE = "streaming-bias"

#: group size of metacal cards: (+g, 0°), (−g, 0°), (+g, 90°), (−g, 90°)
GROUP = 4
SIGN = np.array([1.0, -1.0, 1.0, -1.0])
N_COLUMNS = 8  # Σe1+, Σe1−, Σe2+, Σe2−, n+, n−, ΣR11, ΣR22
CHANNELS = ("method", "truth")


class BiasInputError(DeconvbenchError, ValueError):
    """Bad arguments of a streaming bias run (wrong card kind, N, options)."""


def render_groups(card: DatasetCard, split: str, first_group: int, n_groups: int) -> dict[str, np.ndarray]:
    """The stamps of ``n_groups`` consecutive groups from the dataset generator (the one
    narrow call into :mod:`deconvbench.sim`): dict of ``observed``, ``noiseless``,
    ``truth``, ``psf`` (4·n_groups, n, n), ``noise_sigma``, ``snr`` and ``params``."""
    from .sim.generate import render_chunk

    return render_chunk(card.model_dump_json(), split, first_group, n_groups)


def group_sums(measurements: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums ``(G, 8)`` of stamps in index order (groups of 4, slots +g, −g, +g,
    −g) and the mask ``(G,)`` of complete groups (all four measurements valid)."""
    e1, e2 = (np.asarray(measurements[k], dtype=np.float64).reshape(-1, GROUP) for k in ("e1", "e2"))
    r11, r22 = (np.asarray(measurements[k], dtype=np.float64).reshape(-1, GROUP) for k in ("R11", "R22"))
    flags = np.asarray(measurements["flags"]).reshape(-1, GROUP)
    valid = (flags == 0) & np.isfinite(e1) & np.isfinite(e2) & np.isfinite(r11) & np.isfinite(r22)
    keep = valid.all(axis=1)
    pos, neg = SIGN > 0, SIGN < 0
    sums = np.stack(
        [
            e1[:, pos].sum(1),
            e1[:, neg].sum(1),
            e2[:, pos].sum(1),
            e2[:, neg].sum(1),
            np.full(len(keep), pos.sum(), float),
            np.full(len(keep), neg.sum(), float),
            r11.sum(1),
            r22.sum(1),
        ],
        axis=1,
    )
    return np.where(keep[:, None], sums, 0.0), keep


@dataclass(frozen=True)
class BiasRun:
    """Identity of a streaming run (a checkpoint is resumed only if it matches)."""

    method: str
    method_params: str
    card: str
    card_hash: str
    split: str
    n: int
    estimator: str
    fixnoise: bool
    chunk_groups: int
    n_boot: int
    bootstrap_seed: int
    centring: str = "newton"

    def key(self) -> str:
        fields = dict(self.__dict__)
        if fields["centring"] == "newton":  # the default: the keys of runs made before the option
            del fields["centring"]
        return json.dumps(fields, sort_keys=True)


class Accumulator:
    """Totals and Poisson-bootstrap replicates of the per-group sums, per channel
    (method, truth) and SNR label; stamp counters."""

    def __init__(self, labels: list[str], n_boot: int):
        self.labels = list(labels)
        shape = (len(CHANNELS), len(self.labels))
        self.sums = np.zeros(shape + (N_COLUMNS,))
        self.boot = np.zeros(shape + (n_boot, N_COLUMNS))
        self.counts = np.zeros(shape + (3,), dtype=np.int64)  # stamps, stamps kept, invalid stamps

    def add(
        self, channel: str, label: str, sums: np.ndarray, keep: np.ndarray, weights: np.ndarray, n_invalid: int
    ) -> None:
        c, s = CHANNELS.index(channel), self.labels.index(label)
        self.sums[c, s] += sums.sum(axis=0)
        self.boot[c, s] += weights @ sums
        self.counts[c, s] += (GROUP * len(keep), GROUP * int(keep.sum()), n_invalid)

    def merge(self, other: Accumulator) -> None:
        """Add the totals of ``other`` (a chunk's accumulator with the same labels)."""
        self.sums += other.sums
        self.boot += other.boot
        self.counts += other.counts

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "boot": self.boot, "counts": self.counts}

    def load(self, data) -> None:
        self.sums, self.boot, self.counts = data["sums"], data["boot"], data["counts"]

    def stats(self, channel: str, label: str | None, g_true: float, psf_g1: float | None) -> dict:
        c = CHANNELS.index(channel)
        idx = slice(None) if label is None else [self.labels.index(label)]
        sums = self.sums[c, idx].sum(axis=0)
        boot = self.boot[c, idx].sum(axis=0)
        counts = self.counts[c, idx].sum(axis=0)
        central = {k: float(v) for k, v in _ratio_stats(sums, g_true).items()}
        replicas = _ratio_stats(boot, g_true)
        out = dict(central)
        for key in ("m", "c1", "c"):
            values = replicas[key][np.isfinite(replicas[key])]
            out[f"{key}_err"] = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
        out.update(
            n=int(counts[0]),
            n_pairs=int(counts[1] // 2),
            n_groups=int(counts[1] // GROUP),
            n_excluded=int(counts[0] - counts[1]),
            n_invalid=int(counts[2]),
        )
        if psf_g1:
            out["alpha"], out["alpha_err"] = out["c1"] / psf_g1, abs(out["c1_err"] / psf_g1)
        else:
            out["alpha"] = out["alpha_err"] = None
        out["requirement"] = requirement_verdict(out)
        return out


def _deconvolve(method, batch: Batch, first_group: int) -> np.ndarray:
    """The method's estimate as float64; a crash or a wrong shape stops the run with one line
    (a stream cannot skip stamps without changing the sums it reports)."""
    try:
        estimate = np.asarray(method.deconvolve(batch), np.float64)
    except Exception as exc:
        raise MethodError(
            f"method {method.name} raised on groups from {first_group}: {type(exc).__name__}: {exc}"
        ) from None
    if estimate.shape != batch.observed.shape:
        raise MethodError(f"method {method.name} returned shape {estimate.shape}, expected {batch.observed.shape}")
    return estimate


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.npz")


def state_path(out: str | Path) -> Path:
    """Where a finished run keeps its final accumulators (``OUT.state.npz``)."""
    out = Path(out)
    return out.with_name(out.name + ".state.npz")


def _load_state(path: Path, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path) as data:
            return json.loads(str(data["meta"])), {k: data[k] for k in ("sums", "boot", "counts")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise BiasInputError(f"{what} {path} is corrupt ({exc}); delete it to start over") from None


def _extension_start(previous: Path, identity: BiasRun) -> tuple[dict, dict[str, np.ndarray]]:
    """The saved state of the finished run ``previous`` (its result JSON), checked to be the
    same run as ``identity`` with a smaller N that ends on a chunk boundary."""
    path = state_path(previous)
    if not path.exists():
        raise BiasInputError(f"--extend: {path} not found (a finished bias run keeps its state there)")
    meta, arrays = _load_state(path, "state file")
    try:
        earlier = json.loads(meta["identity"])
        same = BiasRun(**{**earlier, "n": identity.n}).key() == identity.key()
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise BiasInputError(
            f"--extend: {previous} is not this run with a smaller --n (method, card, split and options differ)"
        )
    n_before, chunk = int(earlier["n"]), GROUP * identity.chunk_groups
    if not n_before < identity.n:
        raise BiasInputError(f"--extend: {previous} already has {n_before} stamps; give a larger --n than that")
    if n_before % chunk or meta.get("next_group") != n_before // GROUP:
        raise BiasInputError(
            f"--extend: {previous} ({n_before} stamps) does not end on a chunk boundary ({chunk} stamps); "
            "its bootstrap would not line up with a fresh run"
        )
    return {**meta, "identity": identity.key()}, arrays


def _save_checkpoint(path: Path, acc: Accumulator, meta: dict) -> None:
    atomic_write(path, lambda handle: np.savez(handle, meta=np.array(json.dumps(meta)), **acc.arrays()))


def _group_digests(arrays: dict[str, np.ndarray]) -> list[str]:
    """The content digest of every group of the chunk (index order)."""
    digests = []
    for g in range(len(arrays["params"]) // GROUP):
        hasher = ContentHasher()
        sl = slice(g * GROUP, (g + 1) * GROUP)
        for key in CONTENT_KEYS:
            data = np.asarray(arrays[key][sl])
            hasher.update(key, data.astype("<f4") if data.dtype.kind == "f" and data.ndim == 3 else data)
        digests.append(hasher.hexdigest())
    return digests


def _extend_chain(chain: str, digests: list[str]) -> str:
    """The stamps digest: sha256 chained over the group digests, in index order."""
    for digest in digests:
        chain = hashlib.sha256(bytes.fromhex(chain) + bytes.fromhex(digest)).hexdigest()
    return chain


def _chunk_digests(task: tuple[str, str, int, int]) -> list[str]:
    """The group digests of one chunk ``(card_json, split, first_group, n_groups)`` (a
    worker's task: rendering only)."""
    from .sim.generate import render_chunk

    return _group_digests(render_chunk(*task))


def stream_digest(
    card: DatasetCard,
    split: str,
    n: int,
    chunk_groups: int = 64,
    executor: ExecutorSpec | None = None,
    progress=None,
) -> str:
    """The stamps digest of the first ``n`` stamps of a split, as a ``bias`` run of any method
    records it in ``dataset.checksum`` (the generator's stamps, no method run)."""
    if n <= 0 or n % GROUP:
        raise UsageError(f"--n must be a positive multiple of {GROUP}, got {n}")
    n_groups = n // GROUP
    card_json = card.model_dump_json()
    tasks = [
        (card_json, split, first, min(chunk_groups, n_groups - first)) for first in range(0, n_groups, chunk_groups)
    ]
    chain = "00" * 32
    with make_executor(executor or ExecutorSpec(kind="inline")) as ex:
        for digests in ex.imap_ordered(_chunk_digests, tasks):
            chain = _extend_chain(chain, digests)
            if progress:
                progress(GROUP * len(digests))
    return chain


@dataclass(frozen=True)
class BiasTask:
    """One chunk of a streaming bias run: groups ``first_group .. first_group+n_groups``."""

    method: object  # a MethodRef, or the instance itself when the task runs in the client
    card_json: str
    split: str
    first_group: int
    n_groups: int
    config: MetacalConfig
    n_boot: int
    labels: tuple[str, ...]


@dataclass
class ChunkSums:
    """What a chunk task returns: its accumulator, the digests of its groups (index
    order), the largest |g1| seen, the non-finite estimates, worker-side seconds and the
    peak resident memory of the process that ran it (MB)."""

    acc: Accumulator
    group_digests: list[str]
    g_true: float
    nonfinite: int
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    flag_counts: dict[str, int] = field(default_factory=dict)  # stamps per failure reason (method)


def bias_chunk(task: BiasTask) -> ChunkSums:
    """Render, deconvolve, metacal and sum one chunk (a pure function of ``task``; the
    function an executor runs)."""
    t0 = time.perf_counter()
    method = _worker_method(task.method)
    card = DatasetCard.model_validate_json(task.card_json)
    config, first, count = task.config, task.first_group, task.n_groups
    arrays = render_groups(card, task.split, first, count)
    params = arrays["params"]
    t_render = time.perf_counter() - t0
    batch = Batch.from_rendered(arrays, card)
    t1 = time.perf_counter()
    estimate = None if hasattr(method, "metacal_images") else _deconvolve(method, batch, first)
    nonfinite = 0 if estimate is None else int((~np.isfinite(estimate).all(axis=(1, 2))).sum())
    t_deconv = time.perf_counter() - t1
    pixel = card.stamp.pixel_scale_arcsec
    reconv = reconv_fwhm(batch.psf, pixel, config.step)  # Γ: fitted once, for both channels
    values = measure_batch(method, batch, estimate, config, noise_seed=params["noise_seed"], reconv=reconv)
    channels = {"method": values}
    t_metacal = time.perf_counter() - t1
    channels["truth"] = measure_deconvolved(
        arrays["truth"], pixel, card.stamp.target_psf_fwhm_arcsec, reconv, replace(config, fixnoise=False)
    )
    weights = np.random.default_rng([config.bootstrap_seed, first]).poisson(1.0, size=(task.n_boot, count))
    group_labels = snr_labels(params["snr_level"][::GROUP])
    acc = Accumulator(list(task.labels), task.n_boot)
    for channel, values in channels.items():
        sums, keep = group_sums(values)
        invalid = (np.asarray(values["flags"]) != 0).reshape(-1, GROUP).sum(axis=1)
        for label in set(group_labels):
            mask = group_labels == label
            acc.add(channel, label, sums[mask], keep[mask], weights[:, mask], int(invalid[mask].sum()))
    seconds = {"render": t_render, "deconv": t_deconv, "metacal": t_metacal, "task": time.perf_counter() - t0}
    g_true = float(np.max(np.abs(params["shear_g1"])))
    counts = flag_counts(channels["method"]["flags"])
    return ChunkSums(acc, _group_digests(arrays), g_true, nonfinite, seconds, process_peak_rss_mb(), counts)


def run_bias(
    method,
    card: DatasetCard,
    split: str,
    n: int,
    out: str | Path,
    config: MetacalConfig | None = None,
    chunk_groups: int = 64,
    n_boot: int = 200,
    progress=None,
    command: str | None = None,
    stop_after_chunks: int | None = None,
    executor: ExecutorSpec | None = None,
    method_options: dict | None = None,
    extend: str | Path | None = None,
) -> dict | None:
    """Streaming bias run (see module docstring); writes the result JSON to ``out`` and
    returns it. ``extend``: the result JSON of a finished run of the same method, card,
    split and options with a smaller N, continued from its ``.state.npz``.
    ``stop_after_chunks`` stops early leaving the checkpoint (tests of the resume path);
    then None is returned.

    ``executor`` says where the chunks run (default: inline, in this process, with the
    ``method`` instance); worker processes build their own method with
    ``load_method(method.name, **method_options)``."""
    from .runinfo import PeakMemory, git_commit, hardware, package_versions, utc_now

    config = config or MetacalConfig()
    if card.kind != "metacal":
        raise BiasInputError(f"bias needs a constant-shear card (kind = metacal), not {card.name}")
    spec = card.split(split)
    if n <= 0 or n % GROUP:
        raise BiasInputError(f"--n must be a positive multiple of {GROUP}, got {n}")
    if n > spec.n:
        raise BiasInputError(f"--n {n} exceeds the {spec.n} stamps of {card.name}/{split}")
    if chunk_groups < 1 or n_boot < 2:
        raise BiasInputError("chunk_groups must be >= 1 and n_boot >= 2")
    out = Path(out)
    identity = BiasRun(
        method=method.name,
        method_params=json.dumps(method.params(), sort_keys=True, default=str),
        card=card.name,
        card_hash=card.card_hash(),
        split=split,
        n=n,
        estimator=config.estimator,
        fixnoise=config.fixnoise,
        chunk_groups=chunk_groups,
        n_boot=n_boot,
        bootstrap_seed=config.bootstrap_seed,
        centring=config.centring,
    )
    levels = card.snr_levels(split)
    labels = list(dict.fromkeys(snr_labels(np.asarray(sorted(levels), dtype=np.float64))))
    acc = Accumulator(labels, n_boot)
    ckpt = _checkpoint_path(out)
    meta = {
        "identity": identity.key(),
        "next_group": 0,
        "chain": "00" * 32,  # as stream_digest
        "seconds": 0.0,
        "deconv_seconds": 0.0,
        "metacal_seconds": 0.0,
        "render_seconds": 0.0,
        "g_true": 0.0,
    }
    check_writable(out, "result file")
    resumed = False
    if ckpt.exists():
        saved, arrays = _load_state(ckpt, "resume checkpoint")
        if saved.get("identity") == identity.key():
            meta, resumed = saved, True
            acc.load(arrays)
    if extend is not None and not resumed:
        meta, arrays = _extension_start(Path(extend), identity)
        acc.load(arrays)
    n_groups = n // GROUP
    executor = executor or ExecutorSpec(kind="inline")
    task_method = (
        method
        if executor.kind == "inline"
        else MethodRef(method.name, json.dumps(method_options or {}, sort_keys=True))
    )
    card_json = card.model_dump_json()
    tasks = (
        BiasTask(
            task_method, card_json, split, first, min(chunk_groups, n_groups - first), config, n_boot, tuple(labels)
        )
        for first in range(meta["next_group"], n_groups, chunk_groups)
    )
    done_chunks = 0
    with PeakMemory() as memory, make_executor(executor) as ex:
        since = time.perf_counter()
        for chunk in ex.imap_ordered(bias_chunk, tasks):
            count = len(chunk.group_digests)
            acc.merge(chunk.acc)
            meta["nonfinite"] = meta.get("nonfinite", 0) + chunk.nonfinite
            meta["chain"] = _extend_chain(meta["chain"], chunk.group_digests)
            meta["g_true"] = chunk.g_true
            meta["next_group"] += count
            meta["render_seconds"] += chunk.seconds["render"]
            meta["deconv_seconds"] += chunk.seconds["deconv"]
            meta["metacal_seconds"] += chunk.seconds["metacal"]
            meta["worker_peak_mb"] = max(meta.get("worker_peak_mb", 0.0), chunk.peak_rss_mb)
            totals = meta.setdefault("flag_counts", {})
            for name, value in chunk.flag_counts.items():
                totals[name] = totals.get(name, 0) + value
            now = time.perf_counter()
            meta["seconds"] += now - since  # wall time of the stream, as seen by the client
            since = now
            _save_checkpoint(ckpt, acc, meta)
            if progress:
                progress(GROUP * count)
            done_chunks += 1
            if stop_after_chunks is not None and done_chunks >= stop_after_chunks and meta["next_group"] < n_groups:
                return None
    psf_g1 = float(spec.psf_shear[0]) if spec.psf_shear is not None and spec.psf_shear[0] != 0 else None
    g_true = meta["g_true"]
    overall = acc.stats("method", None, g_true, psf_g1)
    floor = acc.stats("truth", None, g_true, psf_g1)
    block = {
        "mode": STREAMING_MODE,
        **config.to_dict(),
        "n_boot": n_boot,
        "bootstrap": "poisson over groups",
        "chunk_groups": chunk_groups,
        "g_true": g_true,
        "requirement": {"m": M_REQUIREMENT, "c": C_REQUIREMENT},
        "leakage_variant": psf_g1 is not None,
        "psf_g1": psf_g1,
        "m_floor_truth": floor["m"],
        "m_floor_truth_err": floor["m_err"],
        "overall": overall,
        "flag_counts": dict(meta.get("flag_counts", {})),
        "by_snr": {label: acc.stats("method", label, g_true, psf_g1) for label in labels},
        "truth_floor": {
            "overall": floor,
            "by_snr": {label: acc.stats("truth", label, g_true, psf_g1) for label in labels},
        },
    }
    for key in ("m", "m_err", "c", "c_err", "c1", "c1_err", "alpha", "alpha_err", "R11", "R22", "n_pairs"):
        block[key] = overall.get(key)
    seconds = meta["seconds"]
    device = getattr(method, "device", "cpu")
    versions = package_versions(tuple(getattr(method, "requires", ()) or ()))
    result = {
        "schema_version": 1,
        "method": {
            "name": method.name,
            "params": method.params(),
            "device": device,
            "version": getattr(method, "version", versions["deconvbench"]),
        },
        "dataset": {
            "card": card.name,
            "version": card.version,
            "split": split,
            "n": n,
            "checksum": meta["chain"],
            "checksum_kind": "stream: sha256 chained over groups",
            "card_hash": card.card_hash(),
            "seed": spec.seed,
        },
        "versions": versions,
        "git_commit": git_commit(),
        "hardware": hardware(device),
        # image metrics are not computed by the stream (no truth comparison per stamp)
        "metrics": {"overall": {"count": n - meta.get("nonfinite", 0), "failures": meta.get("nonfinite", 0)}},
        "failures": {
            "stamps_failed": meta.get("nonfinite", 0),
            "raised": 0,
            "wrong_shape": 0,
            "nonfinite": meta.get("nonfinite", 0),
            "metacal_flagged": overall["n_invalid"],
            "first_error": None,
            "errors": [],
        },
        "throughput": {
            "deconv_gal_per_s": n / meta["deconv_seconds"] if meta["deconv_seconds"] > 0 else None,
            "deconv_seconds": meta["deconv_seconds"],
            "device": device,
            "stream_seconds": seconds,
            "render_seconds": meta["render_seconds"],
            "stream_gal_per_s": n / seconds if seconds > 0 else None,
            "metacal_seconds": meta["metacal_seconds"],
            "metacal_gal_per_s": n / meta["metacal_seconds"] if meta["metacal_seconds"] > 0 else None,
            "batch_size": GROUP * chunk_groups,
        },
        "peak_memory_mb": memory.peak_mb,
        "memory_increase_mb": memory.increase_mb,
        # the largest peak RSS of a process that ran chunks (this one when inline); over the
        # whole run, an extended run's earlier part included
        "worker_peak_memory_mb": meta.get("worker_peak_mb"),
        "timestamp": utc_now(),
        "command": command,
        "metacal": block,
    }
    _save_checkpoint(state_path(out), acc, meta)
    write_json_atomic(out, json_safe(result))
    ckpt.unlink(missing_ok=True)
    return result
