"""Where datasets and results live by default.

Datasets: ``$DECONVBENCH_DATA`` if set, else the user data directory
(``platformdirs.user_data_dir("deconvbench")``), as ``CARD-vVERSION/SPLIT.h5``
(``SPLIT-nN.h5`` for a prefix of N stamps).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .cards import DatasetCard


def data_dir() -> Path:
    env = os.environ.get("DECONVBENCH_DATA")
    return Path(env) if env else Path(platformdirs.user_data_dir("deconvbench"))


def dataset_path(card: DatasetCard, split: str, n: int | None = None) -> Path:
    full = card.split(split).n
    name = f"{split}.h5" if n is None or n == full else f"{split}-n{n}.h5"
    return data_dir() / f"{card.name}-v{card.version}" / name
