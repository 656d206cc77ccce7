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
* ``equivariance_space="metacal"`` measures both symmetries where metacal reads the
  image instead of in pixels: the output is reconvolved with the stamp's Γ (``⊗ Γ/T``) and
  its ellipticity ``e = (Q11 − Q22, 2Q12)/(Q11 + Q22)`` taken from second moments under
  wmom's Gaussian weight (FWHM 1.2″), centred on the unsheared output. ``shear`` is then
  ``|e(f(obs(G_g))) − e(M_g f(obs(G)))|² / |g|²``, the squared error of the response
  (≈ m² for a multiplicative bias m), and ``psf`` is ``mean|e(f(obs₂)) − e(f(obs))|² /
  mean|e(P₂) − e(P)|²``, a leakage² (≈ α²). Texture beyond the metacal band, which
  dominates the pixel forms, does not enter.
* ``band``: the metacal-band error of the output, ``Σ|(D~ − truth~)Γ~/T~|² / Σ|truth~Γ~/T~|²``
  (Γ the stamp's reconvolution Gaussian; :func:`.losses.band_loss`).
* ``flux``: ``((ΣD − Σtruth)/Σtruth)²``.
* ``noiseless``: the pixel loss of the output from the noiseless view the equivariance
  terms start from (whose output they hold fixed): it anchors that output to the truth.

``equivariance_target`` says what the symmetric output is compared with. ``"truth"``
(default): both outputs are differentiated and the *change* of the output is matched to
the change of the truth (shear: ``Δe`` of the outputs against ``Δe`` of ``truth`` and
``M_g truth`` in metacal space, or the pixel change against ``M_g truth − truth``; PSF:
the two outputs against each other). ``"output"``: the unsheared output is held fixed
(stop-gradient) as the target, a self-consistency that the ablation shows drifts (the
terms above describe this form).

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
#: FWHM (arcsec) of the Gaussian weight of the metacal-space terms (wmom's default)
WEIGHT_FWHM_ARCSEC = 1.2
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
    noiseless_weight: float = 0.0
    shear_max: float = 0.05
    psf_shear_max: float = 0.05
    shear_norm: str = "response"
    equivariance_space: str = "pixels"
    equivariance_target: str = "truth"
    init_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_weight", "shear_weight", "psf_weight", "band_weight", "flux_weight", "noiseless_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.equivariance_target not in ("truth", "output"):
            raise ValueError(f"equivariance_target must be 'truth' or 'output', got {self.equivariance_target!r}")
        if self.equivariance_space not in ("pixels", "metacal"):
            raise ValueError(f"equivariance_space must be 'pixels' or 'metacal', got {self.equivariance_space!r}")
        if self.shear_norm not in ("response", "output"):
            raise ValueError(f"shear_norm must be 'response' or 'output', got {self.shear_norm!r}")
        for name in ("shear_max", "psf_shear_max"):
            if not 0 <= getattr(self, name) <= 0.2:
                raise ValueError(f"{name} must be in [0, 0.2], got {getattr(self, name)!r}")

    def check_framework(self, framework: str) -> None:
        """ValueError when terms beyond the pixel loss are asked of a framework other than torch."""
        if self.extra_terms and framework != "torch":
            raise ValueError(
                "training objectives beyond pixel_weight need --framework torch (JAX trains the pixel loss)"
            )

    @property
    def extra_terms(self) -> bool:
        """True when any term beyond the pixel loss is on."""
        return any((self.shear_weight, self.psf_weight, self.band_weight, self.flux_weight, self.noiseless_weight))

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
def objective_step(backend, rng, observed, psf, sigma, truth, objective: UNetObjective, geometry: dict) -> dict:
    """One optimizer step of the torch backend on the weighted objective; returns the
    float value of each term and ``total``. ``geometry``: ``pixel_scale_arcsec``,
    ``target_fwhm_arcsec`` of the training data."""
    from .losses import band_loss, equivariance_loss, flux_loss
    from .normalise import normalise, normalise_target

    torch = backend.torch
    model, device = backend.model, backend.device
    scale_arcsec, target_fwhm = geometry["pixel_scale_arcsec"], geometry["target_fwhm_arcsec"]

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    def forward(obs, psf_stamps, noise_sigma):
        """(normalised output, per-stamp scale s); the output in flux units is their product."""
        x, psf_in, noise_in, s = normalise(obs, psf_stamps, noise_sigma)
        return model(tensor(x), tensor(psf_in), tensor(noise_in)), s

    def flux_units(normalised, s):
        return normalised * tensor(s)[:, None, None]

    model.train()
    backend.optimizer.zero_grad(set_to_none=True)
    terms = {}
    pred, s = forward(observed, psf, sigma)
    terms["pixel"] = torch.mean((pred - tensor(normalise_target(truth, s))) ** 2)
    total = objective.pixel_weight * terms["pixel"]

    noiseless_sigma = np.zeros_like(sigma)
    if objective.extra_terms:
        obs0 = observe_from_truth(truth, psf, scale_arcsec, target_fwhm)
        paired = objective.equivariance_target == "truth" and bool(objective.shear_weight or objective.psf_weight)
        differentiate = paired or bool(objective.band_weight or objective.flux_weight or objective.noiseless_weight)
        with torch.set_grad_enabled(differentiate):
            base_normalised, s0 = forward(obs0, psf, noiseless_sigma)
            base = flux_units(base_normalised, s0)
        base_np = base.detach().cpu().numpy().astype(np.float64)
    if objective.noiseless_weight:  # the pixel loss on the noiseless stamp the other terms start from
        terms["noiseless"] = torch.mean((base_normalised - tensor(normalise_target(truth, s0))) ** 2)
        total = total + objective.noiseless_weight * terms["noiseless"]
    n = truth.shape[-1]
    N = F.padded_size(n, PAD)
    band = None
    if objective.band_weight or objective.equivariance_space == "metacal":
        from .filter_model import reconv_fwhm_or_psf

        sigma_gamma = reconv_fwhm_or_psf(psf, scale_arcsec) / F.FWHM_PER_SIGMA
        q = F.radial_wavenumber(N, scale_arcsec)[None] * sigma_gamma[:, None, None]
        band = torch.from_numpy(np.exp(-0.5 * q**2) / F.target_transfer(N, target_fwhm, scale_arcsec)).to(device)
    if objective.band_weight or objective.flux_weight:
        spec_est = torch.fft.rfft2(_pad(torch, base.double(), N))
        spec_truth = torch.from_numpy(F.rfft2(F.pad_centered(np.asarray(truth, np.float64), N))).to(device)
        if objective.band_weight:
            terms["band"] = band_loss(spec_est, spec_truth, band)
            total = total + objective.band_weight * terms["band"]
        if objective.flux_weight:
            terms["flux"] = flux_loss(spec_est, spec_truth)
            total = total + objective.flux_weight * terms["flux"]
    metacal = objective.equivariance_space == "metacal"
    to_truth = objective.equivariance_target == "truth"
    if metacal and (objective.shear_weight or objective.psf_weight):
        sigma_w = WEIGHT_FWHM_ARCSEC / F.FWHM_PER_SIGMA / scale_arcsec

        def ellipticity(images, centre):
            return _weighted_ellipticity(torch, _reconvolved(torch, images, band, N), centre, sigma_w)

        truth_t = torch.from_numpy(np.asarray(truth, np.float64)).to(device)
        centre = _weighted_centroid(
            torch, _reconvolved(torch, truth_t if to_truth else base.detach(), band, N), sigma_w
        )
        e_base = ellipticity(base.double() if to_truth else base.detach().double(), centre)
    if objective.shear_weight:
        g1, g2 = random_shear(rng, objective.shear_max, objective.shear_max / 2)
        truth_g = shear_under_target(truth, g1, g2, scale_arcsec, target_fwhm)
        obs_g = observe_from_truth(truth_g, psf, scale_arcsec, target_fwhm)
        got = flux_units(*forward(obs_g, psf, noiseless_sigma))
        if metacal and to_truth:  # response matching: Δe of the outputs = Δe of the truths, over |g|
            d_true = ellipticity(torch.from_numpy(truth_g).to(device), centre) - ellipticity(truth_t, centre)
            d_out = ellipticity(got.double(), centre) - e_base
            terms["shear"] = ((d_out - d_true) ** 2).sum(dim=1).mean() / (g1**2 + g2**2)
        elif metacal:  # self-consistency: e(f(obs_g)) against e(M_g f), M_g f held fixed
            e_want = ellipticity(
                torch.from_numpy(shear_under_target(base_np, g1, g2, scale_arcsec, target_fwhm)).to(device), centre
            )
            terms["shear"] = ((ellipticity(got.double(), centre) - e_want) ** 2).sum(dim=1).mean() / (g1**2 + g2**2)
        elif to_truth:  # the output's change under the shear = the truth's change
            change = torch.from_numpy(truth_g - np.asarray(truth, np.float64)).to(device)
            residual = ((got.double() - base.double() - change) ** 2).reshape(len(got), -1).sum(dim=1)
            terms["shear"] = (residual / (change**2).reshape(len(got), -1).sum(dim=1).clamp_min(1e-30)).mean()
        else:
            want = shear_under_target(base_np, g1, g2, scale_arcsec, target_fwhm)
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
        got = flux_units(*forward(obs2, psf2, noiseless_sigma))
        if metacal:  # leakage²: output ellipticity change over PSF ellipticity change (both read alike)
            psf_pair = torch.from_numpy(np.concatenate([np.asarray(psf, np.float64), psf2])).to(device)
            psf_centre = torch.full((2 * len(psf), 2), float(n // 2), dtype=torch.float64, device=device)
            e_psf = _weighted_ellipticity(torch, psf_pair, psf_centre, sigma_w)
            d_psf = ((e_psf[len(psf) :] - e_psf[: len(psf)]) ** 2).sum(dim=1).mean().clamp_min(1e-12)
            terms["psf"] = ((ellipticity(got.double(), centre) - e_base) ** 2).sum(dim=1).mean() / d_psf
        else:  # both outputs differentiable with target "truth", the first held fixed with "output"
            reference = base if to_truth else tensor(base_np)
            truth_energy = tensor((np.asarray(truth, np.float64) ** 2).reshape(len(truth), -1).sum(axis=1))
            residual = ((got - reference) ** 2).reshape(len(got), -1).sum(dim=1)
            terms["psf"] = (
                (residual / truth_energy.clamp_min(1e-30)).mean() if to_truth else equivariance_loss(got, reference)
            )
        total = total + objective.psf_weight * terms["psf"]
    total.backward()
    backend.optimizer.step()
    out = {key: float(value.detach()) if hasattr(value, "detach") else float(value) for key, value in terms.items()}
    out["total"] = float(total.detach())
    return out


def _reconvolved(torch, images, band, N: int):
    """``images ⊗ Γ/T`` (float64, cropped back to n): what metacal measures, the deconvolved
    image reconvolved with this stamp's Γ (``band`` = Γ~/T~ on the padded rfft grid)."""
    from .filter_model import to_stamps

    return to_stamps(torch.fft.rfft2(_pad(torch, images.double(), N)) * band, N, images.shape[-1])


def _grid(torch, images):
    n = images.shape[-1]
    axis = torch.arange(n, dtype=torch.float64, device=images.device)
    return axis[:, None], axis[None, :]  # y (rows), x (columns)


def _weighted_centroid(torch, images, sigma_w: float):
    """(B, 2) = (y, x) centroid under a Gaussian weight at the stamp centre (one step, detached)."""
    with torch.no_grad():
        y, x = _grid(torch, images)
        c = images.shape[-1] // 2
        w = torch.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma_w**2))
        flux = (images * w).sum(dim=(1, 2)).clamp_min(1e-30)
        cy = (images * w * y).sum(dim=(1, 2)) / flux
        cx = (images * w * x).sum(dim=(1, 2)) / flux
        inside = (cy - c).abs().lt(2.0) & (cx - c).abs().lt(2.0)  # fall back to the centre
        return torch.stack([torch.where(inside, cy, c), torch.where(inside, cx, c)], dim=1)


def _weighted_ellipticity(torch, images, centre, sigma_w: float):
    """(B, 2) ``e = (Q11 − Q22, 2 Q12) / (Q11 + Q22)`` of Gaussian-weighted second moments
    (wmom's weight, centred on ``centre`` (B, 2) = (y, x)); differentiable."""
    y, x = _grid(torch, images)
    dy = y[None] - centre[:, 0, None, None]
    dx = x[None] - centre[:, 1, None, None]
    weighted = images * torch.exp(-(dx**2 + dy**2) / (2 * sigma_w**2))
    q11, q22, q12 = ((weighted * m).sum(dim=(1, 2)) for m in (dx * dx, dy * dy, dx * dy))
    size = (q11 + q22).clamp_min(1e-30)
    return torch.stack([(q11 - q22) / size, 2 * q12 / size], dim=1)


def _pad(torch, images, N: int):
    """Centred zero padding of (B, n, n) to (B, N, N), as :func:`deconvbench.fourier.pad_centered`."""
    n = images.shape[-1]
    lo = N // 2 - n // 2
    return torch.nn.functional.pad(images, (lo, N - n - lo, lo, N - n - lo))
