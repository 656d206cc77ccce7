"""The registered method ``deconvfilter``: DeconvFilter (a learned, PSF-conditioned
Fourier filter, linear in the image; see :mod:`.filter_model`) in PyTorch.

Default weights: ``weights/deconvfilter-<dataset>.npz`` next to this file
(``dataset="ground-v3"`` unless given); ``device`` is ``auto``, ``cpu`` or ``cuda``
(:mod:`.device`), e.g. ``--option deconvfilter.device=cuda``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deconvbench import fourier as F
from deconvbench.errors import MethodError
from deconvbench.methods import Batch

from .plugin import (
    WEIGHTS_DIR,
    _sha256,
    batch_size_option,
    check_trained_geometry,
    out_of_family_opt_in,
    training_domain_of,
)

DEFAULT_DATASET = "ground-v3"


def default_filter_weights_path(dataset: str = DEFAULT_DATASET) -> Path:
    return WEIGHTS_DIR / f"deconvfilter-{dataset}.npz"


class DeconvFilterTorch:
    """DeconvFilter: D~ = I~ · (T~/P~) · W(|k|σ_Γ), W a Wiener form with a learned shape."""

    description = "DeconvFilter: learned PSF-conditioned Fourier filter, linear in the image (PyTorch, trained weights)"
    requires = ("torch",)
    extra = "torch"
    framework = "torch"

    def __init__(
        self,
        weights: str | None = None,
        batch_size: int = 256,
        dataset: str = DEFAULT_DATASET,
        device: str = "auto",
        allow_out_of_family: bool = False,
    ):
        from .device import device_label, torch_device
        from .filter_model import build_torch_model, flat_to_torch_state, load_filter_weights

        self.allow_out_of_family = out_of_family_opt_in(allow_out_of_family)
        self.batch_size = batch_size_option(batch_size)
        self.name = "deconvfilter"
        path = default_filter_weights_path(dataset) if weights is None else Path(weights).expanduser()
        if not path.exists():
            raise MethodError(
                f"no DeconvFilter weights at {path}; train with `deconvbench train --method deconvfilter` "
                "and pass weights=PATH"
            )
        try:
            flat, config, metadata = load_filter_weights(path)
        except (ValueError, OSError) as exc:
            raise MethodError(f"cannot load DeconvFilter weights {path}: {exc}") from exc
        self._device = torch_device(device)
        self.device = device_label(self._device)
        model = build_torch_model(config)
        try:
            model.load_state_dict(flat_to_torch_state(flat), strict=True)
        except RuntimeError as exc:
            raise MethodError(f"DeconvFilter weights {path} do not fit their config: {exc}") from exc
        self._model = model.to(self._device).eval()
        self.config, self.metadata, self.weights_path = config, metadata, path
        self.weights_sha256 = _sha256(path)
        self.n_params = int(sum(np.asarray(v).size for v in flat.values()))

    @classmethod
    def train(cls, request, progress, notify) -> str:
        """Train DeconvFilter (``deconvbench train --method deconvfilter``); see :mod:`.fit`."""
        from .fit import train_filter_request

        return train_filter_request(request, progress, notify)

    def training_domain(self) -> dict[str, Any]:
        """What the weights were trained on (:mod:`deconvbench.family`): card, geometry."""
        return training_domain_of(self.metadata)

    def filter_weights(self, batch: Batch) -> np.ndarray:
        """W (B, N, N//2+1) for a batch (diagnostics and tests)."""
        import torch

        from .filter_model import prepare

        b = batch
        prep = prepare(b.observed, b.psf, b.noise_sigma, b.pixel_scale_arcsec, b.target_fwhm_arcsec, self.config)
        with torch.inference_mode():
            q, z, nu = (torch.from_numpy(prep[k]).to(self._device) for k in ("q", "z", "nu"))
            return self._model.weights(q, z, nu).cpu().numpy()

    def deconvolve(self, batch: Batch) -> np.ndarray:
        import torch

        from .filter_model import prepare, to_stamps

        observed = F.as_stack(batch.observed, "observed")
        psf = F.as_stack(batch.psf, "psf")
        sigma = np.asarray(batch.noise_sigma, dtype=np.float64).reshape(-1)
        if psf.shape != observed.shape or sigma.shape != (len(observed),):
            raise MethodError(
                f"{self.name}: bad batch shapes observed {observed.shape}, psf {psf.shape}, noise_sigma {sigma.shape}"
            )
        if not self.allow_out_of_family:
            check_trained_geometry(self.name, self.weights_path, self.metadata, batch, prefix="deconvfilter")
        n = observed.shape[-1]
        N = F.padded_size(n, self.config.pad_factor)
        out = np.empty(observed.shape, dtype=np.float64)
        for start in range(0, len(observed), self.batch_size):
            sl = slice(start, min(start + self.batch_size, len(observed)))
            prep = prepare(
                observed[sl], psf[sl], sigma[sl], batch.pixel_scale_arcsec, batch.target_fwhm_arcsec, self.config
            )
            with torch.inference_mode():
                t = {k: torch.from_numpy(prep[k]).to(self._device) for k in ("spec", "H", "q", "z", "nu")}
                out[sl] = to_stamps(self._model(t["spec"], t["H"], t["q"], t["z"], t["nu"]), N, n).cpu().numpy()
        return out

    def params(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "weights": self.weights_path.name,
            "weights_sha256": self.weights_sha256,
            "n_params": self.n_params,
            "config": self.config.to_dict(),
            "trained_on": self.metadata.get("dataset"),
            "loss": self.metadata.get("loss"),
            "batch_size": self.batch_size,
            "device": self.device,
            **({"allow_out_of_family": True} if self.allow_out_of_family else {}),
        }
