"""The harness: plugins through entry points, failure reporting, resume, result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deconvbench.harness import checkpoint_path, run_method
from deconvbench.methods import list_methods, load_method, register_method, unregister_method

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A user's own package: nothing in deconvbench knows about it."""
    import numpy as np


    class ObservedAsIs:
        """returns the observed image unchanged"""
        description = "identity: the observed image as the estimate"
        requires = ()

        def __init__(self, scale: float = 1.0):
            self.name, self.device, self.scale = "identity", "cpu", scale

        def deconvolve(self, batch):
            return np.asarray(batch.observed, dtype=np.float64) * self.scale

        def params(self):
            return {"scale": self.scale}


    class HalfNaN(ObservedAsIs):
        description = "returns NaN for every other stamp"

        def deconvolve(self, batch):
            out = super().deconvolve(batch)
            out[::2] = np.nan
            return out


    class NeedsMissingPackage(ObservedAsIs):
        description = "needs a package that is not installed"
        requires = ("no_such_package_xyz",)
        extra = "xyz"
    '''
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "my_deconv_plugin.py").write_text(PLUGIN_SOURCE)
    dist = root / "my_deconv_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-deconv-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[deconvbench.methods]\n"
        "identity = my_deconv_plugin:ObservedAsIs\n"
        "half-nan = my_deconv_plugin:HalfNaN\n"
        "needs-xyz = my_deconv_plugin:NeedsMissingPackage\n"
    )
    return root


def _cli(*args, plugin_path=None, cwd=None):
    env = dict(os.environ)
    if plugin_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "deconvbench.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_entry_point_plugin_runs_through_cli(plugin_path, smoke_test_file, tmp_path):
    listing = _cli("list-methods", plugin_path=plugin_path)
    assert listing.returncode == 0, listing.stderr
    assert "identity" in listing.stdout and "fft" in listing.stdout
    assert "needs extra [xyz]" in listing.stdout
    out = tmp_path / "identity.json"
    result = _cli(
        "run",
        "--method",
        "identity",
        "--data",
        str(smoke_test_file),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--option",
        "identity.scale=1.0",
        plugin_path=plugin_path,
    )
    assert result.returncode == 0, result.stderr
    assert "identity" in result.stdout and "noiseless" in result.stdout
    data = json.loads(out.read_text())
    assert data["method"]["name"] == "identity" and data["method"]["params"] == {"scale": 1.0}
    assert data["dataset"]["card"] == "smoke" and data["dataset"]["n"] == 64
    assert data["failures"]["stamps_failed"] == 0
    assert data["metrics"]["overall"]["count"] == 64
    for key in ("versions", "hardware", "throughput", "peak_memory_mb", "timestamp", "schema_version"):
        assert key in data
    unavailable = _cli(
        "run",
        "--method",
        "needs-xyz",
        "--data",
        str(smoke_test_file),
        "--out",
        str(tmp_path / "x.json"),
        plugin_path=plugin_path,
    )
    assert unavailable.returncode == 2 and "needs extra [xyz]" in unavailable.stderr
    assert "Traceback" not in unavailable.stderr


def test_nan_method_is_reported_and_strict_fails(plugin_path, smoke_test_file, tmp_path):
    out = tmp_path / "half.json"
    lenient = _cli("run", "-m", "half-nan", "--data", str(smoke_test_file), "--out", str(out), plugin_path=plugin_path)
    assert lenient.returncode == 0, lenient.stderr
    data = json.loads(out.read_text())
    assert data["failures"]["stamps_failed"] == 32 and data["failures"]["nonfinite"] == 32
    assert data["metrics"]["overall"]["count"] == 32  # the NaN stamps are not averaged in
    assert "non-finite" in lenient.stderr
    strict = _cli(
        "run", "-m", "half-nan", "--data", str(smoke_test_file), "--out", str(out), "--strict", plugin_path=plugin_path
    )
    assert strict.returncode != 0 and "--strict" in strict.stderr and "Traceback" not in strict.stderr


class _Raises:
    name, device = "raises", "cpu"

    def __init__(self):
        self.calls = 0

    def deconvolve(self, batch):
        self.calls += 1
        if self.calls == 2:
            raise ValueError("boom")
        return np.asarray(batch.observed, dtype=float)

    def params(self):
        return {}


class _WrongShape(_Raises):
    name = "wrong-shape"

    def deconvolve(self, batch):
        return np.zeros((len(batch.observed), 3, 3))


def test_raising_and_wrong_shape_methods_are_recorded(smoke_test_file, tmp_path):
    result = run_method(_Raises(), smoke_test_file, tmp_path / "r.json", batch_size=16)
    failures = result["failures"]
    assert failures["raised"] == 16 and failures["stamps_failed"] == 16
    assert "ValueError: boom" in failures["first_error"]
    assert result["metrics"]["overall"]["count"] == 48
    shape = run_method(_WrongShape(), smoke_test_file, tmp_path / "w.json", batch_size=16)
    assert shape["failures"]["wrong_shape"] == 64 and "wrong output shape" in shape["failures"]["first_error"]
    assert not checkpoint_path(tmp_path / "r.json").exists()


class _Interrupt(Exception):
    pass


class _DiesAfter:
    """Identity method that kills the run (like Ctrl-C) at batch ``die_at``."""

    def __init__(self, die_at=None):
        self.name, self.device, self.die_at, self.calls = "identity-test", "cpu", die_at, 0

    def deconvolve(self, batch):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt
        return np.asarray(batch.observed, dtype=float) * 0.5

    def params(self):
        return {"k": 1}


def test_killed_run_resumes_from_last_batch(smoke_test_file, tmp_path):
    out = tmp_path / "resume.json"
    outputs = tmp_path / "est.h5"
    with pytest.raises(KeyboardInterrupt):
        run_method(_DiesAfter(die_at=3), smoke_test_file, out, batch_size=16, save_outputs=outputs)
    assert not out.exists() and checkpoint_path(out).exists() and not outputs.exists()
    method = _DiesAfter()
    resumed = run_method(method, smoke_test_file, out, batch_size=16, save_outputs=outputs, resume=True)
    assert method.calls == 2  # batches 3 and 4 only
    straight = run_method(_DiesAfter(), smoke_test_file, tmp_path / "straight.json", batch_size=16)
    assert resumed["metrics"]["overall"]["nmse"] == straight["metrics"]["overall"]["nmse"]
    import h5py

    with h5py.File(outputs) as f:
        est = f["estimate"][:]
    from deconvbench.store import open_dataset

    with open_dataset(smoke_test_file) as ds:
        np.testing.assert_allclose(est, ds.read("observed") * 0.5, rtol=1e-6)


def test_registry_hook_and_unknown_method():
    register_method("test-hook", lambda: _Raises())
    try:
        assert any(m.name == "test-hook" for m in list_methods())
        assert load_method("test-hook").name == "raises"
    finally:
        unregister_method("test-hook")
    from deconvbench.errors import MethodError

    with pytest.raises(MethodError, match="unknown method"):
        load_method("no-such-method")
