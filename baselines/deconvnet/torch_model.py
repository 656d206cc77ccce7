"""DeconvNet in PyTorch (layout NCHW, conv weights OIHW).

Line-for-line the same network as ``jax_model.py``, with the same module names, so
``state_dict()`` keys map one-to-one onto the neutral weights format (``convert.py``
renames ``weight`` to ``kernel``/``scale`` and transposes). Initialisation mimics
flax (LeCun-normal kernels, zero biases, zero-initialised FiLM/last convs/head).

Call: ``DeconvNetTorch(config)(x, psf, noise)`` with ``x``, ``psf`` (B, n, n) and
``noise`` (B,) float32 tensors from ``normalise.normalise``; returns (B, n, n).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeconvNetConfig, centre_window, pad_amounts

GN_EPS = 1e-5


def _lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
    # flax default: truncated normal (+-2 std) with variance 1/fan_in after truncation
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, zero_init: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
    with torch.no_grad():
        if zero_init:
            conv.weight.zero_()
        else:
            _lecun_normal_(conv.weight, c_in * kernel * kernel)
        conv.bias.zero_()
    return conv


def _dense(c_in: int, c_out: int, zero_init: bool = False) -> nn.Linear:
    lin = nn.Linear(c_in, c_out)
    with torch.no_grad():
        if zero_init:
            lin.weight.zero_()
        else:
            _lecun_normal_(lin.weight, c_in)
        lin.bias.zero_()
    return lin


def _group_norm(config: DeconvNetConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(config.norm_groups, channels, eps=GN_EPS)


class ResBlock(nn.Module):
    """Pre-activation residual block at one resolution: h + conv(silu(norm(conv(silu(FiLM(norm(h))))))).

    FiLM conditioning (per-channel scale 1 + γ and shift β from the PSF/noise code ``cond``,
    zero-initialised so a fresh block starts as the identity). Input and output (B, width, H, W)."""

    def __init__(self, config: DeconvNetConfig, width: int):
        super().__init__()
        self.width = width
        self.group_norm = config.norm == "group"
        if self.group_norm:
            self.norm1 = _group_norm(config, width)
        if config.conditioning == "film":
            self.film = _dense(config.cond_dim, 2 * width, zero_init=True)
        self.conv1 = _conv(width, width)
        if self.group_norm:
            self.norm2 = _group_norm(config, width)
        self.conv2 = _conv(width, width, zero_init=True)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        y = self.norm1(h) if self.group_norm else h
        if cond is not None:
            gb = self.film(cond)
            gamma, beta = gb[:, : self.width], gb[:, self.width :]
            y = y * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        y = self.conv1(F.silu(y))
        if self.group_norm:
            y = self.norm2(y)
        y = self.conv2(F.silu(y))
        return h + y


class PSFBlock(nn.Module):
    """Residual block of the PSF encoder (two 3×3 convolutions, no normalisation)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = _conv(width, width)
        self.conv2 = _conv(width, width)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p + self.conv2(F.silu(self.conv1(F.silu(p))))


class PSFEncoder(nn.Module):
    """Encodes the PSF stamp (cropped/padded to ``psf_size`` pixels around (n//2, n//2))
    into one pooled feature vector per U-Net level: a list of (B, psf_width·2**level)."""

    def __init__(self, config: DeconvNetConfig):
        super().__init__()
        self.depth = config.depth
        widths = config.psf_widths()
        self.stem = _conv(1, widths[0])
        for level in range(config.depth):
            self.add_module(f"level{level}", PSFBlock(widths[level]))
            if level < config.depth - 1:
                self.add_module(f"down{level}", _conv(widths[level], widths[level + 1], stride=2))

    def forward(self, psf: torch.Tensor) -> list[torch.Tensor]:
        p = self.stem(psf)
        pooled = []
        for level in range(self.depth):
            p = getattr(self, f"level{level}")(p)
            pooled.append(F.silu(p).mean(dim=(2, 3)))
            if level < self.depth - 1:
                p = getattr(self, f"down{level}")(F.silu(p))
        return pooled


class CondMLP(nn.Module):
    """Two-layer MLP mapping the pooled PSF features (+ log noise) of one level to its
    conditioning code (B, cond_dim)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.dense1 = _dense(c_in, c_out)
        self.dense2 = _dense(c_out, c_out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.silu(self.dense2(F.silu(self.dense1(z))))


class EncoderLevel(nn.Module):
    """``blocks_per_scale`` conditioned residual blocks at one resolution of the encoder."""

    def __init__(self, config: DeconvNetConfig, width: int):
        super().__init__()
        self.n_blocks = config.blocks_per_scale
        for b in range(self.n_blocks):
            self.add_module(f"block{b}", ResBlock(config, width))

    def forward(self, h, cond):
        for b in range(self.n_blocks):
            h = getattr(self, f"block{b}")(h, cond)
        return h


class DecoderLevel(nn.Module):
    """Decoder level: nearest ×2 upsampling + 3×3 conv, concatenation with the encoder's
    skip, 1×1 merge, then ``blocks_per_scale`` conditioned residual blocks."""

    def __init__(self, config: DeconvNetConfig, width: int, width_below: int):
        super().__init__()
        self.n_blocks = config.blocks_per_scale
        self.up = _conv(width_below, width)
        self.merge = _conv(2 * width, width, kernel=1)
        for b in range(self.n_blocks):
            self.add_module(f"block{b}", ResBlock(config, width))

    def forward(self, h, skip, cond):
        h = self.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.merge(torch.cat([h, skip], dim=1))
        for b in range(self.n_blocks):
            h = getattr(self, f"block{b}")(h, cond)
        return h


class DeconvNetTorch(nn.Module):
    """PSF-conditioned residual U-Net mapping a normalised observed stamp to the normalised
    truth estimate (galaxy ⊗ target PSF ⊗ pixel, see ``normalise.py``).

    ``forward(x, psf, noise)``: ``x`` and ``psf`` (B, n, n), ``noise`` (B,) (log10 of the
    normalised noise σ) → (B, n, n). Stamps are zero-padded to a multiple of
    2**(depth−1) and cropped back; with ``global_residual`` the network predicts a
    correction added to ``x``. Same module names as the flax model (``jax_model.py``)."""

    def __init__(self, config: DeconvNetConfig):
        super().__init__()
        self.config = config
        cfg = config
        widths = cfg.widths()
        if cfg.conditioning == "film":
            self.psf = PSFEncoder(cfg)
            for level in range(cfg.depth):
                self.add_module(f"cond{level}", CondMLP(cfg.cond_in_dim(level), cfg.cond_dim))
        self.stem = _conv(1, widths[0])
        for level in range(cfg.depth):
            self.add_module(f"enc{level}", EncoderLevel(cfg, widths[level]))
            if level < cfg.depth - 1:
                self.add_module(f"down{level}", _conv(widths[level], widths[level + 1], stride=2))
        for level in reversed(range(cfg.depth - 1)):
            self.add_module(f"dec{level}", DecoderLevel(cfg, widths[level], widths[level + 1]))
        if cfg.norm == "group":
            self.head_norm = _group_norm(cfg, widths[0])
        self.head = _conv(widths[0], 1, kernel=1, zero_init=True)

    def forward(self, x: torch.Tensor, psf: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = x.to(torch.float32)
        b, n_y, n_x = x.shape

        conds: list[torch.Tensor | None] = [None] * cfg.depth
        if cfg.conditioning == "film":
            psf = psf.to(torch.float32)
            wy, wx = centre_window(psf.shape[1], cfg.psf_size), centre_window(psf.shape[2], cfg.psf_size)
            psf = F.pad(psf, (wx[0], wx[1], wy[0], wy[1]))
            psf = psf[:, wy[2] : wy[2] + cfg.psf_size, wx[2] : wx[2] + cfg.psf_size]
            pooled = self.psf(psf[:, None])
            for level in range(cfg.depth):
                z = pooled[level]
                if cfg.use_noise_input:
                    z = torch.cat([z, noise.to(torch.float32).reshape(b, 1)], dim=1)
                conds[level] = getattr(self, f"cond{level}")(z)

        py, px = pad_amounts(n_y, cfg.multiple), pad_amounts(n_x, cfg.multiple)
        h = F.pad(x, (px[0], px[1], py[0], py[1]))[:, None]
        h = self.stem(h)
        skips = []
        for level in range(cfg.depth):
            h = getattr(self, f"enc{level}")(h, conds[level])
            if level < cfg.depth - 1:
                skips.append(h)
                h = getattr(self, f"down{level}")(h)
        for level in reversed(range(cfg.depth - 1)):
            h = getattr(self, f"dec{level}")(h, skips[level], conds[level])
        if cfg.norm == "group":
            h = self.head_norm(h)
        h = self.head(F.silu(h))[:, 0]
        out = h[:, py[0] : py[0] + n_y, px[0] : px[0] + n_x]
        if cfg.global_residual:
            out = out + x
        return out


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
