"""Metacal throughput table from one run: fft + metacal + wmom (Fourier route, image route,
JAX) against galsim-mcal on the same stamps, the FFT floors, and where the time goes.

    python -m benchmarks.metacal_throughput [N_BATCHED] [N_GALSIM] [REPEATS]

(not an asv benchmark: asv only imports this module). Stamps: the first N of
metacal-offsets/snr50, rendered in memory by the generator. Every row runs the harness's
metacal flow on the same stamps (deconvolve, PSF fit, the five measurements, response);
each timing is the best of REPEATS runs (default 3), back to back in one process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(n_batched: int = 512, n_galsim: int = 32, repeats: int = 3) -> None:
    from deconvbench import fourier as F
    from deconvbench.bias import render_groups
    from deconvbench.cards import load_card
    from deconvbench.metacal.fourier_wmom import galaxy_spectrum, metacal_wmom
    from deconvbench.metacal.measure import MetacalConfig, measure_batch
    from deconvbench.metacal.psf_fit import reconv_fwhm
    from deconvbench.methods import Batch, load_method

    card = load_card("metacal-offsets")
    arrays = render_groups(card, "snr50", 0, n_batched // 4)
    batch = Batch.from_rendered(arrays, card)
    small = Batch(
        observed=batch.observed[:n_galsim],
        psf=batch.psf[:n_galsim],
        noise_sigma=batch.noise_sigma[:n_galsim],
        pixel_scale_arcsec=batch.pixel_scale_arcsec,
        target_fwhm_arcsec=batch.target_fwhm_arcsec,
    )
    config = MetacalConfig()
    image_config = replace(config, route="image")
    fft, galsim_mcal = load_method("fft"), load_method("galsim-mcal")
    pixel, target, n = batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, card.stamp.size

    runs = [
        (
            "fft + metacal + wmom, Fourier route",
            lambda: measure_batch(fft, batch, fft.deconvolve(batch), config),
            n_batched,
        ),
        (
            "fft + metacal + wmom, image route",
            lambda: measure_batch(fft, batch, fft.deconvolve(batch), image_config),
            n_batched,
        ),
    ]
    try:
        import jax  # noqa: F401

        jax_config = replace(config, device="cpu")
        runs.append(
            (
                "fft + metacal + wmom, JAX route (cpu)",
                lambda: measure_batch(fft, batch, fft.deconvolve(batch), jax_config),
                n_batched,
            )
        )
    except ImportError:
        pass
    runs.append(("galsim-mcal + wmom", lambda: measure_batch(galsim_mcal, small, None, config), n_galsim))

    old = F.padded_size(n, config.pad_factor)
    old_padded = F.pad_centered(batch.observed, old)
    deconv = F.padded_size(n, fft.pad_factor)
    deconv_padded = F.pad_centered(batch.observed, deconv)

    def old_floor():
        spec = F.rfft2(old_padded)
        for _ in range(5):
            F.irfft2(spec, old)

    def route_floor():
        F.irfft2(F.rfft2(deconv_padded), deconv)
        F.rfft2(batch.observed)

    floors = [
        (f"FFT floor, image route (1 rfft2 + 5 irfft2 of {old}²)", old_floor),
        (f"FFT floor, Fourier route (rfft2 + irfft2 of {deconv}², rfft2 of {n}²)", route_floor),
    ]
    estimate = fft.deconvolve(batch)
    reconv = reconv_fwhm(batch.psf, pixel)
    spectrum = galaxy_spectrum(estimate, pixel, target)
    parts = [
        ("  deconvolution (fft)", lambda: fft.deconvolve(batch)),
        ("  PSF fit (fitgauss, once per distinct PSF)", lambda: reconv_fwhm(batch.psf, pixel)),
        ("  galaxy spectrum (rfft2 of D, /T~)", lambda: galaxy_spectrum(estimate, pixel, target)),
        ("  five wmom in Fourier space", lambda: metacal_wmom(spectrum, n, pixel, reconv)),
    ]

    for _, fn, _ in runs:  # warm caches (and JIT)
        fn()
    rows = [
        (name, count / seconds, 1e3 * seconds / count) for name, fn, count in runs for seconds in [_best(fn, repeats)]
    ]
    rows += [
        (name, n_batched / seconds, 1e3 * seconds / n_batched)
        for name, fn in floors + parts
        for seconds in [_best(fn, repeats)]
    ]
    print(
        f'{n_batched} stamps of metacal-offsets/snr50 ({n}², {pixel}"/px); galsim-mcal on the first {n_galsim}; '
        f"best of {repeats}"
    )
    for name, rate, ms in rows:
        print(f"{name:62s} {rate:10.1f} gal/s {ms:9.4f} ms/gal")
    by_name = {name: (rate, ms) for name, rate, ms in rows}
    fast = by_name["fft + metacal + wmom, Fourier route"]
    image = by_name["fft + metacal + wmom, image route"]
    galsim = by_name["galsim-mcal + wmom"]
    floor = by_name[floors[1][0]]
    print(
        f"Fourier route / galsim-mcal: {fast[0] / galsim[0]:.1f}x; Fourier / image route: {fast[0] / image[0]:.1f}x; "
        f"Fourier route ms/gal / its FFT floor: {fast[1] / floor[1]:.1f}x"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
