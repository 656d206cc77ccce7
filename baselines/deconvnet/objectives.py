"""Metacal-aware training objectives for DeconvNet (the U-Net), each a config switch.

``UNetObjective`` holds the weight of each term of the training loss (``deconvbench
train --framework torch --set shear_weight=1 ...``); with the defaults (pixel loss only)
training is exactly the plain DeconvNet training of :mod:`.train`.

Terms (all but ``pixel`` are dimensionless per-stamp ratios, averaged over stamps):

* ``pixel``: the existing loss, mean squared error of the normalised output against
  ``truth / s`` (``normalise.py``), on the noisy stamp.
* ``shear`` (shear equivariance): the output for a sheared galaxy should be the sheared
  output for the unsheared one, ``f(obs(G_g)) = M_g f(obs(G))`` with
  ``M_g D = F⁻¹[D~(Sᵀk) T~(k)/T~(Sᵀk)]``: shear the galaxy *under* the target
  (metacal's own operation, :mod:`deconvbench.metacal.shear_ops`). The term is
  ``Σ(f(obs(G_g)) − M_g f(obs(G)))² / Σ(M_g f(obs(G)) − f(obs(G)))²`` (the second factor
  held fixed): the squared relative error of the output's *response* to the shear, with a
  random shear per batch, ``|g|`` uniform in ``[shear_max/2, shear_max]``, random
  direction. ``shear_norm="output"`` normalises by ``Σ(M_g f)²`` instead (an NMSE): that
  form rewards blurring, since a blurred output barely changes under a shear (it made
  metacal m worse in the ablation, see the README).
* ``psf`` (PSF invariance): the same galaxy seen through another PSF (another stamp's
  PSF of the batch, sheared by a random ``|e| ≤ psf_shear_max``, so elliptical PSFs are
  included) should give the same output: ``NMSE(f(obs(G; P₂), P₂), stop_gradient(f(obs(G; P), P)))``.
  This is what the leakage α measures.
* ``band``: the metacal-band error of the output, ``Σ|(D~ − truth~)Γ~/T~|² / Σ|truth~Γ~/T~|²``
  (Γ the stamp's reconvolution Gaussian; :func:`.losses.band_loss`).
* ``flux``: ``((ΣD − Σtruth)/Σtruth)²``.

The equivariance terms (and ``band``/``flux``) use *noiseless* inputs, where they hold
per stamp for an exact deconvolver; with noise even the exact inverse is equivariant
only in expectation (``n ⊗ T/P`` does not commute with a shear of ``n`` for a non-round
P), so a per-realisation consistency term would reward smoothing, not calibration.
The noiseless observations are built from the stamp's ``truth`` in Fourier space
(:func:`observe_from_truth`): ``obs = truth ⊗ P/T``, exact for band-limited stamps and
equal to the rendered ``noiseless`` stamp to the accuracy measured in the tests.

PyTorch only: the JAX backend trains the pixel loss (a UsageError says so otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from deconvbench import fourier as F
from deconvbench.metacal.shear_ops import shear_images, shear_matrix

PAD = 2.0
# |P~/T~| is capped where the target's transfer is tiny (corners of the band): there the
# truth's spectrum is float32 round-off, which the ratio would amplify.
RATIO_CAP = 1e3


@dataclass(frozen=True)
class UNetObjective:
    """Weights of the training-loss terms (see the module docstring) and their settings.

    ``init_weights``: a neutral ``.npz`` (``convert.py``) to start from instead of a random
    initialisation (fine-tuning); its config must equal the run's."""

    pixel_weight: float = 1.0
    shear_weight: float = 0.0
    psf_weight: float = 0.0
    band_weight: float = 0.0
    flux_weight: float = 0.0
    shear_max: float = 0.05
    psf_shear_max: float = 0.05
    shear_norm: str = "response"
    init_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_weight", "shear_weight", "psf_weight", "band_weight", "flux_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.shear_norm not in ("response", "output"):
            raise ValueError(f"shear_norm must be 'response' or 'output', got {self.shear_norm!r}")
        for name in ("shear_max", "psf_shear_max"):
            if not 0 <= getattr(self, name) <= 0.2:
                raise ValueError(f"{name} must be in [0, 0.2], got {getattr(self, name)!r}")

    @property
    def extra_terms(self) -> bool:
        """True when any term beyond the pixel loss is on."""
        return any((self.shear_weight, self.psf_weight, self.band_weight, self.flux_weight))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}


# -- Fourier-space views (numpy, float64) ---------------------------------------------------
def target_shear_ratio(N: int, pixel_scale: float, target_fwhm: float, g1: float, g2: float) -> np.ndarray:
    """``T~(k) / T~(Sᵀk)`` on the ``(N, N//2+1)`` rfft grid (T = Gaussian ⊗ pixel)."""
    ky, kx = F.k_grid(N, pixel_scale)
    S = shear_matrix(g1, g2)
    num = F.gaussian_ft(kx, ky, target_fwhm) * F.pixel_ft(kx, ky, pixel_scale)
    den = F.gaussian_ft(kx, ky, target_fwhm, S) * F.pixel_ft(kx, ky, pixel_scale, S)
    return num / den


def shear_under_target(images, g1: float, g2: float, pixel_scale: float, target_fwhm: float) -> np.ndarray:
    """``M_g D``: the galaxy of ``D = galaxy ⊗ T`` sheared by ``(g1, g2)`` (GalSim reduced
    shear), still convolved with the round target T. (B, n, n) float64."""
    sheared = shear_images(images, g1, g2, pad_factor=PAD)
    N = F.padded_size(sheared.shape[-1], PAD)
    return F.convolve(sheared, target_shear_ratio(N, pixel_scale, target_fwhm, g1, g2), pad_factor=PAD)


def observe_from_truth(truth, psf, pixel_scale: float, target_fwhm: float) -> np.ndarray:
    """The noiseless observation ``galaxy ⊗ P`` from ``truth = galaxy ⊗ T`` and the
    (pixelated, centred) PSF stamp: ``truth ⊗ P/T`` on the padded grid, with |P~/T~|
    capped at ``RATIO_CAP``. (B, n, n) float64."""
    truth = F.as_stack(truth, "truth")
    n = truth.shape[-1]
    N = F.padded_size(n, PAD)
    ratio = F.otf(psf, N) / F.target_transfer(N, target_fwhm, pixel_scale)[None]
    mag = np.abs(ratio)
    ratio = np.where(mag > RATIO_CAP, ratio * (RATIO_CAP / np.maximum(mag, 1e-300)), ratio)
    return F.convolve(truth, ratio, pad_factor=PAD)


def random_shear(rng: np.random.Generator, g_max: float, g_min: float = 0.0) -> tuple[float, float]:
    """``(g1, g2)`` with ``|g|`` uniform in ``[g_min, g_max]`` and a uniform direction."""
    g = rng.uniform(g_min, g_max)
    angle = rng.uniform(0.0, np.pi)
    return float(g * np.cos(2 * angle)), float(g * np.sin(2 * angle))


# -- one training step (PyTorch) --------------------------------------------------------------
def _nmse(torch, a, b):
    num = ((a - b) ** 2).reshape(len(a), -1).sum(dim=1)
    den = (b**2).reshape(len(b), -1).sum(dim=1).clamp_min(1e-30)
    return (num / den).mean()


def objective_step(backend, rng, observed, psf, sigma, truth, objective: UNetObjective, geometry: dict) -> dict:
    """One optimizer step of the torch backend on the weighted objective; returns the
    float value of each term and ``total``. ``geometry``: ``pixel_scale_arcsec``,
    ``target_fwhm_arcsec`` of the training data."""
    from .losses import band_loss, flux_loss
    from .normalise import normalise, normalise_target

    torch = backend.torch
    model, device = backend.model, backend.device
    scale_arcsec, target_fwhm = geometry["pixel_scale_arcsec"], geometry["target_fwhm_arcsec"]

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    def forward(obs, psf_stamps, noise_sigma):
        """Output in flux units (the normalised output times the stamp's scale)."""
        x, psf_in, noise_in, s = normalise(obs, psf_stamps, noise_sigma)
        return model(tensor(x), tensor(psf_in), tensor(noise_in)) * tensor(s)[:, None, None], (x, psf_in, noise_in, s)

    model.train()
    backend.optimizer.zero_grad(set_to_none=True)
    terms = {}
    pred, (x, psf_in, noise_in, s) = forward(observed, psf, sigma)
    target = tensor(normalise_target(truth, s))
    terms["pixel"] = torch.mean((pred / tensor(s)[:, None, None] - target) ** 2)
    total = objective.pixel_weight * terms["pixel"]

    noiseless_sigma = np.zeros_like(sigma)
    base = None
    if objective.shear_weight or objective.psf_weight or objective.band_weight or objective.flux_weight:
        obs0 = observe_from_truth(truth, psf, scale_arcsec, target_fwhm)
        with torch.set_grad_enabled(bool(objective.band_weight or objective.flux_weight)):
            base, _ = forward(obs0, psf, noiseless_sigma)  # only band/flux differentiate through it
        base_np = base.detach().cpu().numpy().astype(np.float64)
    if objective.band_weight or objective.flux_weight:
        from .filter_model import reconv_fwhm_or_psf

        n = truth.shape[-1]
        N = F.padded_size(n, PAD)
        spec_est = torch.fft.rfft2(_pad(torch, base.double(), N))
        spec_truth = torch.from_numpy(F.rfft2(F.pad_centered(np.asarray(truth, np.float64), N))).to(device)
        if objective.band_weight:
            sigma_gamma = reconv_fwhm_or_psf(psf, scale_arcsec) / F.FWHM_PER_SIGMA
            q = F.radial_wavenumber(N, scale_arcsec)[None] * sigma_gamma[:, None, None]
            weight = np.exp(-0.5 * q**2) / F.target_transfer(N, target_fwhm, scale_arcsec)
            terms["band"] = band_loss(spec_est, spec_truth, torch.from_numpy(weight).to(device))
            total = total + objective.band_weight * terms["band"]
        if objective.flux_weight:
            terms["flux"] = flux_loss(spec_est, spec_truth)
            total = total + objective.flux_weight * terms["flux"]
    if objective.shear_weight:
        g1, g2 = random_shear(rng, objective.shear_max, objective.shear_max / 2)
        obs_g = observe_from_truth(
            shear_under_target(truth, g1, g2, scale_arcsec, target_fwhm), psf, scale_arcsec, target_fwhm
        )
        want = shear_under_target(base_np, g1, g2, scale_arcsec, target_fwhm)
        got, _ = forward(obs_g, psf, noiseless_sigma)
        # relative to the shear's own signal |M_g f − f|², not to |M_g f|²: otherwise a blurred
        # output (whose shape barely changes under a shear) satisfies the term trivially
        reference = want - base_np if objective.shear_norm == "response" else want
        signal = (reference**2).reshape(len(want), -1).sum(axis=1)
        residual = ((got - tensor(want)) ** 2).reshape(len(want), -1).sum(dim=1)
        terms["shear"] = (residual / tensor(np.maximum(signal, 1e-30))).mean()
        total = total + objective.shear_weight * terms["shear"]
    if objective.psf_weight:
        other = np.roll(np.asarray(psf, np.float64), 1, axis=0)
        e1, e2 = random_shear(rng, objective.psf_shear_max)
        psf2 = shear_images(other, e1, e2, pad_factor=PAD)
        psf2 = psf2 / psf2.sum(axis=(-2, -1), keepdims=True)
        obs2 = observe_from_truth(truth, psf2, scale_arcsec, target_fwhm)
        got, _ = forward(obs2, psf2, noiseless_sigma)
        terms["psf"] = _nmse(torch, got, tensor(base_np))
        total = total + objective.psf_weight * terms["psf"]
    total.backward()
    backend.optimizer.step()
    out = {key: float(value.detach()) if hasattr(value, "detach") else float(value) for key, value in terms.items()}
    out["total"] = float(total.detach())
    return out


def _pad(torch, images, N: int):
    """Centred zero padding of (B, n, n) to (B, N, N), as :func:`deconvbench.fourier.pad_centered`."""
    n = images.shape[-1]
    lo = N // 2 - n // 2
    return torch.nn.functional.pad(images, (lo, N - n - lo, lo, N - n - lo))
