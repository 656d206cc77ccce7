"""``deconvbench train``: train a registered method that can be trained (DeconvNet)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import command_line, note, progress_task


@app.command()
def train(
    method: str = typer.Option("deconvnet-torch", "--method", "-m", help="registered method to train"),
    framework: str | None = typer.Option(
        None, "--framework", help="shorthand for --method deconvnet-FRAMEWORK (jax or torch)"
    ),
    dataset: str = typer.Option("ground-v3", "--dataset", help="card whose train/val splits are used"),
    epochs: int = typer.Option(20, "--epochs", help="total epochs (a resumed run continues up to this)"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate"),
    out: Path = typer.Option(Path("out/deconvnet"), "--out", help="directory for checkpoints and best.npz"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --out"),
    patience: int | None = typer.Option(5, "--patience", help="early stop after N epochs without improvement"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="random symmetries of the square"),
    seed: int = typer.Option(0, "--seed"),
    n_train: int | None = typer.Option(None, "--n-train", help="use (and generate) only the first N training stamps"),
    n_val: int | None = typer.Option(None, "--n-val", help="use (and generate) only the first N validation stamps"),
    width: int | None = typer.Option(None, "--width", help="override the model's width (channels)"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (auto: a CUDA GPU if one is seen)"),
    set_: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE model or loss option (JSON value), e.g. --set q_flat=2.5 --set band_weight=1"
    ),
    workers: int = typer.Option(2, "--workers", "-j", help="workers for generating missing splits"),
) -> None:
    """Train a model on a card's train split (validation NMSE on its val split every epoch).

    Writes OUT/best.npz (best-on-validation weights), OUT/last.* (resumable checkpoint),
    OUT/history.json and OUT/model_card.json.
    """
    import json

    from ..errors import UsageError
    from ..training import TrainingRequest, train_method

    if framework is not None:
        if framework not in ("jax", "torch"):
            raise UsageError(f"--framework must be one of jax, torch, got {framework!r}")
        method = f"deconvnet-{framework}"
    model_options = {} if width is None else {"width": width}
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            model_options[key] = json.loads(value)
        except json.JSONDecodeError:
            model_options[key] = value
    request = TrainingRequest(
        dataset=dataset, out=out, epochs=epochs, batch_size=batch_size, lr=lr, resume=resume, patience=patience,
        augment=augment, seed=seed, n_train=n_train, n_val=n_val, threads=threads, workers=workers, device=device,
        command=command_line(), model_options=model_options,
    )  # fmt: skip
    print(train_method(method, request, progress=progress_task, notify=note))
