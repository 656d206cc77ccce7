"""Science figures that must not regress (tracked values, not timings)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from deconvbench.harness import run_method
from deconvbench.metacal.measure import MetacalConfig
from deconvbench.methods import MethodError, load_method

from ._data import generate_split


class FFTMetacalBias:
    """fft + batched metacal on the 64-stamp noiseless smoke-metacal split (constant shear 0.01).
    Expected: m ≈ 9e-5 (the wmom estimator's non-linearity 0.9·g²), |m| must stay < 1e-3."""

    timeout = 300
    unit = "dimensionless"

    def setup_cache(self):
        path = generate_split("smoke-metacal", "noiseless")
        out = Path(tempfile.mkdtemp(prefix="deconvbench-asv-")) / "fft.json"
        return run_method(load_method("fft"), path, out, metacal=MetacalConfig())["metacal"]

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
        try:
            self.method = load_method(method)
        except MethodError as exc:
            raise NotImplementedError(str(exc)) from exc

    def track_mean_nmse(self, path, method):
        out = Path(tempfile.mkdtemp(prefix="deconvbench-asv-")) / "r.json"
        return run_method(self.method, path, out)["metrics"]["overall"]["nmse"]["mean"]
