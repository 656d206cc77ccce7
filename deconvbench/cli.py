"""The ``deconvbench`` command line: a thin layer over the library.

Every user error (bad card, missing file, unknown method, corrupt data) is printed as
one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tabulate import tabulate

from .errors import DeconvbenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark and dataset suite for PSF deconvolution of galaxy images (weak lensing).",
)
err_console = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("DECONVBENCH_PROGRESS") == "1"


class RateTracker:
    """Feeds a rich progress task with a stamps/s rate."""

    def __init__(self, progress: Progress, task, unit: str = "stamps"):
        self.progress, self.task, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=count, rate=f"{rate:,.1f} {self.unit}/s")


@app.command("list-datasets")
def list_datasets() -> None:
    """List the dataset cards with their splits."""
    from .cards import list_cards, load_card

    rows = []
    for name in list_cards():
        card = load_card(name)
        splits = ", ".join(f"{k}={v.n}" for k, v in card.splits.items())
        rows.append([card.name, card.version, card.kind, f"{card.stamp.size}", f"{card.stamp.pixel_scale_arcsec}",
                     ", ".join(card.psf.families), splits])
    print(tabulate(rows, headers=["card", "version", "kind", "stamp", "pixel [arcsec]", "PSF families", "splits"]))


@app.command()
def generate(
    card: str = typer.Argument(..., help="card name (see list-datasets) or path to a card TOML"),
    split: str = typer.Option(..., "--split", "-s", help="split to generate (e.g. train, val, test)"),
    n: Optional[int] = typer.Option(None, "--n", help="generate only the first N stamps of the split"),
    workers: int = typer.Option(1, "--workers", "-j", help="worker processes (output is identical for any value)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output HDF5 file (default: data dir, see README)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Generate a dataset split from a card into one HDF5 file (atomic, checksummed)."""
    from .cards import load_card
    from .paths import dataset_path
    from .sim.generate import generate as run_generate

    dataset_card = load_card(card)
    dataset_card.split(split)
    path = out or dataset_path(dataset_card, split, n)
    if path.exists() and not force:
        raise DeconvbenchError(f"{path} exists (use --force to overwrite, or `deconvbench verify` to check it)")
    total = n or dataset_card.split(split).n
    with progress_bar() as progress:
        task = progress.add_task(f"{dataset_card.name}/{split}", total=total, rate="")
        report = run_generate(dataset_card, split, path, n=n, workers=workers, progress=RateTracker(progress, task))
    summarise_generation(report)


def summarise_generation(report) -> None:
    import numpy as np

    from .metrics.aggregate import snr_labels
    from .store import open_dataset

    with open_dataset(report.path) as dataset:
        params = dataset.params()
    levels = sorted(set(params["snr_level"].tolist()))
    families = sorted(set(p.decode() for p in params["psf_family"]))
    profiles = sorted(set(p.decode() for p in params["gal_profile"]))
    table = [
        ["file", str(report.path)],
        ["card", f"{report.card} v{report.version} / {report.split}"],
        ["stamps", report.n],
        ["SNR levels", ", ".join(f"{label} ({int(np.sum(params['snr_level'] == s))})"
                                 for s, label in zip(levels, snr_labels(levels)))],
        ["PSF families", ", ".join(f"{f} ({int(np.sum(params['psf_family'] == f.encode()))})" for f in families)],
        ["galaxy profiles", ", ".join(profiles)],
        ["file size", f"{report.file_bytes / 1e6:.2f} MB ({report.file_bytes / 1e6 / report.n * 1000:.1f} MB per 1000 stamps)"],
        ["time", f"{report.seconds:.1f} s ({report.stamps_per_second:.1f} stamps/s, {report.workers} worker(s))"],
        ["checksum", report.checksum],
    ]
    print(tabulate(table, tablefmt="simple"))


@app.command()
def verify(files: List[Path] = typer.Argument(..., help="dataset HDF5 file(s)")) -> None:
    """Recompute content checksums; non-zero exit on any mismatch or unreadable file."""
    from .cards import expected_checksum, load_card
    from .store import open_dataset, verify as verify_file

    for path in files:
        checksum = verify_file(path)
        note = ""
        with open_dataset(path) as dataset:
            attrs = dataset.attrs
        try:
            card = load_card(attrs["card_name"])
            expected = expected_checksum(card, attrs["split"], int(attrs["n"]))
        except DeconvbenchError:
            expected = None
        if expected is not None:
            if expected != checksum:
                raise DeconvbenchError(
                    f"{path}: content differs from the published checksum of {attrs['card_name']}/{attrs['split']}"
                )
            note = " (matches the card's published checksum)"
        print(f"OK {path} {checksum}{note}")


@app.command("list-methods")
def list_methods_cmd() -> None:
    """List registered deconvolvers (entry points) with their availability."""
    from .methods import list_methods

    rows = [[m.name, "yes" if m.available else f"no: {m.reason}", m.description] for m in list_methods()]
    print(tabulate(rows, headers=["method", "available", "description"]))


def _parse_options(options: list[str]) -> dict[str, dict]:
    """``METHOD.key=value`` → {METHOD: {key: value}} (values parsed as JSON when possible)."""
    import json

    parsed: dict[str, dict] = {}
    for item in options:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise DeconvbenchError(f"--option expects METHOD.key=value, got {item!r}")
        key, value = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            parsed.setdefault(method, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed.setdefault(method, {})[name] = value
    return parsed


def _resolve_data(data: Optional[Path], dataset: Optional[str], split: Optional[str], n: Optional[int],
                  workers: int) -> Path:
    if data is not None:
        if dataset or n:
            raise DeconvbenchError("give either --data FILE or --dataset CARD --split SPLIT [--n N], not both")
        return data
    if not dataset or not split:
        raise DeconvbenchError("say what to run on: --data FILE, or --dataset CARD --split SPLIT")
    return ensure_dataset(dataset, split, n=n, workers=workers)


def comparison_table(results: list[dict]) -> str:
    """One row per (method, SNR level): medians of the image and shape metrics."""
    rows = []
    for result in results:
        name = result["method"]["name"]
        metrics = result["metrics"]
        groups = metrics.get("by_snr", {})
        order = sorted(groups, key=lambda s: (s == "noiseless", float(s) if s != "noiseless" else 0))
        for label in order + ["overall"]:
            block = groups[label] if label != "overall" else metrics.get("overall", {})
            if not block:
                continue
            rows.append([name, label, block.get("count"), _fmt(block, "nmse", "mean"), _fmt(block, "nmse", "median"),
                         _fmt(block, "psnr", "median", ".1f"), _fmt(block, "ssim", "median", ".3f"),
                         _fmt(block, "e_err", "mean", ".4f"), _fmt(block, "size_err", "median", "+.3f"),
                         _fmt(block, "flux_err", "median", "+.4f"), block.get("failures", 0)])
        fail = result["failures"]["stamps_failed"]
        speed = result["throughput"]["deconv_gal_per_s"]
        rows.append([name, "stamps/s", f"{speed:,.0f}" if speed else "-", "", "", "", "", "", "",
                     f"peak {result['peak_memory_mb']:.0f} MB", f"{fail} failed" if fail else ""])
    headers = ["method", "SNR", "N", "NMSE mean", "NMSE med", "PSNR med", "SSIM med", "|Δe| mean", "size err med",
               "flux err med", "failures"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def _fmt(block: dict, metric: str, stat: str, spec: str = ".3e") -> str:
    value = block.get(metric, {}).get(stat) if isinstance(block.get(metric), dict) else None
    return "-" if value is None else format(value, spec)


@app.command()
def run(
    method: List[str] = typer.Option(..., "--method", "-m", help="method name (repeat for a comparison)"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset HDF5 file"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="card name (generated if missing); "
                                          "with --metacal default metacal-v2"),
    split: Optional[str] = typer.Option(None, "--split", help="split of --dataset (with --metacal: default all splits)"),
    n: Optional[int] = typer.Option(None, "--n", help="use only the first N stamps of each split"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    out: Optional[Path] = typer.Option(None, "--out", help="result JSON (one run) or directory (several runs); "
                                       "default out/"),
    save_outputs: Optional[Path] = typer.Option(None, "--save-outputs", help="write estimates to this HDF5 file "
                                                "(a directory when several runs)"),
    option: List[str] = typer.Option([], "--option", help="METHOD.key=value passed to the method"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last completed batch"),
    strict: bool = typer.Option(False, "--strict", help="exit non-zero if any stamp failed"),
    metacal: bool = typer.Option(False, "--metacal", help="also run metacalibration: shear bias m, c, alpha and "
                                 "metacal throughput (needs a constant-shear card, e.g. metacal-v2)"),
    estimator: str = typer.Option("wmom", "--estimator", help="metacal shear estimator: wmom or admom"),
    fixnoise: bool = typer.Option(False, "--fixnoise", help="metacal: add ngmix's fixnoise term (linear methods)"),
    workers: int = typer.Option(2, "--workers", "-j", help="workers for generating a missing dataset"),
) -> None:
    """Run one or more deconvolvers over a dataset and print the comparison table."""
    import shlex

    from .harness import run_method
    from .methods import load_method
    from .store import open_dataset

    options = _parse_options(option)
    unknown = set(options) - set(method)
    if unknown:
        raise DeconvbenchError(f"--option names a method not in --method: {', '.join(sorted(unknown))}")
    mcal_config = None
    if metacal:
        from .metacal.measure import MetacalConfig

        try:
            mcal_config = MetacalConfig(estimator=estimator, fixnoise=fixnoise)
        except (KeyError, ValueError) as exc:
            raise DeconvbenchError(str(exc).strip("\"'")) from None
    elif fixnoise or estimator != "wmom":
        raise DeconvbenchError("--estimator and --fixnoise apply to --metacal runs only")
    if n is not None and n < 1:
        raise DeconvbenchError(f"--n must be >= 1, got {n}")
    paths = _resolve_runs(data, dataset, split, n, workers, metacal)
    runs = [(path, name) for path in paths for name in method]
    several = len(runs) > 1
    command = "deconvbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    instances: dict[str, Any] = {}
    results = []
    for path, name in runs:
        with open_dataset(path) as ds:
            attrs = ds.attrs
            total = ds.n
            kind = ds.card.get("kind")
        tag = f"{attrs['card_name']}-v{attrs['card_version']}_{attrs['split']}"
        if metacal and kind != "metacal":
            raise DeconvbenchError(f"--metacal needs a constant-shear card (kind = metacal), not {attrs['card_name']}")
        suffix = "_fixnoise" if fixnoise else ""
        if name not in instances:
            instances[name] = load_method(name, **options.get(name, {}))
        instance = instances[name]
        if out is None:
            result_path = Path("out") / f"{name}_{tag}{suffix}.json"
        else:
            result_path = out / f"{name}_{tag}{suffix}.json" if several else out
        outputs = None
        if save_outputs is not None:
            outputs = save_outputs / f"{name}_{tag}.h5" if several else save_outputs
        with progress_bar() as progress:
            task = progress.add_task(f"{name} on {tag}", total=total, rate="")
            result = run_method(instance, path, result_path, batch_size=batch_size, save_outputs=outputs,
                                resume=resume, progress=RateTracker(progress, task), command=command,
                                metacal=mcal_config)
        failures = result["failures"]
        if failures["stamps_failed"]:
            err_console.print(f"[yellow]warning:[/yellow] {name}: {failures['stamps_failed']} of {total} stamps "
                              f"failed (first: {escape(str(failures['first_error']))})", highlight=False, soft_wrap=True)
        err_console.print(f"wrote {escape(str(result_path))}", highlight=False)
        results.append(result)
    print(comparison_table(results))
    if metacal:
        print()
        print(metacal_table(results))
    if strict and any(r["failures"]["stamps_failed"] for r in results):
        raise DeconvbenchError("--strict: some stamps failed (see the table and the result files)")


def _resolve_runs(data: Optional[Path], dataset: Optional[str], split: Optional[str], n: Optional[int],
                  workers: int, metacal: bool) -> list[Path]:
    """The dataset files of a run: one file, one split, or (metacal) every split of a card."""
    if data is not None or not metacal:
        return [_resolve_data(data, dataset, split, n, workers)]
    from .cards import load_card

    card = load_card(dataset or "metacal-v2")
    if card.kind != "metacal":
        raise DeconvbenchError(f"--metacal needs a constant-shear card (kind = metacal), not {card.name}")
    splits = [split] if split else list(card.splits)
    return [ensure_dataset(card.name, name, n=n, workers=workers) for name in splits]


def metacal_table(results: list[dict]) -> str:
    """One row per (method, split, SNR level): m ± σm, c ± σc, α, R, pairs, speed."""
    rows = []
    for result in results:
        block = result.get("metacal")
        if not block:
            continue
        speed = result["throughput"].get("metacal_gal_per_s")
        labels = list(block["by_snr"]) if len(block["by_snr"]) > 1 else []
        for label in labels + ["overall"]:
            stats = block["overall"] if label == "overall" else block["by_snr"][label]
            rows.append([
                result["method"]["name"], result["dataset"]["split"], label if labels else next(iter(block["by_snr"])),
                _pm(stats.get("m"), stats.get("m_err")), _pm(stats.get("c"), stats.get("c_err")),
                _pm(stats.get("c1"), stats.get("c1_err")), _pm(stats.get("alpha"), stats.get("alpha_err")),
                _num(stats.get("R11"), ".4f"), stats.get("n_pairs"), stats.get("n_excluded"),
                stats.get("requirement", "–"),
                f"{speed:,.1f}" if speed and label == "overall" else "",
            ])
        floor = block.get("m_floor_estimator")
    headers = ["method", "split", "SNR", "m ± σm", "c ± σc", "c1 ± σ", "α ± σα", "<R11>", "pairs", "excluded",
               "|m|<1e-3 & |c|<1e-4", "metacal gal/s"]
    text = tabulate(rows, headers=headers, disable_numparse=True)
    if rows:
        text += (f"\nestimator {results[0]['metacal']['estimator']}; requirement |m| < 1e-3, |c| < 1e-4; "
                 f"estimator non-linearity floor m ≈ 0.9·g² = {floor:.1e} (not a metacal error)")
    return text


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pm(value, err) -> str:
    if value is None:
        return "-"
    return f"{value:+.2e} ± {err:.1e}" if err is not None else f"{value:+.2e}"


def _repo_file(name: str) -> Path:
    """A file at the top of the source checkout (results/, leaderboard.md)."""
    return Path(__file__).resolve().parent.parent / name


@app.command()
def submit(
    result: Path = typer.Argument(..., help="result JSON written by `deconvbench run`"),
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    replace: bool = typer.Option(False, "--replace", help="supersede an existing result of the same method"),
) -> None:
    """Validate a result and add it to results/ (nothing changes if it is rejected)."""
    from .leaderboard import submit as do_submit

    target = do_submit(result, results_dir or _repo_file("results"), replace=replace)
    print(f"accepted: {target}")


@app.command()
def leaderboard(
    results_dir: Path = typer.Option(None, "--results-dir", help="default: results/ of this checkout"),
    out: Path = typer.Option(None, "--out", help="default: leaderboard.md of this checkout"),
    check: bool = typer.Option(False, "--check", help="exit non-zero if the file is not what results/ implies"),
) -> None:
    """Regenerate leaderboard.md from results/ (deterministic)."""
    from .leaderboard import render_leaderboard

    text = render_leaderboard(results_dir or _repo_file("results"))
    target = out or _repo_file("leaderboard.md")
    if check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            raise DeconvbenchError(f"{target} is out of date with the results (run `deconvbench leaderboard`)")
        print(f"{target} is up to date")
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    print(f"wrote {target}")


@app.command("record-checksum")
def record_checksum(files: List[Path] = typer.Argument(..., help="generated dataset files")) -> None:
    """Maintainers: publish the verified checksum of generated split(s) in datasets/checksums.json."""
    import json

    from .cards import cards_dir, expected_checksums, load_card
    from .store import open_dataset, verify as verify_file

    table = expected_checksums()
    for path in files:
        checksum = verify_file(path)
        with open_dataset(path) as dataset:
            attrs = dataset.attrs
        card = load_card(attrs["card_name"])
        if attrs["card_hash"] != card.card_hash():
            raise DeconvbenchError(f"{path} was generated from a different version of card {card.name}")
        entry = table.setdefault(card.name, {"version": card.version, "splits": {}})
        if entry.get("version") != card.version:
            entry.clear()
            entry.update({"version": card.version, "splits": {}})
        key = attrs["split"] if int(attrs["n"]) == card.split(attrs["split"]).n else f"{attrs['split']}@{attrs['n']}"
        entry["splits"][key] = {"n": int(attrs["n"]), "checksum": checksum}
        print(f"{card.name} v{card.version} {key}: {checksum}")
    target = cards_dir() / "checksums.json"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    tmp.replace(target)


def ensure_dataset(card_name: str, split: str, n: int | None = None, workers: int = 1) -> Path:
    """Path of a generated split, generating (or regenerating a corrupt file) if needed."""
    from .cards import load_card
    from .paths import dataset_path
    from .sim.generate import generate as run_generate
    from .store import verify as verify_file

    card = load_card(card_name)
    path = dataset_path(card, split, n)
    if path.exists():
        try:
            verify_file(path)
            return path
        except DeconvbenchError as exc:
            err_console.print(f"regenerating: {escape(str(exc))}", highlight=False)
    total = n or card.split(split).n
    with progress_bar() as progress:
        task = progress.add_task(f"generate {card.name}/{split}", total=total, rate="")
        report = run_generate(card, split, path, n=n, workers=workers, progress=RateTracker(progress, task))
    summarise_generation(report)
    return path


@app.command()
def train(
    framework: str = typer.Option("torch", "--framework", help="jax or torch"),
    dataset: str = typer.Option("ground-v2", "--dataset", help="card whose train/val splits are used"),
    epochs: int = typer.Option(20, "--epochs", help="total epochs (a resumed run continues up to this)"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate"),
    out: Path = typer.Option(Path("out/deconvnet"), "--out", help="directory for checkpoints and best.npz"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --out"),
    patience: Optional[int] = typer.Option(5, "--patience", help="early stop after N epochs without improvement"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="random symmetries of the square"),
    seed: int = typer.Option(0, "--seed"),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="use only the first N training stamps"),
    n_val: Optional[int] = typer.Option(None, "--n-val", help="use only the first N validation stamps"),
    width: Optional[int] = typer.Option(None, "--width", help="override DeconvNetConfig.width"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
    workers: int = typer.Option(2, "--workers", "-j", help="workers for generating missing splits"),
) -> None:
    """Train DeconvNet on a card's train split (validation NMSE on its val split every epoch).

    Writes OUT/best.npz (best-on-validation weights, loadable by both frameworks),
    OUT/last.* (resumable checkpoint), OUT/history.json and OUT/model_card.json.
    """
    import json
    import platform

    try:
        from deconvbench_baselines.deconvnet.config import DeconvNetConfig
        from deconvbench_baselines.deconvnet.train import FRAMEWORKS
        from deconvbench_baselines.deconvnet.train import train as run_training
    except ImportError as exc:
        raise DeconvbenchError(f"training needs the DeconvNet baselines and extra [{framework}]: {exc}") from None
    from .runinfo import hardware, package_versions
    from .store import open_dataset
    from .streaming import sequential_batches, shuffled_batches

    if framework not in FRAMEWORKS:
        raise DeconvbenchError(f"--framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise DeconvbenchError("--epochs, --batch-size and --lr must be positive")
    try:
        __import__(framework)
    except ImportError:
        raise DeconvbenchError(f"--framework {framework} needs extra [{framework}] (pip install 'deconvbench[{framework}]')") from None
    if threads is not None and framework == "torch":
        import torch

        torch.set_num_threads(max(1, threads))
    train_path = ensure_dataset(dataset, "train", workers=workers)
    val_path = ensure_dataset(dataset, "val", workers=workers)
    with open_dataset(train_path) as ds:
        geometry = {"pixel_scale_arcsec": ds.pixel_scale_arcsec, "target_fwhm_arcsec": ds.target_psf_fwhm_arcsec,
                    "stamp_size": ds.stamp_size, "dataset": dataset, "train_checksum": ds.checksum,
                    "n_train": ds.n if n_train is None else min(n_train, ds.n)}
    config = DeconvNetConfig() if width is None else DeconvNetConfig(width=width)
    n_epoch = geometry["n_train"]
    command = "deconvbench " + " ".join(sys.argv[1:])

    def train_batches(epoch: int):
        return shuffled_batches(train_path, batch_size, seed, epoch, n=n_train)

    def val_batches():
        return sequential_batches(val_path, 256, n=n_val)

    with progress_bar() as progress:
        task = progress.add_task(f"train {framework}", total=epochs, rate="")

        def report(record: dict) -> None:
            progress.update(task, completed=record["epoch"] + 1,
                            rate=f"val NMSE {record['val_nmse']:.4g}")
            err_console.print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4g}, "
                              f"val NMSE {record['val_nmse']:.4g}{' (best)' if record['best'] else ''}, "
                              f"{n_epoch / record['time_s']:.1f} stamps/s", highlight=False)

        try:
            summary = run_training(framework, config, train_batches, val_batches, epochs=epochs, lr=lr, seed=seed,
                                   out_dir=out, resume=resume, patience=patience, augment=augment,
                                   progress=report, metadata={**geometry, "command": command})
        except ValueError as exc:
            raise DeconvbenchError(str(exc)) from None
    validation = None
    if summary["best_path"]:
        # the best checkpoint through the same harness as every method: per-SNR metrics on val
        from .harness import run_method
        from .methods import load_method

        err_console.print("evaluating the best epoch on the validation split", highlight=False)
        val_result = run_method(load_method(f"deconvnet-{framework}", weights=summary["best_path"]), val_path,
                                out / "val_result.json", command=command)
        metrics = val_result["metrics"]
        validation = {
            "split": "val", "n": val_result["dataset"]["n"], "checksum": val_result["dataset"]["checksum"],
            "nmse_mean": metrics["overall"]["nmse"]["mean"], "nmse_median": metrics["overall"]["nmse"]["median"],
            "e_err_mean": metrics["overall"]["e_err"]["mean"],
            "by_snr": {label: {"nmse_mean": block["nmse"]["mean"], "nmse_median": block["nmse"]["median"],
                               "e_err_mean": block["e_err"]["mean"]}
                       for label, block in metrics["by_snr"].items()},
        }
    card = {
        "model": "DeconvNet", "framework_trained": framework, "config": config.to_dict(), "validation": validation,
        "command": command, "dataset": geometry, "epochs_completed": summary["epochs_completed"],
        "best_epoch": summary["best_epoch"], "best_val_nmse": summary["best_val_nmse"],
        "stopped_early": summary["stopped_early"],
        # summed over epochs, so that a run resumed over several sessions reports its whole time
        "wall_time_s": sum(record["time_s"] for record in summary["history"]),
        "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
        "hardware": hardware(), "versions": package_versions((framework,)),
        "history": summary["history"],
    }
    card_path = out / "model_card.json"
    tmp = card_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    tmp.replace(card_path)
    print(f"best epoch {summary['best_epoch']}: val NMSE {summary['best_val_nmse']}; weights {summary['best_path']}")


@app.command()
def demo(
    workers: int = typer.Option(2, "--workers", "-j"),
    out: Path = typer.Option(Path("out/demo"), "--out", help="directory for the result JSONs"),
) -> None:
    """The default job of `make run`: every available method on the smoke sets (tables).

    Generates the smoke datasets if needed, runs every available method on the smoke test
    split (comparison table) and a short metacal run on the smoke-metacal splits (bias table).
    """
    from .harness import run_method
    from .methods import MethodError, list_methods, load_method
    from .metacal.measure import MetacalConfig

    test_path = ensure_dataset("smoke", "test", workers=workers)
    # every available method once (an alias such as `deconvnet` = `deconvnet-jax` is skipped)
    infos = sorted(list_methods(), key=lambda info: (info.source, -len(info.name)))
    names, seen = [], set()
    for info in infos:
        if info.source in seen:
            continue
        seen.add(info.source)
        if info.available:
            names.append(info.name)
        else:
            err_console.print(f"skipping {info.name}: {escape(info.reason)}", highlight=False)
    methods = {}
    for name in sorted(names):
        try:
            methods[name] = load_method(name)
        except MethodError as exc:
            err_console.print(f"skipping {name}: {escape(str(exc))}", highlight=False)
    results = []
    for name, method in methods.items():
        with progress_bar() as progress:
            task = progress.add_task(f"{name} on smoke/test", total=64, rate="")
            results.append(run_method(method, test_path, out / f"{name}_smoke_test.json",
                                      progress=RateTracker(progress, task), command="deconvbench demo"))
    print("Deconvolution on smoke/test (64 stamps; metrics against truth, medians per SNR level)")
    print(comparison_table(results))
    print()
    mcal_results = []
    for split in ("noiseless", "snr50", "leakage"):
        path = ensure_dataset("smoke-metacal", split, workers=workers)
        for name, method in methods.items():
            with progress_bar() as progress:
                task = progress.add_task(f"{name} metacal on smoke-metacal/{split}", total=64, rate="")
                mcal_results.append(run_method(method, path, out / f"{name}_smoke-metacal_{split}.json",
                                               progress=RateTracker(progress, task), command="deconvbench demo",
                                               metacal=MetacalConfig()))
    print("Metacalibration on smoke-metacal (16 groups of 4 per split: σm is large at this size; "
          "the full test is `deconvbench run --method NAME --metacal`)")
    print(metacal_table(mcal_results))
    err_console.print(f"result files in {escape(str(out))}/", highlight=False)


# --- validate-render (logic in deconvbench.sim.validate) ---------------------------------
@app.command("validate-render")
def validate_render_command(
    card: str = typer.Argument(..., help="dataset card name or TOML path"),
    n: int = typer.Option(64, "--n", help="stamps to compare (the first n of the split)"),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="split (default: the card's first)"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="exit 1 if max|Δ|/peak or |flux ratio − 1| exceeds it"),
) -> None:
    """Compare the fast renderer with GalSim drawImage: max/rms |fast − reference|/peak and flux ratio."""
    from .cards import load_card
    from .sim.validate import validate_render

    dataset_card = load_card(card)
    split = split or next(iter(dataset_card.splits))
    dataset_card.split(split)
    if n <= 0:
        raise DeconvbenchError(f"--n must be positive, got {n}")
    rows = validate_render(dataset_card, split, n)
    print(tabulate([[r.by, r.name, r.image, r.n, f"{r.max_rel:.2e}", f"{r.rms_rel:.2e}",
                     f"{r.flux_ratio_min - 1:+.2e}", f"{r.flux_ratio_max - 1:+.2e}"] for r in rows],
                   headers=["by", "name", "image", "stamps", "max |Δ|/peak", "rms over stamps",
                            "min flux ratio − 1", "max flux ratio − 1"], tablefmt="simple"))
    failing = [r for r in rows if not r.passes(tolerance)]
    if failing:
        err_console.print(f"{len(failing)} row(s) above tolerance {tolerance:g}", highlight=False)
        raise typer.Exit(1)


def main() -> None:
    try:
        app(standalone_mode=False)
    except DeconvbenchError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # usage errors and the like; anything else is a bug: traceback
        if isinstance(exc, typer.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, typer.Abort):
            sys.exit(130)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage errors
            err_console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise

if __name__ == "__main__":
    main()
