"""Training DeconvNet: one shared driver, one small backend per framework.

``train(framework, config, train_batches, val_batches, epochs, ...)`` runs epochs of
Adam on the MSE between the network output and the normalised truth
(``truth / s``, see ``normalise.py``), evaluates the validation NMSE
(per stamp ``sum((est - truth)**2) / sum(truth**2)``, in flux units, averaged over
stamps) after every epoch and writes to ``out_dir``:

* ``best.npz``: the best-on-validation weights, neutral format (``convert.py``);
  loadable by either framework's plugin whatever framework trained it;
* ``last.msgpack`` (JAX: flax-serialised params + optax state) or ``last.pt``
  (PyTorch: ``torch.save`` of model and optimizer state dicts), rewritten after every
  epoch, with the epoch bookkeeping, for ``resume=True``;
* ``history.json``: the per-epoch records.

Epochs are numbered from 0: ``train_batches(epoch)`` is called with ``epoch`` in
``range(epochs)`` and history records carry that number. ``epochs`` is the total
number of epochs, so resuming a 2-epoch run with ``epochs=3`` runs epoch 2 only.

Determinism: parameters are initialised from ``seed`` (``jax.random.PRNGKey(seed)`` /
``torch.manual_seed(seed)`` in a forked RNG), and the augmentation of epoch ``e``
draws from ``numpy.random.default_rng([seed, e])``, so a resumed run sees exactly the
augmentations of an uninterrupted one (given deterministic ``train_batches``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from deconvbench.atomic import atomic_write, json_safe

from .config import DeconvNetConfig
from .convert import save_weights
from .normalise import denormalise, normalise, normalise_target

FRAMEWORKS = ("jax", "torch")
BEST_NAME = "best.npz"
HISTORY_NAME = "history.json"


# -- data augmentation -----------------------------------------------------------------
def _symmetry(a: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes: rot90**(code % 4),
    then a left-right flip if code >= 4."""
    a = np.rot90(a, code % 4, axes=(-2, -1))
    if code >= 4:
        a = a[..., ::-1]
    return a


def _centre_shift(n: int, code: int) -> tuple[int, int]:
    """Roll that brings the image of pixel (n//2, n//2) back to (n//2, n//2) after
    ``_symmetry`` (non-zero only for even n, where the square's centre is between pixels)."""
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    r, c = np.unravel_index(np.argmax(_symmetry(delta, code)), (n, n))
    return n // 2 - int(r), n // 2 - int(c)


def augment_batch(rng: np.random.Generator, observed: np.ndarray, psf: np.ndarray, truth: np.ndarray):
    """Apply a random symmetry of the square per stamp, the same to observed, psf and
    truth. The PSF is re-centred on (n//2, n//2) (a one-pixel roll for even n, where a
    rotation about the array centre moves that pixel). Vectorised: one numpy call per
    symmetry, over all stamps that drew it."""
    codes = rng.integers(0, 8, size=len(observed))
    out = [np.empty_like(observed), np.empty_like(psf), np.empty_like(truth)]
    n = observed.shape[-1]
    for code in range(8):
        idx = np.flatnonzero(codes == code)
        if idx.size == 0:
            continue
        out[0][idx] = _symmetry(observed[idx], code)
        out[2][idx] = _symmetry(truth[idx], code)
        p = _symmetry(psf[idx], code)
        shift = _centre_shift(n, code)
        out[1][idx] = np.roll(p, shift, axis=(-2, -1)) if any(shift) else p
    return out[0], out[1], out[2]


def nmse_per_stamp(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    num = ((est - tru) ** 2).reshape(len(tru), -1).sum(axis=1)
    den = (tru**2).reshape(len(tru), -1).sum(axis=1)
    return num / np.where(den > 0, den, np.nan)


# -- backends ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _jax_functions(config: DeconvNetConfig, lr: float):
    """(optimizer, jitted train step, jitted predict) for a config and learning rate;
    cached so that runs in one process (tests, resumes) reuse compiled code."""
    import jax
    import jax.numpy as jnp
    import optax

    from .jax_model import DeconvNetJax

    model = DeconvNetJax(config)
    tx = optax.adam(lr)

    def loss_fn(params, x, psf, noise, target):
        pred = model.apply({"params": params}, x, psf, noise)
        return jnp.mean((pred - target) ** 2)

    @jax.jit
    def step(params, opt_state, x, psf, noise, target):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, psf, noise, target)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda params, x, psf, noise: model.apply({"params": params}, x, psf, noise))
    return tx, step, predict


class _JaxBackend:
    checkpoint_name = "last.msgpack"

    def __init__(self, config: DeconvNetConfig, lr: float, seed: int, device=None):
        from .jax_model import init_params

        tx, self._step, self._predict = _jax_functions(config, float(lr))
        self.params = init_params(config, seed)
        self.opt_state = tx.init(self.params)

    def step(self, x, psf, noise, target) -> float:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, x, psf, noise, target)
        return float(loss)

    def predict(self, x, psf, noise) -> np.ndarray:
        return np.asarray(self._predict(self.params, x, psf, noise))

    def flat(self) -> dict[str, np.ndarray]:
        from .convert import jax_params_to_flat

        return jax_params_to_flat(self.params)

    def load_flat(self, flat: dict[str, np.ndarray]) -> None:
        from .convert import flat_to_jax_params

        self.params = flat_to_jax_params(flat)

    def save(self, path: Path, meta: dict) -> None:
        from flax import serialization

        blob = serialization.msgpack_serialize(
            {
                "params": serialization.to_state_dict(self.params),
                "opt_state": serialization.to_state_dict(self.opt_state),
                "meta": json.dumps(meta),
            }
        )
        atomic_write(path, lambda f: f.write(blob))

    @staticmethod
    def read_meta(path: Path) -> dict:
        from flax import serialization

        return json.loads(serialization.msgpack_restore(path.read_bytes())["meta"])

    def load(self, path: Path) -> dict:
        from flax import serialization

        state = serialization.msgpack_restore(path.read_bytes())
        meta = json.loads(state["meta"])
        self.params = serialization.from_state_dict(self.params, state["params"])
        self.opt_state = serialization.from_state_dict(self.opt_state, state["opt_state"])
        return meta


class _TorchBackend:
    checkpoint_name = "last.pt"

    def __init__(self, config: DeconvNetConfig, lr: float, seed: int, device=None):
        import torch

        from .torch_model import DeconvNetTorch

        self.torch = torch
        self.device = torch.device("cpu") if device is None else device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = DeconvNetTorch(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _tensors(self, *arrays):
        return [self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device) for a in arrays]

    def step(self, x, psf, noise, target) -> float:
        torch = self.torch
        x, psf, noise, target = self._tensors(x, psf, noise, target)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.mean((self.model(x, psf, noise) - target) ** 2)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def predict(self, x, psf, noise) -> np.ndarray:
        self.model.eval()
        with self.torch.inference_mode():
            return self.model(*self._tensors(x, psf, noise)).cpu().numpy()

    def flat(self) -> dict[str, np.ndarray]:
        from .convert import torch_state_to_flat

        return torch_state_to_flat(self.model.state_dict())

    def load_flat(self, flat: dict[str, np.ndarray]) -> None:
        from .convert import flat_to_torch_state

        state = {key: value.to(self.device) for key, value in flat_to_torch_state(flat).items()}
        self.model.load_state_dict(state)

    def save(self, path: Path, meta: dict) -> None:
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "meta": json.dumps(meta)}
        atomic_write(path, lambda f: self.torch.save(payload, f))

    @staticmethod
    def read_meta(path: Path) -> dict:
        import torch

        return json.loads(torch.load(path, map_location="cpu", weights_only=True)["meta"])

    def load(self, path: Path) -> dict:
        payload = self.torch.load(path, map_location=self.device, weights_only=True)
        meta = json.loads(payload["meta"])
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        return meta


BACKENDS = {"jax": _JaxBackend, "torch": _TorchBackend}


def make_backend(framework: str, config: DeconvNetConfig, lr: float, seed: int, device=None):
    """The framework's backend; ``device`` a resolved ``torch.device`` (torch) or unused
    (JAX places arrays on the default device, set by :func:`train`)."""
    if framework not in BACKENDS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return BACKENDS[framework](config, lr, seed, device)


# -- the driver ----------------------------------------------------------------------------
def _unpack(batch: dict, need_truth: bool = True):
    try:
        observed = np.asarray(batch["observed"], dtype=np.float32)
        psf = np.asarray(batch["psf"], dtype=np.float32)
        sigma = np.asarray(batch["noise_sigma"], dtype=np.float64).reshape(-1)
        truth = np.asarray(batch["truth"], dtype=np.float32) if need_truth else None
    except KeyError as exc:
        raise ValueError(f"a batch needs keys observed, psf, noise_sigma, truth; missing {exc}") from None
    if observed.ndim != 3 or psf.shape != observed.shape or sigma.shape != (len(observed),):
        raise ValueError(f"bad batch shapes: observed {observed.shape}, psf {psf.shape}, noise_sigma {sigma.shape}")
    if truth is not None and truth.shape != observed.shape:
        raise ValueError(f"bad batch shapes: truth {truth.shape} vs observed {observed.shape}")
    return observed, psf, sigma, truth


def evaluate(backend, batches: Iterable[dict], chunk: int = 256) -> float:
    """Mean per-stamp NMSE of the backend's current weights over ``batches`` (run in
    chunks of at most ``chunk`` stamps to bound memory)."""
    scores = []
    for batch in batches:
        observed, psf, sigma, truth = _unpack(batch)
        x, psf_in, noise_in, scale = normalise(observed, psf, sigma)
        y = np.concatenate(
            [
                backend.predict(x[i : i + chunk], psf_in[i : i + chunk], noise_in[i : i + chunk])
                for i in range(0, len(x), chunk)
            ]
        )
        scores.append(nmse_per_stamp(denormalise(y, scale), truth))
    if not scores:
        raise ValueError("val_batches() yielded no batches")
    return float(np.nanmean(np.concatenate(scores)))


def train(
    framework: str,
    config: DeconvNetConfig,
    train_batches: Callable[[int], Iterator[dict]],
    val_batches: Callable[[], Iterator[dict]],
    epochs: int,
    lr: float = 1e-3,
    seed: int = 0,
    out_dir: str | os.PathLike = "deconvnet-run",
    resume: bool = False,
    patience: int | None = None,
    augment: bool = True,
    progress: Callable[[dict], None] | None = None,
    metadata: dict | None = None,
    device: str = "auto",
    objective=None,
) -> dict:
    """Train DeconvNet; see the module docstring for what is written where.

    ``train_batches(epoch)`` and ``val_batches()`` return iterables of dicts with numpy
    arrays ``observed``, ``psf``, ``truth`` (B, n, n) and ``noise_sigma`` (B,).
    ``patience``: stop after that many epochs without a new best validation NMSE
    (None: never). ``progress(record)`` is called after every epoch with its history
    record. ``metadata`` (JSON-able, e.g. dataset name and geometry) is stored in
    ``best.npz``. ``device``: ``auto``, ``cpu`` or ``cuda`` (see ``device.py``; a
    MethodError when ``cuda`` is asked and the framework sees no GPU).

    With ``resume=True`` and a ``last`` checkpoint in ``out_dir`` (same framework and
    config), training continues at the checkpoint's next epoch with its parameters,
    optimizer state, history and best score; without a checkpoint it starts afresh.

    ``objective``: a :class:`.objectives.UNetObjective` (None: the pixel loss alone).
    Terms beyond the pixel loss need ``framework="torch"`` and ``metadata`` with
    ``pixel_scale_arcsec`` and ``target_fwhm_arcsec``; ``objective.init_weights`` starts
    from those weights (same config) instead of a random initialisation.

    Returns ``{"history", "best_epoch", "best_val_nmse", "wall_time_s",
    "epochs_completed", "stopped_early", "resumed_from", "best_path", "last_path"}``.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if patience is not None and patience < 1:
        raise ValueError("patience must be >= 1 or None")
    from .objectives import UNetObjective

    objective = UNetObjective() if objective is None else objective
    objective.check_framework(framework)
    if objective.extra_terms and not {"pixel_scale_arcsec", "target_fwhm_arcsec"} <= set(metadata or {}):
        raise ValueError(
            "training objectives beyond pixel_weight need the data's pixel_scale_arcsec and target_fwhm_arcsec"
        )
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / BACKENDS[framework].checkpoint_name
    best_path = out / BEST_NAME

    resuming = resume and last_path.exists()
    if resuming:  # check before building (and compiling) anything
        meta = BACKENDS[framework].read_meta(last_path)
        if meta.get("framework") != framework:
            raise ValueError(f"{last_path} was written by framework {meta.get('framework')!r}, not {framework!r}")
        if DeconvNetConfig.from_dict(meta["config"]) != config:
            raise ValueError(f"{last_path} was trained with a different config: {meta['config']}")
        if meta.get("objective", UNetObjective().to_dict()) != objective.to_dict():
            raise ValueError(f"{last_path} was trained with a different objective: {meta.get('objective')}")
    from .device import framework_device

    resolved = framework_device(framework, device)
    if framework == "jax":
        import jax

        with jax.default_device(resolved):
            return _train_loop(
                framework, config, train_batches, val_batches, epochs, lr, seed, out, resume, patience, augment,
                progress, metadata, None, t_start, last_path, best_path, resuming, objective,
            )  # fmt: skip
    return _train_loop(
        framework, config, train_batches, val_batches, epochs, lr, seed, out, resume, patience, augment,
        progress, metadata, resolved, t_start, last_path, best_path, resuming, objective,
    )  # fmt: skip


def _train_loop(
    framework, config, train_batches, val_batches, epochs, lr, seed, out, resume, patience, augment,
    progress, metadata, device, t_start, last_path, best_path, resuming, objective,
) -> dict:  # fmt: skip
    history: list[dict] = []
    best_epoch: int | None = None
    best_val = math.inf
    start = 0
    resumed_from = None
    stopped_early = False
    backend = make_backend(framework, config, lr, seed, device)
    if resuming:
        meta = backend.load(last_path)
        history = meta["history"]
        best_epoch = meta["best_epoch"]
        best_val = math.inf if meta["best_val_nmse"] is None else meta["best_val_nmse"]
        start = resumed_from = int(meta["next_epoch"])
        stopped_early = bool(meta.get("stopped_early", False))
    elif objective.init_weights:
        from .convert import load_weights

        flat, init_config, _ = load_weights(objective.init_weights)
        if init_config != config:
            raise ValueError(f"init_weights {objective.init_weights} has a different config: {init_config.to_dict()}")
        backend.load_flat(flat)

    for epoch in range(start, epochs):
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        loss_sum, n_seen = 0.0, 0
        term_sums: dict[str, float] = {}
        for batch in train_batches(epoch):
            observed, psf, sigma, truth = _unpack(batch)
            if augment:
                observed, psf, truth = augment_batch(rng, observed, psf, truth)
            if objective.extra_terms:
                from .objectives import objective_step

                terms = objective_step(backend, rng, observed, psf, sigma, truth, objective, metadata)
                loss_sum += terms["total"] * len(observed)
                for key, value in terms.items():
                    term_sums[key] = term_sums.get(key, 0.0) + value * len(observed)
            else:
                x, psf_in, noise_in, scale = normalise(observed, psf, sigma)
                target = normalise_target(truth, scale)
                loss_sum += backend.step(x, psf_in, noise_in, target) * len(x)
            n_seen += len(observed)
        if n_seen == 0:
            raise ValueError(f"train_batches({epoch}) yielded no batches")
        val = evaluate(backend, val_batches())
        improved = val < best_val  # False for NaN
        if improved:
            best_val, best_epoch = val, epoch
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n_seen,
            "val_nmse": val,
            "best": improved,
            "n_train": n_seen,
            "time_s": time.perf_counter() - t_epoch,
        }
        if term_sums:
            record["train_terms"] = {key: value / n_seen for key, value in term_sums.items()}
        history.append(record)
        if improved:
            save_weights(
                best_path,
                backend.flat(),
                config,
                {
                    **(metadata or {}),
                    "framework": framework,
                    "epoch": epoch,
                    "val_nmse": val,
                    "lr": lr,
                    "seed": seed,
                    "objective": objective.to_dict(),
                },
            )
        stopped_early = patience is not None and best_epoch is not None and epoch - best_epoch >= patience
        if not math.isfinite(record["train_loss"]):  # a non-finite loss never recovers: keep the best epoch
            record["diverged"] = True
            stopped_early = True
        meta = {
            "framework": framework,
            "config": config.to_dict(),
            "next_epoch": epoch + 1,
            "history": history,
            "best_epoch": best_epoch,
            "best_val_nmse": None if best_epoch is None else best_val,
            "stopped_early": stopped_early,
            "lr": lr,
            "seed": seed,
            "objective": objective.to_dict(),
        }
        backend.save(last_path, meta)
        atomic_write(out / HISTORY_NAME, lambda f: f.write(json.dumps(json_safe(history), indent=1).encode()))
        if progress is not None:
            progress(dict(record))
        if stopped_early:
            break

    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_nmse": None if best_epoch is None else best_val,
        "wall_time_s": time.perf_counter() - t_start,
        "epochs_completed": len(history),
        "stopped_early": stopped_early,
        "resumed_from": resumed_from,
        "best_path": str(best_path) if best_epoch is not None else None,
        "last_path": str(last_path),
    }
