"""Noiseless fft m from the Fourier route and the image route of wmom on the same stamps,
and the truth floor (metacal on the truth images):

    python -m benchmarks.metacal_route_agreement [N_GROUPS]

(not an asv benchmark). Stamps: the first N_GROUPS groups of 4 of metacal-offsets/noiseless,
rendered in memory by the generator (default 256 groups = 1024 stamps).
"""

from __future__ import annotations

import sys

import numpy as np


def main(n_groups: int = 256) -> None:
    from deconvbench.bias import render_groups
    from deconvbench.cards import load_card
    from deconvbench.metacal.measure import MetacalConfig, measure_batch, measure_deconvolved, summarise
    from deconvbench.metacal.psf_fit import reconv_fwhm
    from deconvbench.methods import Batch, load_method

    card = load_card("metacal-offsets")
    arrays = render_groups(card, "noiseless", 0, n_groups)
    batch = Batch.from_rendered(arrays, card)
    fft = load_method("fft")
    estimate = fft.deconvolve(batch)
    ok = np.ones(len(estimate), dtype=bool)
    blocks = {}
    for route in ("fourier", "image"):
        config = MetacalConfig(route=route)
        blocks[route] = summarise(measure_batch(fft, batch, estimate, config), ok, arrays["params"], config)
    config = MetacalConfig()
    reconv = reconv_fwhm(batch.psf, batch.pixel_scale_arcsec)
    floor = summarise(
        measure_deconvolved(arrays["truth"], batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, reconv, config),
        ok,
        arrays["params"],
        config,
    )
    print(f"{4 * n_groups} noiseless stamps of metacal-offsets, fft + wmom")
    for route, block in blocks.items():
        print(
            f"{route:8s} route: m = {block['m']:.9e} ± {block['m_err']:.2e}, c = {block['c']:.3e}, "
            f"R11 = {block['R11']:.10f}"
        )
    print(f"|m(fourier) − m(image)| = {abs(blocks['fourier']['m'] - blocks['image']['m']):.2e}")
    print(f"truth floor: m = {floor['m']:.6e} ± {floor['m_err']:.2e}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
