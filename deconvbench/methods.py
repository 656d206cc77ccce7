"""The Deconvolver protocol and the entry-point registry of methods.

A *method* turns observed stamps into estimates of the ``truth`` stamps of a dataset:
``truth = galaxy ⊗ target PSF ⊗ pixel``, where the target PSF is a round Gaussian
whose FWHM (arcsec) is given by the dataset card. The harness knows no method by name:
methods are discovered through the Python entry-point group ``deconvbench.methods``.
The repository's own baselines register there too (see ``pyproject.toml``).

A plugin is a class (or any callable) that accepts keyword options and returns an
object with

* ``name`` (str), ``device`` (str, e.g. ``"cpu"``);
* ``deconvolve(batch: Batch) -> numpy.ndarray`` of shape (B, n, n);
* ``params() -> dict`` (JSON-serialisable hyper-parameters, recorded in results).

Optional class attributes used by ``deconvbench list-methods`` without instantiating:
``description`` (one line), ``requires`` (module names that must be importable) and
``extra`` (the pip extra that provides them, e.g. ``"torch"``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import MethodError

ENTRY_POINT_GROUP = "deconvbench.methods"


@dataclass(frozen=True)
class Batch:
    """A batch of stamps handed to a deconvolver.

    Attributes
    ----------
    observed : (B, n, n) float array
        Observed images (galaxy ⊗ effective PSF + noise), flux units per pixel.
    psf : (B, n, n) float array
        Effective PSF images (optics ⊗ atmosphere ⊗ pixel) on the same grid, each
        summing to 1, centred on pixel (n//2, n//2).
    noise_sigma : (B,) float array
        Per-stamp standard deviation of the Gaussian pixel noise (0 for noiseless).
    pixel_scale_arcsec : float
        Pixel scale in arcsec/pixel.
    target_fwhm_arcsec : float
        FWHM of the round Gaussian target PSF in arcsec; the method must return
        ``galaxy ⊗ Gaussian(target_fwhm_arcsec) ⊗ pixel``.
    """

    observed: np.ndarray
    psf: np.ndarray
    noise_sigma: np.ndarray
    pixel_scale_arcsec: float
    target_fwhm_arcsec: float

    @classmethod
    def from_rendered(cls, arrays: dict[str, np.ndarray], card) -> Batch:
        """A float64 batch from the generator's arrays (``observed``, ``psf``, ``noise_sigma``)
        of stamps rendered from ``card`` (a :class:`~deconvbench.cards.DatasetCard`)."""
        return cls(
            observed=arrays["observed"].astype(np.float64),
            psf=arrays["psf"].astype(np.float64),
            noise_sigma=arrays["noise_sigma"],
            pixel_scale_arcsec=card.stamp.pixel_scale_arcsec,
            target_fwhm_arcsec=card.stamp.target_psf_fwhm_arcsec,
        )

    @property
    def size(self) -> int:
        return int(self.observed.shape[0])

    @property
    def stamp_size(self) -> int:
        return int(self.observed.shape[-1])


@runtime_checkable
class Deconvolver(Protocol):
    name: str
    device: str

    def deconvolve(self, batch: Batch) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MethodInfo:
    """What ``list-methods`` shows about a registered method."""

    name: str
    description: str
    available: bool
    reason: str  # empty when available, else e.g. "needs extra [torch]"
    source: str  # "module:attr" of the entry point, or "registered in-process"


# In-process registrations (tests, notebooks). They shadow entry points of the same name.
_LOCAL: dict[str, Callable[..., Deconvolver]] = {}


def register_method(name: str, factory: Callable[..., Deconvolver]) -> None:
    """Register ``factory`` under ``name`` for this process (a test hook)."""
    _LOCAL[name] = factory


def unregister_method(name: str) -> None:
    _LOCAL.pop(name, None)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in eps}


def _missing_requirements(factory: Any) -> list[str]:
    missing = []
    for module in getattr(factory, "requires", ()) or ():
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    return missing


def _unavailable_reason(factory: Any) -> str:
    missing = _missing_requirements(factory)
    if not missing:
        return ""
    extra = getattr(factory, "extra", None)
    if extra:
        return f"needs extra [{extra}] (missing: {', '.join(missing)})"
    return f"needs {', '.join(missing)}"


def method_names() -> list[str]:
    return sorted(set(_entry_points()) | set(_LOCAL))


def list_methods() -> list[MethodInfo]:
    """All registered methods with their availability; never raises for a broken plugin."""
    infos = []
    eps = _entry_points()
    for name in method_names():
        if name in _LOCAL:
            factory = _LOCAL[name]
            source = "registered in-process"
        else:
            source = eps[name].value
            try:
                factory = eps[name].load()
            except Exception as exc:  # a broken plugin must not break the listing
                infos.append(MethodInfo(name, "", False, f"cannot load: {exc}", source))
                continue
        description = (getattr(factory, "description", "") or (factory.__doc__ or "")).strip()
        description = description.splitlines()[0] if description else ""
        reason = _unavailable_reason(factory)
        infos.append(MethodInfo(name, description, not reason, reason, source))
    return infos


def get_factory(name: str) -> Callable[..., Deconvolver]:
    if name in _LOCAL:
        return _LOCAL[name]
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(method_names()) or "none"
        raise MethodError(f"unknown method {name!r} (registered: {known})")
    try:
        return eps[name].load()
    except Exception as exc:
        raise MethodError(f"method {name!r} cannot be loaded: {exc}") from exc


def load_method(name: str, **options: Any) -> Deconvolver:
    """Instantiate a registered method, with a clear error if it is unavailable."""
    factory = get_factory(name)
    reason = _unavailable_reason(factory)
    if reason:
        raise MethodError(f"method {name!r} is not available: {reason}")
    try:
        method = factory(**options)
    except TypeError as exc:
        raise MethodError(f"method {name!r} rejected its options {options}: {exc}") from exc
    except MethodError:
        raise
    except Exception as exc:  # e.g. missing weights: one clear line, not a traceback
        raise MethodError(f"method {name!r} cannot start: {exc}") from exc
    if not getattr(method, "name", None):
        with contextlib.suppress(AttributeError):
            method.name = name
    return method


def method_options(name: str) -> dict[str, Any]:
    """Keyword options of a method's constructor with their defaults (``list-methods --options``).

    Options without a default are shown as ``"(required)"``; a method that cannot be
    loaded has none."""
    import inspect

    try:
        factory = get_factory(name)
        signature = inspect.signature(factory)
    except (MethodError, TypeError, ValueError):
        return {}
    options = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        options[parameter.name] = "(required)" if default is parameter.empty else default
    return options


def load_available_methods(notify: Callable[[str], None] = print) -> dict[str, Deconvolver]:
    """Every available method once, by name (an alias such as ``deconvnet`` = ``deconvnet-jax``,
    the same entry point under two names, is loaded under its longest name only)."""
    infos = sorted(list_methods(), key=lambda info: (info.source, -len(info.name)))
    names, seen = [], set()
    for info in infos:
        if info.source in seen:
            continue
        seen.add(info.source)
        if info.available:
            names.append(info.name)
        else:
            notify(f"skipping {info.name}: {info.reason}")
    methods = {}
    for name in sorted(names):
        try:
            methods[name] = load_method(name)
        except MethodError as exc:
            notify(f"skipping {name}: {exc}")
    return methods
