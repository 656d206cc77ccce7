"""Metacal throughput table from one run: fft + metacal + wmom (Fourier route in float64
and with float32 FFTs, with and without fixnoise, image route, JAX) against galsim-mcal on
the same stamps, the FFT floors, and where the time goes.

    python -m benchmarks.metacal_throughput [N_BATCHED] [N_GALSIM] [REPEATS] [--processes P]

galsim-mcal runs on N_GALSIM of the N_BATCHED stamps spread evenly over them (its cost
grows with galaxy size); N_GALSIM = N_BATCHED compares both on exactly the same stamps.

(not an asv benchmark: asv only imports this module). Stamps: the first N of
metacal-offsets/snr50, rendered in memory by the generator. Every row runs the harness's
metacal flow on the same stamps (deconvolve, PSF fit, the five measurements, response);
each timing is the best of REPEATS runs (default 3), back to back in one process. The
load average of the machine is printed before and after (other processes share the cores).

With ``--processes P`` the rows that matter for the throughput contract (fft in float64
and float32, galsim-mcal) run instead in P processes at once, each with one BLAS/FFT thread
(as the executors' workers run) on its 1/P share of the same stamps, in calls of 256 stamps
(the harness's batch size), started together at a barrier; each process repeats a row's
flow until 2 s have passed (galsim-mcal's share takes longer than that once), and a round's
rate is all the stamps its processes measured over the wall time of the slowest; the table
gives the best of REPEATS rounds. A round
runs every row once (rows interleaved), and the ratio to galsim-mcal is also given per round
(median and range): on shared cores the machine's speed drifts between rounds by up to
±25 %. The FFT floors are the transforms the Fourier route cannot avoid, each as fast as
the code base takes them (fft's pruned forward and in-place inverse of the padded grid,
in float64 and in float32, and the float64 rfft2 of the deconvolved stamp); each fft row
is compared with the floor of its precision.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

#: stamps per call in the ``--processes`` rows: the harness's default batch size
BATCH_SIZE = 256


def _take(batch, pick):
    """The stamps ``pick`` (indices or a slice) of ``batch``."""
    return replace(batch, observed=batch.observed[pick], psf=batch.psf[pick], noise_sigma=batch.noise_sigma[pick])


def _spread(batch, count: int):
    """``count`` stamps of ``batch`` spread evenly over it (all of them when ``count`` ≥ its
    size): galsim-mcal's cost grows with the galaxy's size, so its subset must be a fair
    sample of the stamps the batched rows measure, not their first ones."""
    import numpy as np

    total = len(batch.observed)
    return _take(batch, slice(None) if count >= total else np.linspace(0, total - 1, count).round().astype(int))


def _fft_floor(observed, deconv: int, n: int, dtype) -> None:
    """The transforms the Fourier route cannot avoid, each as fast as the code base takes
    them: fft's on the ``deconv`` grid (pruned forward, inverse in place; ``dtype`` float64
    or float32), then the float64 rfft2 of the n² stamps (D's spectrum)."""
    from deconvbench import fourier as F

    F.irfft2_cropped(F.rfft2_padded(observed, deconv, dtype=dtype), deconv, n, overwrite=True)
    F.rfft2(observed)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(n_batched: int = 512, n_galsim: int = 32, repeats: int = 3) -> None:
    import numpy as np

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
    small = _spread(batch, n_galsim)
    n_galsim = len(small.observed)
    config = MetacalConfig()
    image_config = replace(config, route="image")
    fixnoise = replace(config, fixnoise=True)
    regularised = replace(config, centring="regularised")
    seeds = arrays["params"]["noise_seed"]
    fft, fft32 = load_method("fft"), load_method("fft", precision="float32")
    galsim_mcal = load_method("galsim-mcal")
    pixel, target, n = batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, card.stamp.size

    def flow(method, cfg):
        return lambda: measure_batch(method, batch, method.deconvolve(batch), cfg, noise_seed=seeds)

    runs = [
        ("fft + metacal + wmom, Fourier route", flow(fft, config), n_batched),
        ("fft float32 + metacal + wmom, Fourier route", flow(fft32, config), n_batched),
        ("fft + metacal + wmom, regularised centring", flow(fft, regularised), n_batched),
        ("fft float32 + metacal + wmom, regularised centring", flow(fft32, regularised), n_batched),
        ("fft + metacal + wmom + fixnoise, Fourier route", flow(fft, fixnoise), n_batched),
        ("fft float32 + metacal + wmom + fixnoise, Fourier", flow(fft32, fixnoise), n_batched),
        ("fft + metacal + wmom, image route", flow(fft, image_config), n_batched),
    ]
    try:
        import jax  # noqa: F401

        runs.append(("fft + metacal + wmom, JAX route (cpu)", flow(fft, replace(config, device="cpu")), n_batched))
    except ImportError:
        pass
    runs.append(("galsim-mcal + wmom", lambda: measure_batch(galsim_mcal, small, None, config), n_galsim))

    old = F.padded_size(n, config.pad_factor)
    old_padded = F.pad_centered(batch.observed, old)
    deconv = F.padded_size(n, fft.pad_factor)
    observed = F.as_stack(batch.observed)

    def old_floor():
        spec = F.rfft2(old_padded)
        for _ in range(5):
            F.irfft2(spec, old)

    floors = [
        (f"FFT floor, image route (1 rfft2 + 5 irfft2 of {old}²)", old_floor),
        (
            f"FFT floor, Fourier route (pruned rfft2 + irfft2 of {deconv}², rfft2 of {n}²)",
            lambda: _fft_floor(observed, deconv, n, np.float64),
        ),
        (f"  same, the {deconv}² FFTs in float32", lambda: _fft_floor(observed, deconv, n, np.float32)),
    ]
    estimate = fft.deconvolve(batch)
    reconv = reconv_fwhm(batch.psf, pixel)
    spectrum = galaxy_spectrum(estimate, pixel, target)
    parts = [
        ("  deconvolution (fft)", lambda: fft.deconvolve(batch)),
        ("  deconvolution (fft, float32)", lambda: fft32.deconvolve(batch)),
        ("  PSF fit (fitgauss, once per distinct PSF)", lambda: reconv_fwhm(batch.psf, pixel)),
        ("  galaxy spectrum (rfft2 of D, /T~)", lambda: galaxy_spectrum(estimate, pixel, target)),
        ("  five wmom in Fourier space", lambda: metacal_wmom(spectrum, n, pixel, reconv)),
        (
            "  five wmom in Fourier space, regularised centring",
            lambda: metacal_wmom(spectrum, n, pixel, reconv, centring="regularised"),
        ),
    ]

    load_before = os.getloadavg()
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
    load_after = os.getloadavg()
    print(
        f'{n_batched} stamps of metacal-offsets/snr50 ({n}², {pixel}"/px); '
        f"galsim-mcal on {n_galsim} of them (evenly spread); "
        f"best of {repeats}; {os.cpu_count()} CPUs, load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    for name, rate, ms in rows:
        print(f"{name:62s} {rate:10.1f} gal/s {ms:9.4f} ms/gal")
    by_name = {name: (rate, ms) for name, rate, ms in rows}
    galsim = by_name["galsim-mcal + wmom"]
    for name in (name for name, _, _ in runs if name.startswith("fft") and "fixnoise" not in name):
        rate, ms = by_name[name]
        floor = by_name[floors[2 if "float32" in name else 1][0]]  # the floor of its FFTs' precision
        print(
            f"{name}: {rate:.0f} gal/s = {rate / galsim[0]:.1f}x galsim-mcal ({galsim[0]:.1f} gal/s); "
            f"{ms:.3f} ms/gal = {ms / floor[1]:.2f}x the FFT floor ({floor[1]:.3f} ms/gal)"
        )


#: each timing of a row repeats its flow until this many seconds have passed, so that a
#: fast row (0.2 s for its stamps) and galsim-mcal (several seconds) see the machine's
#: hiccups alike
MIN_TIMING_SECONDS = 2.0


def _process_worker(rank: int, processes: int, n_batched: int, n_galsim: int, repeats: int, barrier, queue) -> None:
    """One of ``processes``: renders its share of the stamps, then times each flow in rounds
    that start at ``barrier``, repeating it for at least :data:`MIN_TIMING_SECONDS`; puts
    (rank, {row: [(passes, seconds) per round]}) on ``queue``."""
    from deconvbench.execution.worker import limit_threads

    limit_threads(1)
    from deconvbench.bias import render_groups
    from deconvbench.cards import load_card
    from deconvbench.metacal.measure import MetacalConfig, measure_batch
    from deconvbench.methods import Batch, load_method

    card = load_card("metacal-offsets")
    groups = n_batched // 4 // processes
    arrays = render_groups(card, "snr50", rank * groups, groups)
    batch = Batch.from_rendered(arrays, card)
    small = _spread(batch, n_galsim // processes)
    config = MetacalConfig()
    fft, fft32 = load_method("fft"), load_method("fft", precision="float32")
    galsim_mcal = load_method("galsim-mcal")
    chunks = [_take(batch, slice(i, i + BATCH_SIZE)) for i in range(0, len(batch.observed), BATCH_SIZE)]

    regularised = replace(config, centring="regularised")

    def batched(method, cfg=config):
        return lambda: [measure_batch(method, chunk, method.deconvolve(chunk), cfg) for chunk in chunks]

    import numpy as np

    from deconvbench import fourier as F

    n, deconv = card.stamp.size, F.padded_size(card.stamp.size, fft.pad_factor)

    def fft_floor(dtype):
        return lambda: [_fft_floor(F.as_stack(chunk.observed), deconv, n, dtype) for chunk in chunks]

    flows = {
        "fft + metacal + wmom, Fourier route": batched(fft),
        "fft float32 + metacal + wmom, Fourier route": batched(fft32),
        "fft + metacal + wmom, regularised centring": batched(fft, regularised),
        "fft float32 + metacal + wmom, regularised centring": batched(fft32, regularised),
        "galsim-mcal + wmom": lambda: measure_batch(galsim_mcal, small, None, config),
        f"FFT floor (rfft2 + irfft2 of {deconv}², rfft2 of {n}²)": fft_floor(np.float64),
        f"FFT floor, float32 fft (rfft2 + irfft2 of {deconv}², rfft2 of {n}²)": fft_floor(np.float32),
    }
    seconds = {name: [] for name in flows}
    for fn in flows.values():
        fn()  # warm caches
    for _ in range(repeats):  # rounds: every flow once, so that a round's ratios are seconds apart
        for name, fn in flows.items():
            barrier.wait()
            t0, passes = time.perf_counter(), 0
            while passes == 0 or time.perf_counter() - t0 < MIN_TIMING_SECONDS:
                fn()
                passes += 1
            seconds[name].append((passes, time.perf_counter() - t0))
    queue.put((rank, seconds))


def main_processes(n_batched: int, n_galsim: int, repeats: int, processes: int) -> None:
    """The throughput rows on ``processes`` processes at once (see the module docstring)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    args = (processes, n_batched, n_galsim, repeats, barrier, queue)
    procs = [ctx.Process(target=_process_worker, args=(rank, *args)) for rank in range(processes)]
    load_before = os.getloadavg()
    for proc in procs:
        proc.start()
    results = dict(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    load_after = os.getloadavg()
    counts = {"galsim-mcal + wmom": min(n_galsim // processes, n_batched // 4 // processes * 4) * processes}
    print(
        f"{n_batched // 4 // processes * 4 * processes} stamps of metacal-offsets/snr50 on {processes} processes "
        f"(1 BLAS/FFT thread each), galsim-mcal on {counts['galsim-mcal + wmom']} of them (evenly spread); "
        f"best of {repeats} rounds; "
        f"{os.cpu_count()} CPUs, load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    rates, round_rates = {}, {}
    for name in results[0]:
        share = counts.get(name, n_batched // 4 // processes * 4 * processes) / processes  # stamps per pass
        # all the stamps of the round over the wall time of its slowest process (one that
        # finishes early leaves the cores to the others: a sum of per-process rates would
        # count that time twice)
        round_rates[name] = [
            share
            * sum(results[rank][name][r][0] for rank in results)
            / max(results[rank][name][r][1] for rank in results)
            for r in range(repeats)
        ]
        rates[name] = max(round_rates[name])
        print(f"{name:62s} {rates[name]:10.1f} gal/s {1e3 / rates[name]:9.4f} ms/gal (wall, all processes)")
    galsim = rates["galsim-mcal + wmom"]
    floors = [rate for name, rate in rates.items() if name.startswith("FFT floor")]  # float64, float32
    for name in (name for name in rates if name.startswith("fft")):
        floor = floors[1] if "float32" in name else floors[0]
        # the same round's rates are measured seconds apart: their ratio is steadier than
        # the ratio of best rates, which may come from different rounds
        ratios = sorted(a / b for a, b in zip(round_rates[name], round_rates["galsim-mcal + wmom"], strict=True))
        print(
            f"{name}: {rates[name]:.0f} gal/s on {processes} processes = {rates[name] / galsim:.1f}x galsim-mcal "
            f"(per round: median {ratios[len(ratios) // 2]:.1f}x, {ratios[0]:.1f}-{ratios[-1]:.1f}x); "
            f"{floor / rates[name]:.2f}x the time of its FFT floor ({'float32' if 'float32' in name else 'float64'})"
        )


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--processes" in argv:
        at = argv.index("--processes")
        processes = int(argv[at + 1])
        del argv[at : at + 2]
        ints = [int(a) for a in argv[:3]]
        main_processes(*(ints + [512, 32, 3][len(ints) :]), processes)
    else:
        main(*(int(a) for a in argv[:3]))
