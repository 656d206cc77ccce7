"""DeconvFilter: a learned, PSF-conditioned Fourier filter that is linear in the image.

Estimate of ``truth = galaxy ⊗ T`` (T = target Gaussian ⊗ pixel), per stamp, on the
zero-padded grid of :mod:`deconvbench.fourier` (side N = ``padded_size(n, pad_factor)``)::

    D~(k) = I~(k) · H(k) · W(|k| σ_Γ)

* ``H = cut · T~/P~`` is the direct deconvolution of the ``fft`` baseline (P the
  effective PSF, ``cut`` zero where |P~| < ``threshold`` · max|P~|): with W ≡ 1 the
  model *is* ``fft`` (tested).
* ``W`` is real, isotropic, a function of ``q = |k| σ_Γ`` only, where σ_Γ = FWHM_Γ/2.3548
  (arcsec) is the width of the metacal reconvolution Gaussian Γ fitted to this stamp's
  PSF (:func:`deconvbench.metacal.psf_fit.reconv_fwhm`, ngmix "fitgauss"). ``W = 1`` for
  ``q ≤ q_flat`` (inside the band where metacal reads the image, Γ~ = exp(−q²/2) ≥
  exp(−q_flat²/2)); beyond, a Wiener form with a learned noise-to-signal shape::

      W(q) = (1 + ν² e^{g(q_flat)}) / (1 + ν² e^{g(q)}),   q > q_flat

  with ν = σ/s the relative noise level (s: the normalisation scale of
  ``normalise.py``, ≈ the peak surface brightness) and ``g`` piecewise linear and
  non-decreasing in q: ``g(q_flat) = g₀``, then ``n_nodes`` slopes ``softplus(a_j)``
  (per unit q, nodes ``dq`` apart; the last slope continues beyond the last node).
  ``g₀`` and ``a`` come from a small MLP of three per-stamp features
  (:func:`filter_features`): log10 ν, FWHM_Γ in pixels, and target FWHM / FWHM_Γ. So W
  is continuous, ≤ 1, non-increasing in q, and exactly 1 for a noiseless stamp (ν = 0):
  the noise dependence is the Wiener filter's, only the spectral shape is learned.

Why this form: metacalibration shears and reconvolves the deconvolved image with Γ;
it is unbiased when D is exact (up to noise) where Γ~ is not negligible. ``W(0) = 1``
conserves flux exactly, an isotropic W keeps round what is round (no PSF-ellipticity
leakage through the filter), and ``W = 1`` inside ``q_flat`` makes the image-dependent
part of the filter (through σ/s) invisible to metacal up to Γ~(q_flat). Given ν the
map is linear in the image; with ``use_noise_input=False`` the filter uses ν = σ (the
absolute noise level, no image statistic) and is exactly linear in the image.

The torch module :class:`DeconvFilterTorch` holds the MLP and applies the filter to
spectra prepared in numpy by :func:`prepare` (so training back-propagates through the
filter and the FFTs, float64 throughout).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from deconvbench import fourier as F

from .normalise import normalise

ARCH = "deconvfilter-v1"
N_FEATURES = 3


@dataclass(frozen=True)
class FilterConfig:
    q_flat: float = 2.0
    """W = 1 for |k| σ_Γ ≤ q_flat (Γ~ ≥ exp(−q_flat²/2)); 0 lets the filter act at all k > 0."""
    n_nodes: int = 16
    """Number of learned log-W slopes beyond q_flat."""
    dq: float = 0.35
    """Spacing of the nodes in q = |k| σ_Γ."""
    hidden: int = 32
    """Width of the two hidden layers of the MLP."""
    use_noise_input: bool = True
    """ν = σ/s (relative to the image's scale s); off: ν = σ, so the filter depends on the
    PSF and σ only and is exactly linear in the image."""
    threshold: float = 1e-3
    """The ``fft`` cut: T~/P~ set to 0 where |P~| < threshold · max|P~|."""
    pad_factor: float = 2.0
    """Padded FFT grid side ≥ pad_factor · n."""

    def __post_init__(self) -> None:
        if not (self.q_flat >= 0 and self.dq > 0 and self.threshold >= 0):
            raise ValueError("invalid FilterConfig: q_flat >= 0, dq > 0 and threshold >= 0 are required")
        for name in ("n_nodes", "hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"invalid FilterConfig: {name} must be an int >= 1, got {value!r}")
        F.padded_size(8, self.pad_factor)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": ARCH, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterConfig:
        data = dict(data)
        arch = data.pop("arch", ARCH)
        if arch != ARCH:
            raise ValueError(f"weights/config are for architecture {arch!r}, this code implements {ARCH!r}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown FilterConfig fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> FilterConfig:
        return cls.from_dict(json.loads(text))


def filter_features(
    observed, psf, noise_sigma, reconv_fwhm_arcsec, pixel_scale, target_fwhm_arcsec, relative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(z, nu)``: the (B, 3) float64 MLP input — log10 ν floored at 1e-4, FWHM_Γ /
    pixel_scale / 5, target FWHM / FWHM_Γ (all O(1)) — and the noise level ν (B,):
    σ/s (``relative``, s from ``normalise.py``) or σ."""
    _, _, noise_in, scale = normalise(observed, psf, noise_sigma)
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), scale.shape)
    sigma = np.where(np.isfinite(sigma), np.maximum(sigma, 0.0), 0.0)
    nu = sigma / scale if relative else sigma
    log_nu = noise_in.astype(np.float64) if relative else np.log10(np.maximum(nu, 1e-4))
    fwhm = np.asarray(reconv_fwhm_arcsec, dtype=np.float64)
    z = np.stack([log_nu, fwhm / pixel_scale / 5.0, np.full_like(fwhm, target_fwhm_arcsec) / fwhm], axis=1)
    return z, nu


def transfer_and_q(psf, reconv_fwhm_arcsec, pixel_scale, target_fwhm_arcsec, config: FilterConfig, n: int):
    """``(H, q)``: ``H = cut · T~/P~`` (B, N, N//2+1) complex (the ``fft`` baseline's
    transfer) and ``q = |k| σ_Γ`` (B, N, N//2+1) on the padded grid."""
    from deconvbench_baselines.fft import cut_window

    N = F.padded_size(n, config.pad_factor)
    P = F.otf(psf, N)
    T = F.target_transfer(N, target_fwhm_arcsec, pixel_scale)
    window = cut_window(P, config.threshold, "hard")
    H = window * T / np.where(window > 0, P, 1.0)
    sigma_gamma = np.asarray(reconv_fwhm_arcsec, dtype=np.float64) / F.FWHM_PER_SIGMA
    q = F.radial_wavenumber(N, pixel_scale)[None] * sigma_gamma[:, None, None]
    return H, q


def reconv_fwhm_or_psf(psf, pixel_scale: float) -> np.ndarray:
    """FWHM_Γ (arcsec) of each stamp's metacal kernel (ngmix "fitgauss"); where the
    PSF fit fails, 4 pixels (it only sets the frequency scale of W)."""
    from deconvbench.metacal.psf_fit import reconv_fwhm

    fwhm = reconv_fwhm(psf, pixel_scale)
    return np.where(np.isfinite(fwhm) & (fwhm > 0), fwhm, 4.0 * pixel_scale)


def prepare(observed, psf, noise_sigma, pixel_scale, target_fwhm_arcsec, config: FilterConfig, extra=()):
    """Numpy inputs of :class:`DeconvFilterTorch` for a batch: ``{"spec": I~ (B, N, M)
    complex, "H", "q", "z"}``, plus ``spec_<name>`` for every array in ``extra`` (e.g.
    truth, noiseless: their spectra on the same grid). N = padded side, M = N//2+1."""
    observed = F.as_stack(observed, "observed")
    n = observed.shape[-1]
    N = F.padded_size(n, config.pad_factor)
    fwhm = reconv_fwhm_or_psf(psf, pixel_scale)
    H, q = transfer_and_q(psf, fwhm, pixel_scale, target_fwhm_arcsec, config, n)
    z, nu = filter_features(
        observed, psf, noise_sigma, fwhm, pixel_scale, target_fwhm_arcsec, relative=config.use_noise_input
    )
    out = {"spec": F.rfft2(F.pad_centered(observed, N)), "H": H, "q": q, "z": z, "nu": nu, "fwhm_gamma": fwhm}
    for name, images in dict(extra).items():
        out[f"spec_{name}"] = F.rfft2(F.pad_centered(F.as_stack(images, name), N))
    return out


def _torch_module():
    import torch
    from torch import nn

    class DeconvFilterTorch(nn.Module):
        """MLP features → (g₀, slopes of g); ``weights(q, z, nu)`` and
        ``forward(spec, H, q, z, nu)`` (the filtered spectrum). Float64."""

        def __init__(self, config: FilterConfig):
            super().__init__()
            self.config = config
            self.mlp = nn.Sequential(
                nn.Linear(N_FEATURES, config.hidden),
                nn.SiLU(),
                nn.Linear(config.hidden, config.hidden),
                nn.SiLU(),
                nn.Linear(config.hidden, config.n_nodes + 1),
            ).to(torch.float64)
            with torch.no_grad():  # start near g₀ = 0 with slopes softplus(0) ≈ 0.7 per unit q
                self.mlp[-1].weight.mul_(0.1)
                self.mlp[-1].bias.fill_(0.0)

        def weights(self, q: torch.Tensor, z: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
            cfg = self.config
            out = self.mlp(z)
            g0, slopes = out[:, :1], nn.functional.softplus(out[:, 1:])  # (B, 1), (B, K) ≥ 0
            # g at the nodes q_flat + j dq, j = 0..K: g₀, then cumulative slope·dq
            cum = torch.cat([g0, g0 + torch.cumsum(slopes, dim=1) * cfg.dq], dim=1)
            t = torch.clamp((q - cfg.q_flat) / cfg.dq, min=0.0)  # (B, N, M), node units
            j = torch.clamp(torch.floor(t), max=cfg.n_nodes - 1).long()
            flat = j.reshape(len(q), -1)
            lo = torch.gather(cum, 1, flat).reshape(q.shape)
            slope = torch.gather(slopes, 1, flat).reshape(q.shape)
            g = lo + slope * (t - j) * cfg.dq
            # W = (1 + ν² e^{g₀}) / (1 + ν² e^{g}) in log space: softplus(g + 2 ln ν) never
            # overflows (e^g does once training pushes g past ~700: inf/inf = NaN); ν = 0 gives W = 1
            log_nu2 = torch.log(nu**2).reshape(-1, 1, 1)
            softplus = nn.functional.softplus
            return torch.exp(softplus(g0.reshape(-1, 1, 1) + log_nu2) - softplus(g + log_nu2))

        def forward(self, spec, H, q, z, nu):
            return spec * H * self.weights(q, z, nu)

    return DeconvFilterTorch


def build_torch_model(config: FilterConfig):
    return _torch_module()(config)


def to_stamps(spec, N: int, n: int):
    """Inverse FFT of filtered spectra (torch, (B, N, M)) cropped to the centred n×n."""
    import torch

    out = torch.fft.irfft2(spec, s=(N, N), dim=(-2, -1))
    o = N // 2 - n // 2
    return out[..., o : o + n, o : o + n]


def torch_state_to_flat(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def flat_to_torch_state(flat: dict[str, np.ndarray]):
    import torch

    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in flat.items()}


CONFIG_KEY = "__config__"
METADATA_KEY = "__metadata__"


def save_filter_weights(path, flat: dict[str, np.ndarray], config: FilterConfig, metadata: dict | None = None):
    """Write the MLP parameters (float64) + config + metadata JSON as an ``.npz``, atomically."""
    from deconvbench.atomic import atomic_write

    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in flat.items()}
    arrays[CONFIG_KEY] = np.array(config.to_json())
    arrays[METADATA_KEY] = np.array(json.dumps(dict(metadata or {}), sort_keys=True, default=str))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_filter_weights(path) -> tuple[dict[str, np.ndarray], FilterConfig, dict]:
    """Inverse of :func:`save_filter_weights`; ValueError when it is not such a file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable DeconvFilter weights file: {exc}") from exc
    if CONFIG_KEY not in arrays:
        raise ValueError(f"{path} is not a DeconvFilter weights file (no {CONFIG_KEY} entry)")
    config = FilterConfig.from_json(str(arrays.pop(CONFIG_KEY)))
    metadata = json.loads(str(arrays.pop(METADATA_KEY))) if METADATA_KEY in arrays else {}
    return arrays, config, metadata
