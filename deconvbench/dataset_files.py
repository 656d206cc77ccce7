"""Dataset files behind card names: resolve, generate when missing, verify, publish checksums.

A split of card ``NAME`` version ``V`` lives at ``data_dir()/NAME-vV/SPLIT.h5`` (see
:mod:`deconvbench.paths`). :func:`ensure_dataset` returns that file, generating it when
it is missing, corrupt or made from another card; :func:`record_checksums` publishes the
verified content checksum of generated files in ``datasets/checksums.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from .atomic import write_json_atomic
from .cards import DatasetCard, cards_dir, expected_checksum, expected_checksums, list_cards, load_card
from .errors import CardError, DataError, DeconvbenchError, UsageError
from .paths import dataset_path
from .store import open_dataset, verify

# progress_factory(description, total) -> context manager yielding a callable(count)
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _no_progress(description: str, total: int):
    yield lambda count: None


def load_run_card(name_or_path: str) -> DatasetCard:
    """Load a card and refuse a card file that reuses a published card's name and
    version with different content (it would silently reuse the published data files)."""
    card = load_card(name_or_path)
    if card.name in list_cards() and Path(name_or_path).suffix == ".toml":
        published = load_card(card.name)
        if published.version == card.version and published.card_hash() != card.card_hash():
            raise CardError(
                f"card {name_or_path} has the name and version of the published card {card.name} "
                f"v{card.version} but different content; give it a new name or version"
            )
    return card


def check_n(card: DatasetCard, split: str, n: int | None) -> int:
    """The number of stamps to use: ``n`` (must be 1..split size) or the whole split."""
    total = card.split(split).n
    if n is None:
        return total
    if not 1 <= n <= total:
        raise UsageError(f"--n must be between 1 and {total} (the size of {card.name}/{split}), got {n}")
    return n


def ensure_dataset(
    card_name: str,
    split: str,
    n: int | None = None,
    workers: int = 1,
    progress: ProgressFactory = _no_progress,
    notify: Callable[[str], None] = print,
):
    """Path of a generated split, generating it if missing, corrupt or from another card.

    Returns ``(path, report)``: ``report`` is the :class:`GenerationReport` when the file
    was generated now, else None."""
    from .sim.generate import generate

    card = load_run_card(card_name)
    check_n(card, split, n)
    path = dataset_path(card, split, n)
    if path.exists():
        try:
            verify(path)
            with open_dataset(path) as dataset:
                made_from = dataset.attrs.get("card_hash")
            if made_from == card.card_hash():
                return path, None
            notify(f"regenerating: {path} was made from another version of card {card.name}")
        except DataError as exc:
            notify(f"regenerating: {exc}")
    total = n or card.split(split).n
    with progress(f"generate {card.name}/{split}", total) as advance:
        report = generate(card, split, path, n=n, workers=workers, progress=advance)
    return path, report


def resolve_run_files(
    data: Path | None,
    dataset: str | None,
    split: str | None,
    n: int | None,
    workers: int,
    metacal: bool,
    progress: ProgressFactory = _no_progress,
    notify: Callable[[str], None] = print,
) -> list[tuple[Path, object]]:
    """The dataset files of a run: one file, one split, or (metacal) every split of a card.

    Returns ``[(path, generation report or None)]``."""
    if data is not None:
        if dataset or n:
            raise UsageError("give either --data FILE or --dataset CARD --split SPLIT [--n N], not both")
        return [(data, None)]
    if not metacal:
        if not dataset or not split:
            raise UsageError("say what to run on: --data FILE, or --dataset CARD --split SPLIT")
        return [ensure_dataset(dataset, split, n=n, workers=workers, progress=progress, notify=notify)]
    card = load_run_card(dataset or "metacal-v3")
    if card.kind != "metacal":
        raise UsageError(f"--metacal needs a constant-shear card (kind = metacal), not {card.name}")
    splits = [split] if split else list(card.splits)
    return [
        ensure_dataset(dataset or card.name, name, n=n, workers=workers, progress=progress, notify=notify)
        for name in splits
    ]


def published_checksum_of(path: Path) -> tuple[str, str | None]:
    """(verified content checksum of ``path``, the card's published checksum or None)."""
    checksum = verify(path)
    with open_dataset(path) as dataset:
        attrs = dataset.attrs
    try:
        card = load_card(attrs["card_name"])
        expected = expected_checksum(card, attrs["split"], int(attrs["n"]))
    except DeconvbenchError:
        expected = None
    if expected is not None and expected != checksum:
        raise DataError(f"{path}: content differs from the published checksum of {attrs['card_name']}/{attrs['split']}")
    return checksum, expected


def _card_entry(table: dict, card: DatasetCard) -> dict:
    """``card``'s entry of the checksums table; a new version's entry starts empty."""
    entry = table.setdefault(card.name, {"version": card.version, "splits": {}})
    if entry.get("version") != card.version:
        entry.clear()
        entry.update({"version": card.version, "splits": {}})
    return entry


def record_stream_checksum(card: DatasetCard, split: str, n: int, digest: str) -> str:
    """Publish the stamps digest of the first ``n`` stamps of a streamed split (what ``bias``
    records in ``dataset.checksum``) in ``datasets/checksums.json``, under ``SPLIT:stream``
    (the whole split) or ``SPLIT:stream@n``, the key ``submit`` checks a bias result against.
    Returns the line ``card vV key: digest``."""
    table = expected_checksums()
    key = f"{split}:stream" if n == card.split(split).n else f"{split}:stream@{n}"
    _card_entry(table, card)["splits"][key] = {"n": int(n), "checksum": digest}
    write_json_atomic(cards_dir() / "checksums.json", table, indent=2, sort_keys=True)
    return f"{card.name} v{card.version} {key}: {digest}"


def record_checksums(files: list[Path]) -> list[str]:
    """Publish the verified checksum of generated split(s) in ``datasets/checksums.json``.

    A full split is keyed by its name, a prefix of n stamps by ``split@n``. Returns one
    line per file (``card vV key: checksum``)."""
    table = expected_checksums()
    lines = []
    for path in files:
        checksum = verify(path)
        with open_dataset(path) as dataset:
            attrs = dataset.attrs
        card = load_card(attrs["card_name"])
        if attrs["card_hash"] != card.card_hash():
            raise DataError(f"{path} was generated from a different version of card {card.name}")
        key = attrs["split"] if int(attrs["n"]) == card.split(attrs["split"]).n else f"{attrs['split']}@{attrs['n']}"
        _card_entry(table, card)["splits"][key] = {"n": int(attrs["n"]), "checksum": checksum}
        lines.append(f"{card.name} v{card.version} {key}: {checksum}")
    write_json_atomic(cards_dir() / "checksums.json", table, indent=2, sort_keys=True)
    return lines
