"""Deconvolution speed and memory of every method, per batch of 256 stamps (ground geometry)."""

from __future__ import annotations

from ._data import benchmarked_method, generate_split, load_batch

METHODS = ["fft", "wiener", "richardson-lucy", "deconvnet-jax", "deconvnet-torch"]


class Deconvolve:
    params = ([256], METHODS)
    param_names = ["batch_size", "method"]
    timeout = 300

    def setup_cache(self):
        return generate_split("smoke", "test")

    def setup(self, path, batch_size, method):
        self.method = benchmarked_method(method)
        self.batch = load_batch(path, batch_size)
        self.method.deconvolve(self.batch)  # warm-up (JIT compilation, thread pools)

    def time_deconvolve(self, path, batch_size, method):
        self.method.deconvolve(self.batch)

    def peakmem_deconvolve(self, path, batch_size, method):
        self.method.deconvolve(self.batch)
