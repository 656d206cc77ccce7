"""The metacal step: batched fft + wmom (Fourier route and image route) against the per-object
GalSim route."""

from __future__ import annotations

from dataclasses import replace

from deconvbench.metacal.measure import MetacalConfig, measure_batch

from ._data import benchmarked_method, generate_split, load_batch


class MetacalBatched:
    """Deconvolution + PSF fit + the five wmom measurements on 256 stamps: from one FFT per
    stamp (Fourier route, the default) and from five metacal images (image route)."""

    timeout = 300

    def setup_cache(self):
        return generate_split("smoke-metacal", "snr50")

    def setup(self, path):
        self.fft = benchmarked_method("fft")
        self.batch = load_batch(path, 256)
        self.config = MetacalConfig()

    def time_metacal_fft_256(self, path):
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), self.config)

    def time_metacal_fft_256_image_route(self, path):
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), replace(self.config, route="image"))

    def time_metacal_fft_256_regularised_centring(self, path):
        regularised = replace(self.config, centring="regularised")
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), regularised)

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


class MetacalOffsets:
    """fft + metacal on 64 noiseless stamps of metacal-offsets (galaxies up to ±1 px off
    centre): the bias must stay at the estimator's floor (track), and its time."""

    timeout = 300

    def setup_cache(self):
        return generate_split("metacal-offsets", "noiseless", n=64)

    def setup(self, path):
        self.fft = benchmarked_method("fft")
        self.path = path
        self.batch = load_batch(path, 64)
        self.config = MetacalConfig()

    def time_metacal_fft_offsets_64(self, path):
        measure_batch(self.fft, self.batch, self.fft.deconvolve(self.batch), self.config)

    def track_m_fft_offsets_noiseless(self, path):
        import tempfile
        from pathlib import Path

        from deconvbench.harness import run_method

        with tempfile.TemporaryDirectory() as folder:
            result = run_method(self.fft, path, Path(folder) / "r.json", batch_size=64, metacal=self.config)
        return result["metacal"]["m"]

    track_m_fft_offsets_noiseless.unit = "m"
