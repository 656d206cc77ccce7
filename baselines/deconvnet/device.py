"""Where a DeconvNet model runs: ``device`` = ``auto``, ``cpu`` or ``cuda`` (``gpu`` is
accepted as a synonym of ``cuda``), the same names for JAX and PyTorch.

* ``auto``: the first CUDA GPU the framework sees, else the CPU;
* ``cpu``: the CPU, always available;
* ``cuda``: the first CUDA GPU; a :class:`~deconvbench.errors.MethodError` (one line on
  the command line, exit status 2) when the framework sees none.

Only this module asks a framework for its devices, so the plugins, the training driver and
the ``train`` command share one rule.
"""

from __future__ import annotations

from deconvbench.errors import MethodError

DEVICES = ("auto", "cpu", "cuda")
_SYNONYMS = {"gpu": "cuda"}


def canonical_device(name) -> str:
    """``name`` as one of :data:`DEVICES` (``gpu`` → ``cuda``); MethodError otherwise."""
    key = str(name).strip().lower()
    key = _SYNONYMS.get(key, key)
    if key not in DEVICES:
        raise MethodError(f"device must be one of {', '.join(DEVICES)} (or gpu), got {name!r}")
    return key


def torch_device(name):
    """The ``torch.device`` for ``name`` (see the module docstring)."""
    import torch

    key = canonical_device(name)
    has_cuda = torch.cuda.is_available()
    if key == "cuda" and not has_cuda:
        raise MethodError("device 'cuda' requested, but PyTorch sees no CUDA GPU; use device=cpu or auto")
    return torch.device("cuda" if key == "cuda" or (key == "auto" and has_cuda) else "cpu")


def _jax_gpus() -> list:
    import jax

    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend in this jaxlib, or no GPU
        return []


def jax_device(name):
    """The ``jax.Device`` for ``name`` (see the module docstring)."""
    import jax

    key = canonical_device(name)
    gpus = _jax_gpus() if key != "cpu" else []
    if key == "cuda" and not gpus:
        raise MethodError("device 'cuda' requested, but JAX sees no CUDA GPU (needs jax[cuda]); use cpu or auto")
    return gpus[0] if gpus else jax.devices("cpu")[0]


def framework_device(framework: str, name):
    """``torch_device`` or ``jax_device`` by framework name (``"torch"`` / ``"jax"``)."""
    if framework == "torch":
        return torch_device(name)
    if framework == "jax":
        return jax_device(name)
    raise ValueError(f"framework must be jax or torch, got {framework!r}")


def device_label(device) -> str:
    """Short name of a resolved device for result files: ``cpu`` or ``cuda`` (torch's
    ``device.type``; JAX's ``platform``, where ``gpu`` means CUDA)."""
    kind = getattr(device, "type", None) or getattr(device, "platform", "cpu")
    return "cuda" if kind in ("cuda", "gpu") else str(kind)
