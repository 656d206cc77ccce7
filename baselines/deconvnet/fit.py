"""``deconvbench train`` for DeconvNet: data, training driver, validation, model card.

Reached through the method registry (``DeconvNetJax.train`` / ``DeconvNetTorch.train``):
resolves (and, if missing, generates only the needed stamps of) the card's train and val
splits, streams them through :mod:`deconvbench.streaming`, runs :func:`.train.train`, then
evaluates the best epoch through the same harness as every method and writes
``OUT/model_card.json`` atomically.
"""

from __future__ import annotations

from collections.abc import Callable

from deconvbench.atomic import json_safe, write_json_atomic
from deconvbench.dataset_files import ensure_dataset
from deconvbench.errors import UsageError
from deconvbench.training import TrainingRequest


def _validation_block(val_result: dict) -> dict:
    metrics = val_result["metrics"]
    return {
        "split": "val",
        "n": val_result["dataset"]["n"],
        "checksum": val_result["dataset"]["checksum"],
        "nmse_mean": metrics["overall"]["nmse"]["mean"],
        "nmse_median": metrics["overall"]["nmse"]["median"],
        "e_err_mean": metrics["overall"]["e_err"]["mean"],
        "by_snr": {
            label: {
                "nmse_mean": block["nmse"]["mean"],
                "nmse_median": block["nmse"]["median"],
                "e_err_mean": block["e_err"]["mean"],
            }
            for label, block in metrics["by_snr"].items()
        },
    }


def _training_data(request: TrainingRequest, progress: Callable, notify: Callable[[str], None]):
    """The train and val files of ``request`` (generated if missing) and the geometry of the
    training data recorded in the weights' metadata (pixel scale and target FWHM in arcsec,
    stamp size, card, training checksum and size)."""
    from deconvbench.store import open_dataset

    train_path, _ = ensure_dataset(
        request.dataset, "train", n=request.n_train, workers=request.workers, progress=progress, notify=notify
    )
    val_path, _ = ensure_dataset(
        request.dataset, "val", n=request.n_val, workers=request.workers, progress=progress, notify=notify
    )
    with open_dataset(train_path) as ds:
        geometry = {
            "pixel_scale_arcsec": ds.pixel_scale_arcsec,
            "target_fwhm_arcsec": ds.target_psf_fwhm_arcsec,
            "stamp_size": ds.stamp_size,
            "dataset": request.dataset,
            "train_checksum": ds.checksum,
            "n_train": ds.n,
        }
    return train_path, val_path, geometry


def train_deconvnet(framework: str, request: TrainingRequest, progress: Callable, notify: Callable[[str], None]) -> str:
    """Train DeconvNet in ``framework`` ("jax" or "torch") as ``request`` says.

    Writes OUT/best.npz (best-on-validation weights, loadable by both frameworks),
    OUT/last.* (resumable checkpoint), OUT/history.json, OUT/val_result.json and
    OUT/model_card.json. Returns a one-line summary."""
    from deconvbench.harness import run_method
    from deconvbench.methods import load_method
    from deconvbench.runinfo import hardware, package_versions
    from deconvbench.streaming import sequential_batches, shuffled_batches

    from .train import train as run_training

    try:
        __import__(framework)
    except ImportError:
        raise UsageError(
            f"training in {framework} needs extra [{framework}] (pip install 'deconvbench[{framework}]')"
        ) from None
    if request.threads is not None and framework == "torch":
        import torch

        torch.set_num_threads(max(1, request.threads))
    from .device import framework_device

    framework_device(framework, request.device)  # refuse a missing GPU before generating data
    config, objective = _split_deconvnet_options(request.model_options)
    try:
        objective.check_framework(framework)  # before any data is generated
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if objective.init_weights is not None:
        from pathlib import Path

        if not Path(objective.init_weights).is_file():
            raise UsageError(f"init_weights: no such file {objective.init_weights}")
    train_path, val_path, geometry = _training_data(request, progress, notify)
    n_epoch = geometry["n_train"]

    def train_batches(epoch: int):
        return shuffled_batches(train_path, request.batch_size, request.seed, epoch)

    def val_batches():
        return sequential_batches(val_path, 256)

    with progress(f"train {framework} (epochs)", request.epochs) as advance:

        def report(record: dict) -> None:
            advance(1)
            notify(
                f"epoch {record['epoch']}: train loss {record['train_loss']:.4g}, "
                f"val NMSE {record['val_nmse']:.4g}{' (best)' if record['best'] else ''}, "
                f"{n_epoch / record['time_s']:.1f} stamps/s"
            )

        try:
            summary = run_training(
                framework,
                config,
                train_batches,
                val_batches,
                epochs=request.epochs,
                lr=request.lr,
                seed=request.seed,
                out_dir=request.out,
                resume=request.resume,
                patience=request.patience,
                augment=request.augment,
                progress=report,
                metadata={**geometry, "command": request.command},
                device=request.device,
                objective=objective,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    validation = None
    if summary["best_path"]:
        notify("evaluating the best epoch on the validation split")
        val_result = run_method(
            load_method(f"deconvnet-{framework}", weights=summary["best_path"], device=request.device),
            val_path,
            request.out / "val_result.json",
            command=request.command,
        )
        validation = _validation_block(val_result)
    card = {
        "model": "DeconvNet",
        "framework_trained": framework,
        "config": config.to_dict(),
        "objective": objective.to_dict(),
        "validation": validation,
        "command": request.command,
        "dataset": geometry,
        "epochs_completed": summary["epochs_completed"],
        "best_epoch": summary["best_epoch"],
        "best_val_nmse": summary["best_val_nmse"],
        "stopped_early": summary["stopped_early"],
        # summed over epochs, so that a run resumed over several sessions reports its whole time
        "wall_time_s": sum(record["time_s"] for record in summary["history"]),
        "batch_size": request.batch_size,
        "lr": request.lr,
        "seed": request.seed,
        "augment": request.augment,
        "hardware": hardware(),
        "versions": package_versions((framework,)),
        "history": summary["history"],
    }
    write_json_atomic(request.out / "model_card.json", json_safe(card), indent=1, sort_keys=True)
    return f"best epoch {summary['best_epoch']}: val NMSE {summary['best_val_nmse']}; weights {summary['best_path']}"


def _split_options(options: dict, model: str, config_cls, loss_label: str, loss_cls):
    """``model_options`` → (config_cls instance, loss_cls instance), each taking its own keys;
    one UsageError line for unknown keys or bad values."""
    config_keys, loss_keys = set(config_cls.__dataclass_fields__), set(loss_cls.__dataclass_fields__)
    unknown = set(options) - config_keys - loss_keys
    if unknown:
        raise UsageError(
            f"unknown {model} option(s): {', '.join(sorted(unknown))} "
            f"(config: {', '.join(sorted(config_keys))}; {loss_label}: {', '.join(sorted(loss_keys))})"
        )
    try:
        config = config_cls(**{k: v for k, v in options.items() if k in config_keys})
        loss = loss_cls(**{k: v for k, v in options.items() if k in loss_keys})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad {model} options: {exc}") from None
    return config, loss


def _split_deconvnet_options(options: dict):
    """``model_options`` → (DeconvNetConfig, UNetObjective)."""
    from .config import DeconvNetConfig
    from .objectives import UNetObjective

    return _split_options(options, "DeconvNet", DeconvNetConfig, "objective", UNetObjective)


def _split_filter_options(options: dict):
    """``model_options`` → (FilterConfig, LossWeights)."""
    from .filter_model import FilterConfig
    from .losses import LossWeights

    return _split_options(options, "DeconvFilter", FilterConfig, "loss", LossWeights)


def train_filter_request(request: TrainingRequest, progress: Callable, notify: Callable[[str], None]) -> str:
    """Train DeconvFilter as ``request`` says (``deconvbench train --method deconvfilter``).

    Writes OUT/best.npz, OUT/history.json, OUT/val_result.json and OUT/model_card.json
    (validation metrics per SNR level from the harness, as for DeconvNet)."""
    from deconvbench.harness import run_method
    from deconvbench.methods import load_method
    from deconvbench.runinfo import hardware, package_versions
    from deconvbench.streaming import TRAINING_KEYS, sequential_batches, shuffled_batches

    from .device import device_label, torch_device
    from .filter_train import train_filter

    try:
        import torch
    except ImportError:
        raise UsageError("training DeconvFilter needs extra [torch] (pip install 'deconvbench[torch]')") from None
    if request.threads is not None:
        torch.set_num_threads(max(1, request.threads))
    config, weights = _split_filter_options(request.model_options)
    device = torch_device(request.device)
    train_path, val_path, geometry = _training_data(request, progress, notify)
    keys = (*TRAINING_KEYS, "noiseless")

    def train_batches(epoch: int):
        return shuffled_batches(train_path, request.batch_size, request.seed, epoch, keys=keys)

    def val_batches():
        return sequential_batches(val_path, 256, keys=keys)

    with progress("train deconvfilter (epochs)", request.epochs) as advance:

        def report(record: dict) -> None:
            advance(1)
            notify(
                f"epoch {record['epoch']}: train loss {record['train_loss']:.4g}, val NMSE {record['val_nmse']:.4g}, "
                f"val band {record['val_band']:.3g}{' (best)' if record['best'] else ''}, "
                f"{geometry['n_train'] / record['time_s']:.1f} stamps/s"
            )

        summary = train_filter(
            config,
            weights,
            train_batches,
            val_batches,
            epochs=request.epochs,
            pixel_scale=geometry["pixel_scale_arcsec"],
            target_fwhm=geometry["target_fwhm_arcsec"],
            lr=request.lr,
            seed=request.seed,
            out_dir=request.out,
            patience=request.patience,
            device=device,
            progress=report,
            metadata={**geometry, "command": request.command},
        )
    validation = None
    if summary["best_path"]:
        notify("evaluating the best epoch on the validation split")
        val_result = run_method(
            load_method("deconvfilter", weights=summary["best_path"], device=request.device),
            val_path,
            request.out / "val_result.json",
            command=request.command,
        )
        validation = _validation_block(val_result)
    card = {
        "model": "DeconvFilter",
        "framework_trained": "torch",
        "device": device_label(device),
        "config": config.to_dict(),
        "loss": vars(weights),
        "validation": validation,
        "command": request.command,
        "dataset": geometry,
        "epochs_completed": summary["epochs_completed"],
        "best_epoch": summary["best_epoch"],
        "best_val_objective": summary["best_val"],
        "stopped_early": summary["stopped_early"],
        "wall_time_s": sum(record["time_s"] for record in summary["history"]),
        "batch_size": request.batch_size,
        "lr": request.lr,
        "seed": request.seed,
        "hardware": hardware(),
        "versions": package_versions(("torch",)),
        "history": summary["history"],
    }
    write_json_atomic(request.out / "model_card.json", json_safe(card), indent=1, sort_keys=True)
    return f"best epoch {summary['best_epoch']}: val objective {summary['best_val']}; weights {summary['best_path']}"
