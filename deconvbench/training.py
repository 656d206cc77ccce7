"""Training a method through the registry: the request a ``train`` command hands over.

The harness trains no model itself. A registered method class that can be trained has a
``train(request, progress, notify)`` class method; :func:`train_method` finds it through
the entry-point registry, so the command line names no method's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MethodError, UsageError
from .methods import get_factory


@dataclass(frozen=True)
class TrainingRequest:
    """What to train on and how; sizes in stamps, ``lr`` the Adam learning rate.

    ``n_train``/``n_val`` limit the splits to their first N stamps (and only those are
    generated when the files are missing). ``model_options`` go to the model's config
    (e.g. ``{"width": 16}``); ``device`` is where the model trains (``auto``, ``cpu``,
    ``cuda``: the method resolves it and refuses ``cuda`` without a GPU)."""

    dataset: str
    out: Path
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    resume: bool = False
    patience: int | None = 5
    augment: bool = True
    seed: int = 0
    n_train: int | None = None
    n_val: int | None = None
    threads: int | None = None
    device: str = "auto"
    workers: int = 2
    command: str = ""
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("--epochs, --batch-size and --lr must be positive")
        for name in ("n_train", "n_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def train_method(name: str, request: TrainingRequest, progress: Callable, notify: Callable[[str], None]) -> str:
    """Train the registered method ``name``; returns its one-line summary.

    ``progress(description, total)`` is a context manager yielding an advance callable
    (see :mod:`deconvbench.dataset_files`); ``notify(line)`` prints a status line."""
    factory = get_factory(name)
    trainer = getattr(factory, "train", None)
    if trainer is None:
        raise MethodError(f"method {name!r} cannot be trained (it has no train())")
    return trainer(request, progress=progress, notify=notify)
