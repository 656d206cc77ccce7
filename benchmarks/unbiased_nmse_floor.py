"""NMSE floor of a deconvolver that is exact (unbiased) inside the metacal band.

Inside ``q = |k| σ_Γ ≤ q_flat`` (σ_Γ: the stamp's metacal reconvolution Gaussian) an
estimator with no bias for every galaxy must keep the noise of the direct inverse
``I~ T~/P~`` there (Gauss–Markov / Cramér–Rao for Gaussian pixel noise without a
prior). This script measures, on a split with noiseless images, the mean per-stamp NMSE
of that noise alone, ``Σ|band(noise~ T~/P~)|² / Σ truth²``, per SNR level: a lower bound
on the NMSE of any deconvolver that is exact for q ≤ q_flat, whatever it does beyond.

    python benchmarks/unbiased_nmse_floor.py --dataset ground-v3 --split val --q-flat 1 2 3 3.5 4
"""

from __future__ import annotations

import argparse

import numpy as np

from deconvbench import fourier as F
from deconvbench.dataset_files import ensure_dataset
from deconvbench.store import open_dataset
from deconvbench.streaming import sequential_batches
from deconvbench_baselines.deconvnet.filter_model import FilterConfig, prepare


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ground-v3")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--q-flat", type=float, nargs="+", default=[1.0, 2.0, 3.0, 3.5, 4.0])
    args = parser.parse_args(argv)
    path, _ = ensure_dataset(args.dataset, args.split, n=args.n)
    with open_dataset(path) as ds:
        scale, target, n = ds.pixel_scale_arcsec, ds.target_psf_fwhm_arcsec, ds.stamp_size
    config = FilterConfig()
    N = F.padded_size(n, config.pad_factor)
    keys = ("observed", "noiseless", "truth", "psf", "noise_sigma", "snr")
    floors: dict[tuple[float, float], list] = {}
    levels = None
    for batch in sequential_batches(path, 500, n=args.n, keys=keys):
        noise = batch["observed"].astype(np.float64) - batch["noiseless"]
        prep = prepare(noise, batch["psf"], batch["noise_sigma"], scale, target, config)
        inverse = prep["spec"] * prep["H"]
        truth2 = (batch["truth"].astype(np.float64) ** 2).sum(axis=(1, 2))
        snr = np.asarray(batch["snr"], dtype=np.float64)
        if levels is None:
            levels = np.unique(np.round(snr[np.isfinite(snr)], -1)) if np.isfinite(snr).any() else np.array([])
        label = np.full(len(snr), np.inf)
        finite = np.isfinite(snr)
        if levels.size:
            label[finite] = levels[np.argmin(np.abs(np.log(snr[finite, None] / levels[None, :])), axis=1)]
        for q_flat in args.q_flat:
            band = F.crop_centered(F.irfft2(inverse * (prep["q"] <= q_flat), N), n)
            nmse = (band**2).sum(axis=(1, 2)) / truth2
            for level in np.unique(label):
                floors.setdefault((q_flat, level), []).extend(nmse[label == level])
    all_levels = sorted({level for _, level in floors})
    print("| q_flat | " + " | ".join(f"SNR {level:g}" for level in all_levels) + " |")
    print("|" + " --- |" * (len(all_levels) + 1))
    for q_flat in args.q_flat:
        cells = [f"{np.mean(floors[(q_flat, level)]):.3g}" for level in all_levels]
        print(f"| {q_flat:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
