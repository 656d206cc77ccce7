"""Science figures that must not regress (tracked values, not timings)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from deconvbench.harness import run_method
from deconvbench.metacal.measure import MetacalConfig

from ._data import benchmarked_method, generate_split


class FFTMetacalBias:
    """fft + batched metacal on the 64-stamp noiseless smoke-metacal split (constant shear 0.01).
    Expected: m ≈ 9e-5 (the wmom estimator's non-linearity 0.9·g²), |m| must stay < 1e-3."""

    timeout = 300
    unit = "dimensionless"

    def setup_cache(self):
        path = generate_split("smoke-metacal", "noiseless")
        out = Path(path).parent / "fft.json"
        return run_method(benchmarked_method("fft"), path, out, metacal=MetacalConfig())["metacal"]

    def track_fft_noiseless_m(self, block):
        return block["m"]

    def track_fft_noiseless_c(self, block):
        return block["c"]


class SmokeNMSE:
    """Mean NMSE on the 64-stamp smoke test split (shipped DeconvNet weights vs classical)."""

    params = ["deconvnet-jax", "deconvnet-torch", "wiener", "fft"]
    param_names = ["method"]
    timeout = 300
    unit = "NMSE"

    def setup_cache(self):
        return generate_split("smoke", "test")

    def setup(self, path, method):
        self.method = benchmarked_method(method)

    def track_mean_nmse(self, path, method):
        with tempfile.TemporaryDirectory(prefix="deconvbench-asv-") as folder:
            return run_method(self.method, path, Path(folder) / "r.json")["metrics"]["overall"]["nmse"]["mean"]
