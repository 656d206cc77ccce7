"""Deconvolution speed and memory of every method, per batch of 256 stamps (ground geometry)."""

from __future__ import annotations

from deconvbench.methods import MethodError, load_method

from ._data import generate_split, load_batch

METHODS = ["fft", "wiener", "richardson-lucy", "deconvnet-jax", "deconvnet-torch"]


class Deconvolve:
    params = ([256], METHODS)
    param_names = ["batch_size", "method"]
    timeout = 300

    def setup_cache(self):
        return generate_split("smoke", "test")

    def setup(self, path, batch_size, method):
        try:
            self.method = load_method(method)
        except MethodError as exc:  # e.g. an extra that is not installed
            raise NotImplementedError(str(exc)) from exc
        self.batch = load_batch(path, batch_size)
        self.method.deconvolve(self.batch)  # warm-up (JIT compilation, thread pools)

    def time_deconvolve(self, path, batch_size, method):
        self.method.deconvolve(self.batch)

    def peakmem_deconvolve(self, path, batch_size, method):
        self.method.deconvolve(self.batch)
