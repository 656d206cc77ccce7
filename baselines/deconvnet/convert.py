"""Framework-neutral DeconvNet weights: a flat dict of numpy float32 arrays.

Keys are the module paths shared by both implementations joined with ".", ending in
the flax leaf name, with flax layouts:

* ``<path>.kernel``: conv kernels (kh, kw, in, out) = HWIO; dense kernels (in, out);
* ``<path>.bias``: biases (out,);
* ``<path>.scale`` / ``<path>.bias``: GroupNorm scale and shift (channels,).

PyTorch's ``state_dict`` uses ``weight`` with OIHW conv kernels and (out, in) linear
weights, and ``weight`` for the GroupNorm scale; the converters rename and transpose
(the model has only Conv2d, Linear and GroupNorm parameters, told apart by rank).

File format (``save_weights`` / ``load_weights``): an uncompressed ``.npz`` holding
the flat arrays plus two 0-d unicode arrays, ``__config__`` (the
``DeconvNetConfig`` as JSON) and ``__metadata__`` (free JSON: framework, epoch,
validation score, dataset, ...). It loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deconvbench.atomic import atomic_write

from .config import DeconvNetConfig

CONFIG_KEY = "__config__"
METADATA_KEY = "__metadata__"

Flat = dict[str, np.ndarray]


# -- JAX (nested flax params) <-> flat -----------------------------------------------
def flatten_tree(tree: Mapping[str, Any], leaf=lambda x: x) -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf(value)} (keys sorted)."""
    flat: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for key in sorted(node):
                walk(node[key], f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = leaf(node)

    walk(tree, "")
    return flat


def jax_params_to_flat(params: Mapping[str, Any]) -> Flat:
    """Nested flax ``params`` (with or without the outer ``{"params": ...}``) -> flat dict."""
    if set(params) == {"params"}:
        params = params["params"]
    return flatten_tree(params, lambda a: np.array(a, dtype=np.float32))


def flat_to_jax_params(flat: Mapping[str, np.ndarray]) -> dict:
    """Flat dict -> nested dict of jax arrays, usable as ``{"params": result}``."""
    import jax.numpy as jnp

    nested: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(np.asarray(value, dtype=np.float32))
    return nested


# -- PyTorch state_dict <-> flat ------------------------------------------------------
def torch_state_to_flat(state: Mapping[str, Any]) -> Flat:
    """``module.state_dict()`` -> flat dict (float32 numpy, flax names and layouts)."""
    flat: Flat = {}
    for key, value in state.items():
        a = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        a = np.asarray(a, dtype=np.float32)
        path, leaf = key.rsplit(".", 1)
        if leaf == "weight":
            if a.ndim == 4:  # conv OIHW -> HWIO
                flat[f"{path}.kernel"] = np.ascontiguousarray(a.transpose(2, 3, 1, 0))
            elif a.ndim == 2:  # linear (out, in) -> (in, out)
                flat[f"{path}.kernel"] = np.ascontiguousarray(a.T)
            elif a.ndim == 1:  # GroupNorm weight -> scale
                flat[f"{path}.scale"] = a.copy()
            else:
                raise ValueError(f"unexpected parameter {key} of shape {a.shape}")
        elif leaf == "bias":
            flat[key] = a.copy()
        else:
            raise ValueError(f"unexpected parameter {key} (DeconvNet has only weight/bias)")
    return flat


def flat_to_torch_state(flat: Mapping[str, np.ndarray]) -> dict:
    """Flat dict -> ``state_dict`` for ``DeconvNetTorch.load_state_dict``."""
    import torch

    state = {}
    for key, value in flat.items():
        a = np.asarray(value, dtype=np.float32)
        path, leaf = key.rsplit(".", 1)
        if leaf == "kernel":
            if a.ndim == 4:  # HWIO -> OIHW
                a = a.transpose(3, 2, 0, 1)
            elif a.ndim == 2:  # (in, out) -> (out, in)
                a = a.T
            else:
                raise ValueError(f"unexpected kernel {key} of shape {a.shape}")
            state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(a))
        elif leaf == "scale":
            state[f"{path}.weight"] = torch.from_numpy(a.copy())
        elif leaf == "bias":
            state[key] = torch.from_numpy(a.copy())
        else:
            raise ValueError(f"unexpected parameter {key}")
    return state


# -- .npz files ------------------------------------------------------------------------
def save_weights(
    path: str | os.PathLike,
    flat: Mapping[str, np.ndarray],
    config: DeconvNetConfig,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``flat`` + config + metadata to ``path`` atomically (temp file, then
    ``os.replace``), so a reader never sees a half-written file."""
    path = Path(path)
    for key in flat:
        if key.startswith("__"):
            raise ValueError(f"parameter name {key!r} is reserved")
    arrays = {key: np.asarray(value, dtype=np.float32) for key, value in flat.items()}
    arrays[CONFIG_KEY] = np.array(config.to_json())
    arrays[METADATA_KEY] = np.array(json.dumps(dict(metadata or {}), sort_keys=True, default=_json_default))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_weights(path: str | os.PathLike) -> tuple[Flat, DeconvNetConfig, dict]:
    """Read a file written by :func:`save_weights` -> ``(flat, config, metadata)``.

    Raises ``FileNotFoundError`` if missing and ``ValueError`` if it is not a valid
    DeconvNet weights file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise ValueError(f"{path} is not a readable DeconvNet weights file: {exc}") from exc
    if CONFIG_KEY not in arrays:
        raise ValueError(f"{path} is not a DeconvNet weights file (no {CONFIG_KEY} entry)")
    config = DeconvNetConfig.from_json(str(arrays.pop(CONFIG_KEY)))
    metadata = json.loads(str(arrays.pop(METADATA_KEY))) if METADATA_KEY in arrays else {}
    return arrays, config, metadata


def check_flat(flat: Mapping[str, np.ndarray], expected: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``flat`` has exactly the names and shapes of ``expected``
    (values: arrays or anything with a ``.shape``, e.g. ``jax.ShapeDtypeStruct``)."""
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, ref in expected.items():
        shape, want = tuple(np.shape(flat[key])), tuple(ref.shape)
        if shape != want:
            raise ValueError(f"weights do not match the architecture: {key} has shape {shape}, expected {want}")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
