"""Provenance of a run: versions, git commit, hardware, timestamps, peak memory."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from . import __version__


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"deconvbench": __version__, "python": platform.python_version()}
    for name in ("numpy", "galsim", "h5py", "scipy", *extra):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """Commit of the source checkout (``+dirty`` if modified), None outside a checkout."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str = "cpu") -> dict:
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "machine": platform.machine(),
        "system": platform.system(),
        "device": device,
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def process_peak_rss_mb() -> float:
    """Peak resident memory of this process over its lifetime so far, MB (``ru_maxrss``;
    kilobytes on Linux, bytes on macOS). A worker reports it with its results, so a run can
    state the memory of its workers, not only of the process that collects them."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """Samples this process's resident memory in a background thread.

    ``peak_mb`` is the largest RSS seen while active; ``increase_mb`` is that peak minus
    the RSS when sampling started (what the measured code added)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.baseline = self.peak = self._process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self):
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return False

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20
