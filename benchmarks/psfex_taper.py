"""PSFEx PSFs with a Gaussian taper: renderer exactness, PSF size and fft metacal bias.

The experiment behind the ``psfex-tapered`` family (superbit-v3, edge 0.01). The SuperBIT PSFEx models
are GalSim ``InterpolatedImage`` objects whose transform is cut hard at their maxk (2.0×
the pixel Nyquist frequency, where it is still ~6e-4 of K(0) on the axes). The fast
renderer and GalSim's ``drawImage`` periodise the ringing of that edge on different
grids, so ``noiseless`` stamps differ by up to 4e-4 of their peak, while the ``psf``
stamp is GalSim's own: fft metacal on PSFEx stamps is then biased.

This script convolves each PSFEx PSF with a round Gaussian whose transform is ``EDGE`` at
the PSF's maxk (``σ = sqrt(−2 ln EDGE) / maxk``; EDGE = 1: no taper), for each EDGE given,
and prints

* ``validate-render`` of the first ``--n-render`` stamps of superbit-v3's first split, drawn
  with the untapered ``psfex`` family as superbit-v2 was (max and rms of |fast − GalSim| /
  peak, flux ratio; the PSFEx rows);
* the FWHM (GalSim adaptive moments, arcsec) of the first four distinct PSFs;
* fft + metacal + wmom on ``--groups`` groups of a noiseless metacal card with PSFEx PSFs
  at SuperBIT's pixel scale and galaxy offsets up to ±1 px (the PSFEx variant of
  tests/test_metacal_offsets.py): m ± σm, c.

    python benchmarks/psfex_taper.py --edges 1 0.1 0.01 --n-render 64 --groups 256

``--kernel-wrap`` and ``--psf-stamp`` set the renderer's ``stamp.kernel_wrap`` and
``stamp.psf_stamp`` on both cards (default: the v2 renderer, whatever the card sets), to
measure the taper with the settings of the v3 cards.

The taper is applied by registering the ``psfex`` family again with a tapered builder, in
this process only (the original is registered back afterwards).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import galsim
import numpy as np

PSFEX_MODELS = ["superbit/superbit_psf_emp01.psf", "superbit/superbit_psf_emp02.psf", "superbit/superbit_psf_emp03.psf"]


def tapered(build, edge: float):
    """A PSF builder: ``build``'s PSF convolved with the Gaussian whose transform is ``edge``
    at that PSF's maxk (``build`` itself for edge ≥ 1)."""
    if edge >= 1:
        return build

    def builder(row, gsp):
        psf = build(row, gsp)
        sigma = math.sqrt(-2.0 * math.log(edge)) / psf.maxk
        return galsim.Convolve([psf, galsim.Gaussian(sigma=sigma, gsparams=gsp)])

    return builder


def with_renderer(raw_stamp: dict, renderer: dict) -> dict:
    """The card's ``[stamp]`` table with the renderer settings that are set (not None); the
    others at their defaults (the v2 renderer), whatever the card sets."""
    stamp = {key: value for key, value in raw_stamp.items() if key not in renderer}
    return {**stamp, **{key: value for key, value in renderer.items() if value is not None}}


def metacal_card(groups: int, renderer: dict):
    import tomllib

    from deconvbench.cards import DatasetCard, cards_dir

    raw = tomllib.loads((cards_dir() / "metacal-offsets.toml").read_text())
    raw["stamp"].update(size=48, pixel_scale_arcsec=0.141, target_psf_fwhm_arcsec=0.35, max_offset_pixels=1.0)
    raw["stamp"] = with_renderer(raw["stamp"], renderer)
    raw["psf"].update(families={"psfex": 1.0}, psfex_models=PSFEX_MODELS, psfex_pixel_scale_arcsec=0.141)
    raw["splits"] = {"noiseless": {"n": 4 * groups, "seed": 2}}
    return DatasetCard.model_validate(raw)


def measure(edge: float, n_render: int, groups: int, renderer: dict) -> None:
    import tomllib

    from deconvbench.bias import render_groups
    from deconvbench.cards import DatasetCard, cards_dir
    from deconvbench.metacal.measure import MetacalConfig, measure_batch, summarise
    from deconvbench.methods import Batch, load_method
    from deconvbench.sim.psfs import build_psf
    from deconvbench.sim.registry import psf_family, register
    from deconvbench.sim.render import gsparams
    from deconvbench.sim.sampling import draw_galaxies
    from deconvbench.sim.validate import validate_render

    original = psf_family("psfex")
    register(dataclasses.replace(original, build=tapered(original.build, edge)))  # same name: replaces it
    try:
        raw = tomllib.loads((cards_dir() / "superbit-v3.toml").read_text())
        raw["stamp"] = with_renderer(raw["stamp"], renderer)
        raw["psf"]["families"] = {"psfex": 1.0}  # the models untapered: this script tapers them
        raw["psf"].pop("psfex_taper_edge", None)
        card = DatasetCard.model_validate(raw)
        split = next(iter(card.splits))
        for row in validate_render(card, split, n_render):
            if row.by == "psf_family":
                print(
                    f"edge {edge:g}: validate-render {row.image:9s} max {row.max_rel:.2e} rms {row.rms_rel:.2e} "
                    f"flux {row.flux_ratio_min - 1:+.1e} .. {row.flux_ratio_max - 1:+.1e} ({row.n} stamps)"
                )
        rows, seen, fwhm = draw_galaxies(card, split, 0, 400), set(), []
        for row in rows:
            key = (bytes(row["psfex_model"]), float(row["psfex_x"]), float(row["psfex_y"]))
            if key in seen:
                continue
            seen.add(key)
            image = build_psf(row, gsparams()).drawImage(nx=48, ny=48, scale=0.141, method="no_pixel")
            fwhm.append(2.3548 * image.FindAdaptiveMom().moments_sigma * 0.141)
            if len(fwhm) == 4:
                break
        print(f"edge {edge:g}: PSF FWHM (arcsec) " + " ".join(f"{value:.4f}" for value in fwhm))
        mcal = metacal_card(groups, renderer)
        arrays = render_groups(mcal, "noiseless", 0, groups)
        batch = Batch.from_rendered(arrays, mcal)
        fft, config = load_method("fft"), MetacalConfig()
        result = summarise(
            measure_batch(fft, batch, fft.deconvolve(batch), config),
            np.ones(len(arrays["params"]), dtype=bool),
            arrays["params"],
            config,
        )
        print(
            f"edge {edge:g}: fft metacal m = {result['m']:+.3e} ± {result['m_err']:.1e}, c = {result['c']:+.1e} "
            f"({result['n_pairs']} pairs)"
        )
    finally:
        register(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--n-render", type=int, default=64)
    parser.add_argument("--groups", type=int, default=256)
    parser.add_argument("--kernel-wrap", choices=["point-corrected", "truncated"], default=None)
    parser.add_argument("--psf-stamp", choices=["drawimage", "kernel"], default=None)
    args = parser.parse_args()
    renderer = {"kernel_wrap": args.kernel_wrap, "psf_stamp": args.psf_stamp}
    for edge in args.edges:
        if not 0 < edge <= 1:
            parser.error(f"--edges must be in (0, 1], got {edge}")
        measure(edge, args.n_render, args.groups, renderer)


if __name__ == "__main__":
    main()
