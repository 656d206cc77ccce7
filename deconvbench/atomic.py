"""Atomic file writes: the one helper every writer of the project uses.

A file is written to a temporary name in the target's folder, flushed to disk and
renamed onto the target with ``os.replace``, so a reader (or a killed run) never sees a
half-written file under the final name. A folder that cannot be written gives an
:class:`~deconvbench.errors.OutputError` naming the path (one line, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import OutputError


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, before any work, if ``path`` cannot be created as a file.

    Raises :class:`OutputError` when ``path`` is an existing directory or its folder
    cannot be created or written to."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: cannot create its folder ({exc.strerror or exc})") from None
    try:  # a real probe: permission bits say nothing for root, read-only mounts or ACLs
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".probe", dir=parent):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync it and
    rename it onto ``path``. On any error the temporary file is removed."""
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, and every NaN
    or ±inf as ``None`` (JSON has no non-finite numbers: a quantity that could not be
    measured is written as null, never as a made-up number)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (NaN/inf refused) with a trailing newline, atomically."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return write_text_atomic(path, text)
