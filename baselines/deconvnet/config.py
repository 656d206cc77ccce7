"""Hyper-parameters of DeconvNet, shared by the JAX and the PyTorch implementation.

A :class:`DeconvNetConfig` fully determines the layer structure (and therefore the
parameter names and shapes of the neutral weights format, see ``convert.py``). It is
stored as JSON inside every weights file, so a weights file is self-describing.

Architecture summary (see ``jax_model.py`` / ``torch_model.py`` for the code):

* image path: residual U-Net with ``depth`` resolution levels (``depth - 1`` stride-2
  downsamplings), widths ``width * 2**level``, ``blocks_per_scale`` residual blocks per
  level in the encoder and again in the decoder;
* PSF encoder: a small residual conv net on the central ``psf_size`` x ``psf_size``
  crop of the PSF (scaled to peak 1), one level per image level; its globally
  mean-pooled features (plus the relative noise level) condition every residual block
  of the matching image level by FiLM (``conditioning="film"``);
* ``global_residual``: the net predicts a correction to the normalised observed image.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

ARCH = "deconvnet-v1"

NORMS = ("group", "none")
CONDITIONINGS = ("film", "none")


@dataclass(frozen=True)
class DeconvNetConfig:
    depth: int = 3
    """Number of resolution levels of the U-Net (``depth - 1`` downsamplings by 2)."""
    width: int = 16
    """Channels at full resolution; level ``l`` has ``width * 2**l`` channels."""
    blocks_per_scale: int = 2
    """Residual blocks per level, in the encoder and again in the decoder."""
    norm: str = "group"
    """``"group"`` (GroupNorm, pre-activation blocks) or ``"none"``."""
    norm_groups: int = 8
    """GroupNorm groups (must divide every width)."""
    psf_width: int = 16
    """Channels of the PSF encoder at its first level (doubling per level)."""
    psf_size: int = 32
    """Side of the central PSF crop seen by the PSF encoder (zero-padded if larger than
    the stamp). Fixed, so the pooled PSF features do not depend on the stamp size."""
    cond_dim: int = 64
    """Width of the per-level conditioning vector fed to the FiLM layers."""
    conditioning: str = "film"
    """``"film"``: per-channel scale and shift from the PSF (and noise) features in every
    residual block; ``"none"``: no PSF encoder, the PSF is ignored (ablation only)."""
    use_noise_input: bool = True
    """Append log10(noise_sigma / scale) to the pooled PSF features (FiLM input)."""
    global_residual: bool = True
    """Predict ``truth_norm = observed_norm + net(...)`` instead of ``net(...)``."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid DeconvNetConfig: {msg}")

        for field in ("depth", "width", "blocks_per_scale", "norm_groups", "psf_width", "psf_size", "cond_dim"):
            value = getattr(self, field)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{field} must be an int >= 1, got {value!r}",
            )
        need(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        need(
            self.conditioning in CONDITIONINGS,
            f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}",
        )
        need(isinstance(self.use_noise_input, bool), "use_noise_input must be a bool")
        need(isinstance(self.global_residual, bool), "global_residual must be a bool")
        if self.norm == "group":
            need(self.width % self.norm_groups == 0, f"norm_groups={self.norm_groups} must divide width={self.width}")
        need(
            self.psf_size % self.multiple == 0,
            f"psf_size={self.psf_size} must be a multiple of 2**(depth-1)={self.multiple}",
        )

    # -- derived -------------------------------------------------------------------
    @property
    def multiple(self) -> int:
        """Images are zero-padded internally to a multiple of this (then cropped back)."""
        return 2 ** (self.depth - 1)

    def widths(self) -> list[int]:
        return [self.width * 2**level for level in range(self.depth)]

    def psf_widths(self) -> list[int]:
        return [self.psf_width * 2**level for level in range(self.depth)]

    def cond_in_dim(self, level: int) -> int:
        return self.psf_widths()[level] + (1 if self.use_noise_input else 0)

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"arch": ARCH, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeconvNetConfig:
        data = dict(data)
        arch = data.pop("arch", ARCH)
        if arch != ARCH:
            raise ValueError(f"weights/config are for architecture {arch!r}, this code implements {ARCH!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DeconvNetConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeconvNetConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> DeconvNetConfig:
        return dataclasses.replace(self, **changes)


def pad_amounts(n: int, multiple: int) -> tuple[int, int]:
    """(before, after) zero padding that brings a side of n pixels to a multiple of
    ``multiple`` (the image path pads, runs, then crops back)."""
    total = (-n) % multiple
    return total // 2, total - total // 2


def centre_window(n: int, size: int) -> tuple[int, int, int]:
    """(pad_lo, pad_hi, start) such that ``pad(a, (pad_lo, pad_hi))[start:start+size]``
    is the ``size``-long window of ``a`` (length n) whose index ``size//2`` is the
    centre pixel ``n//2`` (the PSF crop seen by the PSF encoder)."""
    lo = n // 2 - size // 2
    pad_lo = max(0, -lo)
    pad_hi = max(0, lo + size - n)
    return pad_lo, pad_hi, lo + pad_lo
