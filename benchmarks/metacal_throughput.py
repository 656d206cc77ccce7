"""Metacal throughput table from one run: fft + metacal + wmom against galsim-mcal on the
same stamps, and the FFT floor (one forward and five inverse FFTs of a padded stamp).

    python -m benchmarks.metacal_throughput [N_BATCHED] [N_GALSIM]

(not an asv benchmark: asv only imports this module). Stamps: the first N of
metacal-offsets/snr50, rendered in memory by the generator.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(n_batched: int = 512, n_galsim: int = 32) -> None:
    from deconvbench import fourier as F
    from deconvbench.bias import render_groups
    from deconvbench.cards import load_card
    from deconvbench.metacal.measure import MetacalConfig, measure_batch
    from deconvbench.methods import Batch, load_method

    card = load_card("metacal-offsets")
    arrays = render_groups(card, "snr50", 0, n_batched // 4)
    batch = Batch(
        observed=arrays["observed"].astype(np.float64),
        psf=arrays["psf"].astype(np.float64),
        noise_sigma=arrays["noise_sigma"],
        pixel_scale_arcsec=card.stamp.pixel_scale_arcsec,
        target_fwhm_arcsec=card.stamp.target_psf_fwhm_arcsec,
    )
    small = Batch(
        observed=batch.observed[:n_galsim],
        psf=batch.psf[:n_galsim],
        noise_sigma=batch.noise_sigma[:n_galsim],
        pixel_scale_arcsec=batch.pixel_scale_arcsec,
        target_fwhm_arcsec=batch.target_fwhm_arcsec,
    )
    config = MetacalConfig()
    fft, galsim_mcal = load_method("fft"), load_method("galsim-mcal")

    def batched():
        measure_batch(fft, batch, fft.deconvolve(batch), config)

    def per_object():
        measure_batch(galsim_mcal, small, None, config)

    size = F.padded_size(card.stamp.size, config.pad_factor)
    padded = F.pad_centered(batch.observed, size)

    def floor():
        spec = F.rfft2(padded)
        for _ in range(5):
            F.irfft2(spec, size)

    batched()  # warm caches
    rows = []
    for name, fn, n in (
        ("fft + metacal + wmom", batched, n_batched),
        ("galsim-mcal", per_object, n_galsim),
        (f"FFT floor (1 rfft2 + 5 irfft2 of {size}²)", floor, n_batched),
    ):
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        rows.append((name, n / seconds, 1e3 * seconds / n))
    for name, rate, ms in rows:
        print(f"{name:45s} {rate:10.1f} gal/s {ms:9.3f} ms/gal")
    print(
        f"fft metacal / galsim-mcal: {rows[0][1] / rows[1][1]:.1f}x; fft metacal / FFT floor time: "
        f"{rows[0][2] / rows[2][2]:.1f}x"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
