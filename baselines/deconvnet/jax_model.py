"""DeconvNet in JAX / flax.linen (layout NHWC, kernels HWIO).

Same layer structure and parameter names as ``torch_model.py``; the flattened
parameter path (joined with ".") is the key of the neutral weights format, e.g.
``enc0.block1.conv2.kernel``. See ``config.py`` for the architecture summary.

Call: ``DeconvNetJax(config).apply({"params": p}, x, psf, noise)`` with ``x`` (B, n, n)
normalised observed image, ``psf`` (B, n, n) PSF scaled to peak 1, ``noise`` (B,)
log relative noise level (all from ``normalise.normalise``); returns (B, n, n), the
normalised truth estimate. Any n: the image is zero-padded to a multiple of
``2**(depth-1)`` and cropped back.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import DeconvNetConfig, centre_window, pad_amounts

GN_EPS = 1e-5
_zeros = nn.initializers.zeros


def _conv(features: int, name: str, kernel: int = 3, stride: int = 1, zero_init: bool = False) -> nn.Conv:
    pad = kernel // 2
    kwargs = {"kernel_init": _zeros} if zero_init else {}
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)), name=name, **kwargs
    )


def _upsample2(h: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
    """Pre-activation residual block: [GN] -> FiLM -> SiLU -> conv3x3 -> [GN] -> SiLU ->
    conv3x3 (zero-initialised), plus identity skip."""

    config: DeconvNetConfig
    width: int

    @nn.compact
    def __call__(self, h: jax.Array, cond: jax.Array | None) -> jax.Array:
        cfg = self.config
        y = h
        if cfg.norm == "group":
            y = nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=GN_EPS, use_fast_variance=False, name="norm1")(y)
        if cond is not None:
            gb = nn.Dense(2 * self.width, kernel_init=_zeros, name="film")(cond)
            gamma, beta = gb[:, : self.width], gb[:, self.width :]
            y = y * (1.0 + gamma[:, None, None, :]) + beta[:, None, None, :]
        y = _conv(self.width, "conv1")(nn.silu(y))
        if cfg.norm == "group":
            y = nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=GN_EPS, use_fast_variance=False, name="norm2")(y)
        y = _conv(self.width, "conv2", zero_init=True)(nn.silu(y))
        return h + y


class PSFBlock(nn.Module):
    """Residual block of the PSF encoder (no normalisation): p + conv2(SiLU(conv1(SiLU(p))))."""

    width: int

    @nn.compact
    def __call__(self, p: jax.Array) -> jax.Array:
        y = _conv(self.width, "conv1")(nn.silu(p))
        y = _conv(self.width, "conv2")(nn.silu(y))
        return p + y


class PSFEncoder(nn.Module):
    """Per level: one PSFBlock, global mean pool; stride-2 conv between levels."""

    config: DeconvNetConfig

    @nn.compact
    def __call__(self, psf: jax.Array) -> list[jax.Array]:
        cfg = self.config
        widths = cfg.psf_widths()
        p = _conv(widths[0], "stem")(psf)
        pooled = []
        for level in range(cfg.depth):
            p = PSFBlock(widths[level], name=f"level{level}")(p)
            pooled.append(jnp.mean(nn.silu(p), axis=(1, 2)))
            if level < cfg.depth - 1:
                p = _conv(widths[level + 1], f"down{level}", stride=2)(nn.silu(p))
        return pooled


class CondMLP(nn.Module):
    """Pooled PSF features (+ noise level) -> conditioning vector of one level."""

    config: DeconvNetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        z = nn.silu(nn.Dense(self.config.cond_dim, name="dense1")(z))
        return nn.silu(nn.Dense(self.config.cond_dim, name="dense2")(z))


class EncoderLevel(nn.Module):
    config: DeconvNetConfig
    width: int

    @nn.compact
    def __call__(self, h, cond):
        for b in range(self.config.blocks_per_scale):
            h = ResBlock(self.config, self.width, name=f"block{b}")(h, cond)
        return h


class DecoderLevel(nn.Module):
    """Upsample (nearest x2 + conv3x3), concatenate the skip, 1x1 merge conv, blocks."""

    config: DeconvNetConfig
    width: int

    @nn.compact
    def __call__(self, h, skip, cond):
        h = _conv(self.width, "up")(_upsample2(h))
        h = _conv(self.width, "merge", kernel=1)(jnp.concatenate([h, skip], axis=-1))
        for b in range(self.config.blocks_per_scale):
            h = ResBlock(self.config, self.width, name=f"block{b}")(h, cond)
        return h


class DeconvNetJax(nn.Module):
    config: DeconvNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, psf: jax.Array, noise: jax.Array) -> jax.Array:
        cfg = self.config
        widths = cfg.widths()
        x = jnp.asarray(x, jnp.float32)
        b, n_y, n_x = x.shape

        # conditioning vectors, one per level
        conds: list[jax.Array | None] = [None] * cfg.depth
        if cfg.conditioning == "film":
            psf = jnp.asarray(psf, jnp.float32)
            wy, wx = centre_window(psf.shape[1], cfg.psf_size), centre_window(psf.shape[2], cfg.psf_size)
            psf = jnp.pad(psf, ((0, 0), wy[:2], wx[:2]))
            psf = psf[:, wy[2] : wy[2] + cfg.psf_size, wx[2] : wx[2] + cfg.psf_size]
            pooled = PSFEncoder(cfg, name="psf")(psf[..., None])
            for level in range(cfg.depth):
                z = pooled[level]
                if cfg.use_noise_input:
                    z = jnp.concatenate([z, jnp.asarray(noise, jnp.float32).reshape(b, 1)], axis=-1)
                conds[level] = CondMLP(cfg, name=f"cond{level}")(z)

        # image path
        py, px = pad_amounts(n_y, cfg.multiple), pad_amounts(n_x, cfg.multiple)
        h = jnp.pad(x, ((0, 0), py, px))[..., None]
        h = _conv(widths[0], "stem")(h)
        skips = []
        for level in range(cfg.depth):
            h = EncoderLevel(cfg, widths[level], name=f"enc{level}")(h, conds[level])
            if level < cfg.depth - 1:
                skips.append(h)
                h = _conv(widths[level + 1], f"down{level}", stride=2)(h)
        for level in reversed(range(cfg.depth - 1)):
            h = DecoderLevel(cfg, widths[level], name=f"dec{level}")(h, skips[level], conds[level])
        if cfg.norm == "group":
            h = nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=GN_EPS, use_fast_variance=False, name="head_norm")(h)
        h = _conv(1, "head", kernel=1, zero_init=True)(nn.silu(h))[..., 0]
        out = h[:, py[0] : py[0] + n_y, px[0] : px[0] + n_x]
        if cfg.global_residual:
            out = out + x
        return out


PRNG_IMPL = "rbg"
"""PRNG used for initialisation: XLA's RngBitGenerator compiles several times faster
on CPU than the default threefry (seconds instead of tens of seconds for ``init``);
it is deterministic for a given seed on a given JAX installation."""


@functools.lru_cache(maxsize=8)
def _jitted_init(config: DeconvNetConfig):
    return jax.jit(DeconvNetJax(config).init)


def init_params(config: DeconvNetConfig, seed: int = 0):
    """Initial parameters (a nested dict) for ``config``, from ``jax.random.key(seed)``.

    The parameters do not depend on the stamp size (a ``psf_size`` square dummy input
    traces the model). ``init`` is jit-compiled once per config and cached.
    """
    n = config.psf_size
    x = jnp.zeros((1, n, n), jnp.float32)
    key = jax.random.key(seed, impl=PRNG_IMPL)
    return _jitted_init(config)(key, x, x, jnp.zeros((1,), jnp.float32))["params"]


def count_params(params) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
