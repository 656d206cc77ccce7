"""Paired agreement of fft + metacal (Fourier route) and galsim-mcal on the same stamps:
m of each and their difference, with errors from one Poisson bootstrap over groups shared
by both (the two measure the same galaxies and noise, so the difference is much better
determined than either m).

    python -m benchmarks.metacal_agreement [N] [SPLIT] [CHUNK_GROUPS] [N_BOOT]

Stamps: the first N (default 1024) of metacal-offsets/SPLIT (default snr50), rendered by
the generator chunk by chunk (the stamps of ``deconvbench bias``); wmom, no fixnoise. The
sums per group are those of :func:`deconvbench.bias.group_sums` (a group whose four
measurements did not all succeed in *either* method is dropped from both, so the
comparison stays paired). Prints m, c and their bootstrap errors for each method, the
paired Δm = m(fft) − m(galsim-mcal) with its error, and the seconds each method took.
(Not an asv benchmark: asv only imports this module.)
"""

from __future__ import annotations

import sys
import time


def main(n: int = 1024, split: str = "snr50", chunk_groups: int = 32, n_boot: int = 500) -> None:
    import numpy as np

    from deconvbench.bias import GROUP, group_sums, render_groups
    from deconvbench.cards import load_card
    from deconvbench.metacal.bias import _ratio_stats
    from deconvbench.metacal.measure import MetacalConfig, measure_batch
    from deconvbench.methods import Batch, load_method

    card = load_card("metacal-offsets")
    config = MetacalConfig()
    methods = {"fft": load_method("fft"), "galsim-mcal": load_method("galsim-mcal")}
    n_groups = n // GROUP
    sums = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    g_true = 0.0
    for first in range(0, n_groups, chunk_groups):
        count = min(chunk_groups, n_groups - first)
        arrays = render_groups(card, split, first, count)
        batch = Batch.from_rendered(arrays, card)
        g_true = float(np.max(np.abs(arrays["params"]["shear_g1"])))
        keep = np.ones(count, dtype=bool)
        chunk = {}
        for name, method in methods.items():
            t0 = time.perf_counter()
            estimate = None if hasattr(method, "metacal_images") else method.deconvolve(batch)
            values = measure_batch(method, batch, estimate, config, noise_seed=arrays["params"]["noise_seed"])
            seconds[name] += time.perf_counter() - t0
            chunk[name], ok = group_sums(values)
            keep &= ok
        for name in methods:
            sums[name].append(np.where(keep[:, None], chunk[name], 0.0))
    weights = np.random.default_rng([config.bootstrap_seed, n]).poisson(1.0, size=(n_boot, n_groups))
    stats = {}
    for name in methods:
        per_group = np.concatenate(sums[name])
        stats[name] = (_ratio_stats(per_group.sum(axis=0), g_true), _ratio_stats(weights @ per_group, g_true))
    print(
        f"{n} stamps of metacal-offsets/{split}, wmom, no fixnoise; {n_boot} Poisson bootstrap replicates over groups"
    )
    for name, (central, boot) in stats.items():
        print(
            f"{name:12s} m = {central['m']:+.4e} ± {np.std(boot['m'], ddof=1):.1e}   "
            f"c = {central['c']:+.3e} ± {np.std(boot['c'], ddof=1):.1e}   "
            f"{seconds[name]:.1f} s ({n / seconds[name]:.1f} gal/s)"
        )
    diff = stats["fft"][0]["m"] - stats["galsim-mcal"][0]["m"]
    diff_boot = stats["fft"][1]["m"] - stats["galsim-mcal"][1]["m"]
    print(f"paired m(fft) - m(galsim-mcal) = {diff:+.3e} ± {np.std(diff_boot, ddof=1):.1e}")


if __name__ == "__main__":
    args = sys.argv[1:5]
    main(*(int(a) if i != 1 else a for i, a in enumerate(args)))
