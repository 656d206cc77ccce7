"""The metacal step: batched (fft + Fourier shear ops + wmom) against the per-object GalSim route."""

from __future__ import annotations

from deconvbench.metacal.measure import MetacalConfig, measure_batch

from ._data import benchmarked_method, generate_split, load_batch


class MetacalBatched:
    """Deconvolution + PSF fit + five metacal images + wmom on 256 stamps."""

    timeout = 300

    def setup_cache(self):
        return generate_split("smoke-metacal", "snr50")

    def setup(self, path):
        self.fft = benchmarked_method("fft")
        self.batch = load_batch(path, 256)
        self.config = MetacalConfig()

    def time_metacal_fft_256(self, path):
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), self.config)

    def peakmem_metacal_fft_256(self, path):
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), self.config)


class MetacalGalsim:
    """The per-object GalSim route (galsim-mcal) on 8 stamps: divide by 8 for a per-galaxy time."""

    timeout = 300

    def setup_cache(self):
        return generate_split("smoke-metacal", "snr50")

    def setup(self, path):
        self.method = benchmarked_method("galsim-mcal")
        self.batch = load_batch(path, 8)
        self.config = MetacalConfig()

    def time_metacal_galsim_8(self, path):
        measure_batch(self.method, self.batch, None, self.config)
