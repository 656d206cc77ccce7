"""The registered DeconvNet methods: ``DeconvNetJax`` and ``DeconvNetTorch``.

Both load the same neutral weights file (``convert.py``), so a model trained in one
framework runs in the other. Default weights: ``weights/deconvnet-<dataset>.npz`` next
to this file (``dataset="ground-v1"`` unless given). ``device`` (``auto``, ``cpu``,
``cuda``; see ``device.py``) says where the network runs, e.g.
``deconvbench run --method deconvnet-torch --option deconvnet-torch.device=cuda``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from deconvbench.errors import MethodError
from deconvbench.methods import Batch

from .convert import check_flat, load_weights
from .normalise import denormalise, normalise

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_DATASET = "ground-v1"


def default_weights_path(dataset: str = DEFAULT_DATASET) -> Path:
    return WEIGHTS_DIR / f"deconvnet-{dataset}.npz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bucket(m: int, batch_size: int) -> int:
    """Chunk length to run m stamps at: the next power of two (>= 8), capped at
    batch_size, so that JAX compiles few distinct shapes."""
    return min(batch_size, max(8, 1 << (m - 1).bit_length()))


def training_domain_of(metadata: dict) -> dict[str, Any]:
    """The training domain (:mod:`deconvbench.family`) recorded in a weights file's metadata:
    card, PSF families, pixel scale (arcsec), stamp size (pixels), target FWHM (arcsec)."""
    return {
        "card": metadata.get("dataset"),
        "psf_families": metadata.get("psf_families"),
        "pixel_scale_arcsec": metadata.get("pixel_scale_arcsec"),
        "stamp_size": metadata.get("stamp_size"),
        "target_fwhm_arcsec": metadata.get("target_fwhm_arcsec"),
    }


def _same_geometry(metadata: dict, pixel_scale, target_fwhm) -> bool:
    """True unless the metadata records a pixel scale or target FWHM other than these."""
    for key, value in (("pixel_scale_arcsec", pixel_scale), ("target_fwhm_arcsec", target_fwhm)):
        trained = metadata.get(key)
        if trained is not None and value is not None and not np.isclose(float(trained), float(value), rtol=1e-6):
            return False
    return True


def shipped_weights_for(prefix: str, pixel_scale, target_fwhm) -> list[str]:
    """Datasets of the shipped ``weights/PREFIX-<dataset>.npz`` trained for this geometry
    (pixel scale and target FWHM in arcsec), read from their model cards."""
    import json

    found = []
    for card in sorted(WEIGHTS_DIR.glob(f"{prefix}-*.json")):
        try:
            dataset = json.loads(card.read_text()).get("dataset", {})
        except (OSError, ValueError):
            continue
        if isinstance(dataset, dict) and _same_geometry(dataset, pixel_scale, target_fwhm):
            found.append(card.stem.removeprefix(f"{prefix}-"))
    return found


def batch_size_option(value) -> int:
    """The ``batch_size`` option as an int ≥ 1; MethodError otherwise."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise MethodError(f"batch_size must be an integer >= 1, got {value!r}")
    return size


def out_of_family_opt_in(value) -> bool:
    """The ``allow_out_of_family`` option: an explicit opt-in to run on data whose pixel scale
    or target differ from the training data's (the result is then marked out-of-family, see
    ``training_domain``); MethodError unless a bool."""
    if not isinstance(value, bool):
        raise MethodError(f"allow_out_of_family must be true or false, got {value!r}")
    return value


def check_trained_geometry(name: str, weights_path: Path, metadata: dict, batch: Batch, prefix: str = "") -> None:
    """Raise :class:`MethodError` when ``batch``'s pixel scale or target FWHM differ from those
    the weights were trained for (where the metadata records them). With ``prefix`` (the
    shipped weights' file prefix), the message names shipped weights that do fit."""
    if _same_geometry(metadata, batch.pixel_scale_arcsec, batch.target_fwhm_arcsec):
        return
    keys = ("pixel_scale_arcsec", "target_fwhm_arcsec")
    trained = ", ".join(f"{key}={metadata.get(key)}" for key in keys)
    data = f"pixel_scale_arcsec={batch.pixel_scale_arcsec}, target_fwhm_arcsec={batch.target_fwhm_arcsec}"
    fitting = shipped_weights_for(prefix, batch.pixel_scale_arcsec, batch.target_fwhm_arcsec) if prefix else []
    hint = (
        "shipped weights for this geometry: " + ", ".join(f"--option {name}.dataset={d}" for d in fitting)
        if fitting
        else "use weights trained for this dataset"
    )
    raise MethodError(f"{name}: weights {weights_path.name} were trained for {trained}, the data has {data}; {hint}")


class _DeconvNetBase:
    framework = ""
    pad_chunks = False  # pad the last chunk to a power of two (limits JAX recompilation)
    description = ""
    requires: tuple[str, ...] = ()
    extra = ""

    def __init__(
        self,
        weights: str | None = None,
        batch_size: int = 256,
        dataset: str = DEFAULT_DATASET,
        device: str = "auto",
        allow_out_of_family: bool = False,
    ):
        self.allow_out_of_family = out_of_family_opt_in(allow_out_of_family)
        self.batch_size = batch_size_option(batch_size)
        from .device import device_label, framework_device

        self.name = f"deconvnet-{self.framework}"
        self._device = framework_device(self.framework, device)  # MethodError if absent
        self.device = device_label(self._device)
        if weights is None:
            path = default_weights_path(dataset)
            if not path.exists():
                raise MethodError(
                    f"no trained weights at {path}; train with `deconvbench train ...` on {dataset} "
                    "and put its best.npz there, or pass weights=PATH"
                )
        else:
            path = Path(weights).expanduser()
            if not path.exists():
                raise MethodError(f"no DeconvNet weights file at {path}")
        try:
            flat, config, metadata = load_weights(path)
        except (ValueError, OSError) as exc:
            raise MethodError(f"cannot load DeconvNet weights {path}: {exc}") from exc
        self.weights_path = path
        self.weights_sha256 = _sha256(path)
        self.config = config
        self.metadata = metadata
        self.n_params = int(sum(np.asarray(v).size for v in flat.values()))
        try:
            self._build(flat)
        except ValueError as exc:
            raise MethodError(f"DeconvNet weights {path} do not fit their config: {exc}") from exc

    @classmethod
    def train(cls, request, progress, notify) -> str:
        """Train this framework's DeconvNet (``deconvbench train``); see :mod:`.fit`."""
        from .fit import train_deconvnet

        return train_deconvnet(cls.framework, request, progress, notify)

    # framework hooks ------------------------------------------------------------
    def _build(self, flat: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _apply(self, x: np.ndarray, psf: np.ndarray, noise: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # protocol -----------------------------------------------------------------
    def deconvolve(self, batch: Batch) -> np.ndarray:
        observed = np.asarray(batch.observed)
        psf = np.asarray(batch.psf)
        sigma = np.asarray(batch.noise_sigma, dtype=np.float64).reshape(-1)
        if observed.ndim != 3 or psf.shape != observed.shape or sigma.shape != (len(observed),):
            raise MethodError(
                f"{self.name}: bad batch shapes observed {observed.shape}, psf {psf.shape}, noise_sigma {sigma.shape}"
            )
        self._check_geometry(batch)
        out = np.empty(observed.shape, dtype=np.float32)
        for start in range(0, len(observed), self.batch_size):
            stop = min(start + self.batch_size, len(observed))
            x, psf_in, noise_in, scale = normalise(observed[start:stop], psf[start:stop], sigma[start:stop])
            m = stop - start
            size = _bucket(m, self.batch_size) if self.pad_chunks else m
            if size > m:
                pad = ((0, size - m), (0, 0), (0, 0))
                x, psf_in = np.pad(x, pad), np.pad(psf_in, pad)
                noise_in = np.pad(noise_in, (0, size - m))
            y = self._apply(x, psf_in, noise_in)[:m]
            out[start:stop] = denormalise(y, scale)
        return out

    def _check_geometry(self, batch: Batch) -> None:
        """Refuse data whose pixel scale or target PSF differ from the training data's
        (when the weights record them): the output would silently be for the wrong target.
        ``allow_out_of_family=True`` runs anyway (an out-of-family evaluation)."""
        if not self.allow_out_of_family:
            check_trained_geometry(self.name, self.weights_path, self.metadata, batch, prefix="deconvnet")

    def training_domain(self) -> dict[str, Any]:
        """What the weights were trained on (:mod:`deconvbench.family`): card, geometry."""
        return training_domain_of(self.metadata)

    def params(self) -> dict[str, Any]:
        extra = {"allow_out_of_family": True} if self.allow_out_of_family else {}
        return {
            "framework": self.framework,
            "weights": self.weights_path.name,
            "weights_sha256": self.weights_sha256,
            "n_params": self.n_params,
            "config": self.config.to_dict(),
            "trained_on": self.metadata.get("dataset"),
            "batch_size": self.batch_size,
            "device": self.device,
            **extra,
        }


class DeconvNetJax(_DeconvNetBase):
    """DeconvNet (PSF-conditioned residual U-Net), JAX/flax inference (CPU or GPU)."""

    framework = "jax"
    pad_chunks = True
    description = "DeconvNet: PSF-conditioned (FiLM) residual U-Net, JAX/flax (trained weights)"
    requires = ("jax", "flax")
    extra = "jax"

    def _build(self, flat):
        import jax

        from .convert import flat_to_jax_params, flatten_tree
        from .jax_model import DeconvNetJax as Model
        from .jax_model import init_params

        self._jax = jax
        check_flat(flat, flatten_tree(jax.eval_shape(lambda: init_params(self.config))))
        model = Model(self.config)
        self._params = jax.device_put(flat_to_jax_params(flat), self._device)
        # jax.jit caches one compiled executable per input shape
        self._fn = jax.jit(lambda params, x, psf, noise: model.apply({"params": params}, x, psf, noise))

    def _apply(self, x, psf, noise):
        jax = self._jax
        args = [jax.device_put(np.ascontiguousarray(a, dtype=np.float32), self._device) for a in (x, psf, noise)]
        return np.asarray(self._fn(self._params, *args))


class DeconvNetTorch(_DeconvNetBase):
    """DeconvNet (PSF-conditioned residual U-Net), PyTorch inference (CPU or CUDA)."""

    framework = "torch"
    description = "DeconvNet: PSF-conditioned (FiLM) residual U-Net, PyTorch (trained weights)"
    requires = ("torch",)
    extra = "torch"

    def _build(self, flat):
        import torch

        from .convert import flat_to_torch_state
        from .torch_model import DeconvNetTorch as Model

        self._torch = torch
        model = Model(self.config)
        try:
            model.load_state_dict(flat_to_torch_state(flat), strict=True)
        except RuntimeError as exc:
            raise ValueError(str(exc)) from exc
        # channels_last: oneDNN convolutions run ~1.5x faster on CPU in this layout
        self._model = model.to(device=self._device, dtype=torch.float32, memory_format=torch.channels_last).eval()

    def _apply(self, x, psf, noise):
        torch = self._torch
        with torch.inference_mode():
            t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self._device) for a in (x, psf, noise)]
            return self._model(*t).cpu().numpy()
