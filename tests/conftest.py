"""Shared fixtures: small generated datasets (session-scoped, generated once)."""

from __future__ import annotations

import copy
import tomllib

import pytest

from deconvbench.cards import DatasetCard, cards_dir
from deconvbench.sim.generate import generate


def card_dict(name: str) -> dict:
    return tomllib.loads((cards_dir() / f"{name}.toml").read_text())


def make_card(base: str = "smoke", **updates) -> DatasetCard:
    """A card derived from ``base`` with nested updates, e.g. make_card(stamp={"size": 64})."""
    raw = copy.deepcopy(card_dict(base))
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return DatasetCard.model_validate(raw)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and much faster on a busy machine)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _smoke_split(data_root, split: str):
    """A smoke split at its standard place under ``data_root`` (usable as DECONVBENCH_DATA)."""
    from deconvbench.cards import load_card
    from deconvbench.paths import data_dir, dataset_path

    card = load_card("smoke")
    path = data_root / dataset_path(card, split).relative_to(data_dir())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(card, split, path)
    return path


@pytest.fixture(scope="session")
def smoke_test_file(data_root):
    return _smoke_split(data_root, "test")


@pytest.fixture(scope="session")
def smoke_train_data(data_root):
    """DECONVBENCH_DATA folder holding the smoke train and val splits."""
    _smoke_split(data_root, "train")
    _smoke_split(data_root, "val")
    return data_root


@pytest.fixture(scope="session")
def smoke_metacal_file(data_root):
    from deconvbench.cards import load_card

    path = data_root / "smoke-metacal-noiseless.h5"
    generate(load_card("smoke-metacal"), "noiseless", path)
    return path
