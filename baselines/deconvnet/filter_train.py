"""Training DeconvFilter (PyTorch, float64): Adam with a cosine learning-rate schedule on
``pixel_weight · NMSE + band_weight · band + flux_weight · flux`` (see :mod:`.losses`).

``train_filter(config, weights, train_batches, val_batches, ...)`` runs epochs over
batches of dicts with ``observed``, ``noiseless``, ``truth``, ``psf`` (B, n, n) and
``noise_sigma`` (B,); after each epoch it evaluates on the validation batches the mean
per-stamp NMSE (noisy input) and the metacal-band error (noiseless input), and keeps the
epoch with the lowest validation *objective* (the same weighted sum as the training
loss), writing to ``out_dir``:

* ``best.npz``: MLP parameters + config + metadata (:func:`.filter_model.save_filter_weights`);
* ``history.json``: per-epoch records.

Training is deterministic for a given ``seed`` on one device: parameters from
``torch.manual_seed(seed)`` in a forked RNG, batches in the order the caller yields them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from deconvbench import fourier as F
from deconvbench.atomic import atomic_write, json_safe

from .filter_model import (
    FilterConfig,
    build_torch_model,
    prepare,
    save_filter_weights,
    to_stamps,
    torch_state_to_flat,
)
from .losses import LossWeights, band_loss, flux_loss, nmse_loss

BEST_NAME = "best.npz"
HISTORY_NAME = "history.json"


def band_weight_grid(q, N: int, pixel_scale: float, target_fwhm: float) -> np.ndarray:
    """``Γ~/T~`` (B, N, M): Γ~ = exp(−q²/2) with q = |k| σ_Γ, T~ the target transfer."""
    T = F.target_transfer(N, target_fwhm, pixel_scale)
    return np.exp(-0.5 * q**2) / T


class FilterStep:
    """Tensors of one batch on ``device`` and the loss terms of the model on them."""

    def __init__(self, model, batch: dict, pixel_scale: float, target_fwhm: float, device, need_noiseless: bool):
        import torch

        self.torch = torch
        cfg = model.config
        extra = {"truth": batch["truth"]}
        if need_noiseless:
            extra["noiseless"] = batch["noiseless"]
        prep = prepare(
            batch["observed"], batch["psf"], batch["noise_sigma"], pixel_scale, target_fwhm, cfg, extra=extra
        )
        self.n = np.shape(batch["observed"])[-1]
        self.N = F.padded_size(self.n, cfg.pad_factor)
        t = {key: torch.from_numpy(np.ascontiguousarray(value)).to(device) for key, value in prep.items()}
        self.t = t
        self.truth = torch.from_numpy(np.asarray(batch["truth"], dtype=np.float64)).to(device)
        self.band_w = (
            torch.from_numpy(band_weight_grid(prep["q"], self.N, pixel_scale, target_fwhm)).to(device)
            if need_noiseless
            else None
        )

    def terms(self, model, weights: LossWeights) -> dict:
        t = self.t
        W = model.weights(t["q"], t["z"], t["nu"])
        out = {}
        est = to_stamps(t["spec"] * t["H"] * W, self.N, self.n)
        out["pixel"] = nmse_loss(est, self.truth)
        if self.band_w is not None:
            spec_nl = t["spec_noiseless"] * t["H"] * W
            out["band"] = band_loss(spec_nl, t["spec_truth"], self.band_w)
            out["flux"] = flux_loss(spec_nl, t["spec_truth"])
        total = weights.pixel_weight * out["pixel"]
        if weights.band_weight:
            total = total + weights.band_weight * out["band"]
        if weights.flux_weight:
            total = total + weights.flux_weight * out["flux"]
        out["total"] = total
        return out


def evaluate_filter(model, batches: Iterable[dict], weights: LossWeights, pixel_scale, target_fwhm, device) -> dict:
    """Validation means (per stamp) of each loss term and the weighted objective."""
    import torch

    sums: dict[str, float] = {}
    count = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            step = FilterStep(model, batch, pixel_scale, target_fwhm, device, need_noiseless=True)
            b = len(batch["observed"])
            for key, value in step.terms(model, weights).items():
                sums[key] = sums.get(key, 0.0) + float(value) * b
            count += b
    if count == 0:
        raise ValueError("val_batches() yielded no batches")
    return {key: value / count for key, value in sums.items()}


def train_filter(
    config: FilterConfig,
    weights: LossWeights,
    train_batches: Callable[[int], Iterable[dict]],
    val_batches: Callable[[], Iterable[dict]],
    epochs: int,
    pixel_scale: float,
    target_fwhm: float,
    lr: float = 3e-3,
    seed: int = 0,
    out_dir="deconvfilter-run",
    patience: int | None = None,
    device="cpu",
    progress: Callable[[dict], None] | None = None,
    metadata: dict | None = None,
) -> dict:
    """Train; returns ``{"history", "best_epoch", "best_val", "best_path", "wall_time_s",
    "epochs_completed", "stopped_early"}``. The learning rate follows a cosine from
    ``lr`` to ``lr/100`` over ``epochs`` (stepped per epoch)."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_torch_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    need_noiseless = bool(weights.band_weight or weights.flux_weight)
    history: list[dict] = []
    best_val, best_epoch, stopped_early = math.inf, None, False
    t_start = time.perf_counter()
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1))))
        model.train()
        loss_sum, n_seen = 0.0, 0
        for batch in train_batches(epoch):
            step = FilterStep(model, batch, pixel_scale, target_fwhm, device, need_noiseless)
            optimizer.zero_grad(set_to_none=True)
            loss = step.terms(model, weights)["total"]
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch["observed"])
            n_seen += len(batch["observed"])
        if n_seen == 0:
            raise ValueError(f"train_batches({epoch}) yielded no batches")
        val = evaluate_filter(model, val_batches(), weights, pixel_scale, target_fwhm, device)
        improved = val["total"] < best_val
        if improved:
            best_val, best_epoch = val["total"], epoch
            save_filter_weights(
                out / BEST_NAME,
                torch_state_to_flat(model),
                config,
                {**(metadata or {}), "epoch": epoch, "val": val, "lr": lr, "seed": seed, "loss": vars(weights)},
            )
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n_seen,
            "val_nmse": val["pixel"],
            "val_band": val.get("band"),
            "val_objective": val["total"],
            "best": improved,
            "n_train": n_seen,
            "lr": optimizer.param_groups[0]["lr"],
            "time_s": time.perf_counter() - t_epoch,
        }
        diverged = not math.isfinite(record["train_loss"])
        if diverged:
            record["diverged"] = True
        history.append(record)
        atomic_write(out / HISTORY_NAME, lambda f: f.write(json.dumps(json_safe(history), indent=1).encode()))
        if progress is not None:
            progress(dict(record))
        stopped_early = patience is not None and best_epoch is not None and epoch - best_epoch >= patience
        if stopped_early or diverged:  # a non-finite loss never recovers: keep the best epoch
            stopped_early = True
            break
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val": None if best_epoch is None else best_val,
        "best_path": str(out / BEST_NAME) if best_epoch is not None else None,
        "wall_time_s": time.perf_counter() - t_start,
        "epochs_completed": len(history),
        "stopped_early": stopped_early,
    }
