"""DeconvNet: a PSF-conditioned residual U-Net deconvolver, in JAX/flax and PyTorch.

Modules (see README.md in this folder):

* ``config``: :class:`DeconvNetConfig` (architecture hyper-parameters);
* ``normalise``: per-stamp invertible normalisation (numpy);
* ``jax_model`` / ``torch_model``: the same network in each framework;
* ``convert``: the framework-neutral ``.npz`` weights format and converters;
* ``train``: the shared training driver :func:`train.train`;
* ``plugin``: the registered methods ``DeconvNetJax`` and ``DeconvNetTorch``.

Importing this package (or ``plugin``) does not import jax or torch.
"""

from .config import DeconvNetConfig
from .convert import load_weights, save_weights
from .normalise import denormalise, normalise

__all__ = ["DeconvNetConfig", "denormalise", "load_weights", "normalise", "save_weights"]
