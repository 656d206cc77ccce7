"""Train a tiny PSF-conditioned CNN for one epoch on the smoke dataset (CPU, < 1 minute).

    python examples/train_tiny.py            # generates smoke train/val if missing, then trains

Shows the training-data API: ``deconvbench.data.StampDataset`` with a
``DataLoader(num_workers=2)`` and the ``BlockShuffleBatchSampler`` (fixed order per seed),
and prints the validation NMSE = Σ(est − truth)² / Σ truth² before and after the epoch.
Inputs are scaled per stamp by the observed peak, so the network sees images of order 1.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from deconvbench.cards import load_card
from deconvbench.data import BlockShuffleBatchSampler, StampDataset
from deconvbench.paths import dataset_path
from deconvbench.sim.generate import generate


def split_file(card_name: str, split: str):
    """The split's file under $DECONVBENCH_DATA, generated (deterministically) if missing."""
    card = load_card(card_name)
    path = dataset_path(card, split)
    if not path.exists():
        generate(card, split, path, workers=2)
    return path


class TinyDeconv(nn.Module):
    """observed + PSF (2 channels) → correction added to observed; starts as identity."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, 1, 5, padding=2),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, observed, psf):
        scale = observed.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        x = torch.stack([observed / scale, psf / psf.amax(dim=(-2, -1), keepdim=True)], dim=1)
        return (observed / scale + self.body(x)[:, 0]) * scale


def nmse(model, loader) -> float:
    err = norm = 0.0
    with torch.no_grad():
        for batch in loader:
            est = model(batch["observed"], batch["psf"])
            err += float(((est - batch["truth"]) ** 2).sum())
            norm += float((batch["truth"] ** 2).sum())
    return err / norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", default="smoke")
    parser.add_argument("--n-train", type=int, default=None, help="first N training stamps (default: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    start = time.perf_counter()
    train = StampDataset(split_file(args.card, "train"), n=args.n_train)
    val = StampDataset(split_file(args.card, "val"))
    sampler = BlockShuffleBatchSampler(len(train), args.batch_size, seed=args.seed)
    train_loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, num_workers=args.workers)
    val_loader = torch.utils.data.DataLoader(val, batch_size=64, num_workers=args.workers)
    model = TinyDeconv()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    before = nmse(model, val_loader)
    t0 = time.perf_counter()
    sampler.set_epoch(0)
    seen = 0
    for batch in train_loader:
        est = model(batch["observed"], batch["psf"])
        loss = ((est - batch["truth"]) ** 2).sum() / (batch["truth"] ** 2).sum()  # the batch's NMSE
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(batch["index"])
    train_s = time.perf_counter() - t0
    after = nmse(model, val_loader)
    print(f"trained 1 epoch on {seen} {args.card}/train stamps ({args.workers} loader workers): {train_s:.1f} s")
    print(f"val NMSE on {len(val)} {args.card}/val stamps: before {before:.4f}, after {after:.4f}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
