"""DeconvNet models: shapes, normalisation, parameter budget, JAX <-> PyTorch weight
conversion and the plugin classes."""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import pytest

from deconvbench.errors import MethodError
from deconvbench.methods import Batch, Deconvolver
from deconvbench_baselines.deconvnet.config import DeconvNetConfig
from deconvbench_baselines.deconvnet.convert import (
    flat_to_jax_params,
    flat_to_torch_state,
    jax_params_to_flat,
    load_weights,
    save_weights,
    torch_state_to_flat,
)
from deconvbench_baselines.deconvnet.normalise import NOISE_FLOOR, denormalise, normalise, normalise_target

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

from deconvbench_baselines.deconvnet import jax_model, plugin, torch_model  # noqa: E402

# Small but structurally complete (3 levels, GroupNorm, FiLM, noise input): one config
# for all tests so that JAX compiles it once.
TINY = DeconvNetConfig(depth=3, width=8, blocks_per_scale=1, norm_groups=4, psf_width=4, psf_size=16, cond_dim=8)


def _inputs(rng, b, n):
    """Plausible normalised inputs: a blob + noise, a Gaussian PSF of peak 1, log noise."""
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    blob = np.exp(-(yy**2 + xx**2) / (2 * 3.0**2))
    x = (blob[None] + 0.1 * rng.standard_normal((b, n, n))).astype(np.float32)
    psf = np.repeat(np.exp(-(yy**2 + 0.8 * xx**2) / (2 * 2.0**2))[None], b, axis=0).astype(np.float32)
    noise = rng.uniform(-4, 0, b).astype(np.float32)
    return x, psf, noise


@functools.cache
def _jitted_apply(config):
    model = jax_model.DeconvNetJax(config)
    return jax.jit(lambda params, x, psf, noise: model.apply({"params": params}, x, psf, noise))


def _jax_apply(config, params, x, psf, noise):
    return np.asarray(_jitted_apply(config)(params, x, psf, noise))


def _torch_apply(model, x, psf, noise):
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x), torch.from_numpy(psf), torch.from_numpy(noise)).numpy()


def _perturbed(flat, seed):
    """Random values everywhere (the default init zeroes FiLM, last convs and head,
    which would hide layout errors in those layers)."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.2, v.shape)).astype(np.float32) for k, v in flat.items()}


def _assert_close(a, b):
    scale = max(1.0, float(np.abs(a).max()))
    diff = float(np.abs(a - b).max())
    assert diff <= 1e-5 * scale, f"max abs diff {diff} (output scale {scale})"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- config ---------------------------------------------------------------------------------
def test_config_roundtrip_and_validation():
    cfg = DeconvNetConfig()
    assert DeconvNetConfig.from_dict(cfg.to_dict()) == cfg
    assert DeconvNetConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match="norm_groups"):
        DeconvNetConfig(width=12, norm_groups=8)
    with pytest.raises(ValueError, match="psf_size"):
        DeconvNetConfig(psf_size=30)
    with pytest.raises(ValueError, match="unknown"):
        DeconvNetConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="architecture"):
        DeconvNetConfig.from_dict({**cfg.to_dict(), "arch": "other"})


def test_default_config_parameter_budget():
    cfg = DeconvNetConfig()
    n_torch = torch_model.count_params(torch_model.DeconvNetTorch(cfg))
    shapes = jax.eval_shape(lambda: jax_model.init_params(cfg))
    n_jax = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert n_jax == n_torch
    assert n_torch == 472_497  # the shipped default (width 16); the issue caps it at 2.5M
    assert n_torch <= 2_500_000
    assert 4 * n_torch <= 10e6  # float32 bytes


# -- normalisation ----------------------------------------------------------------------------
def test_normalise_roundtrip_and_equivariance():
    rng = np.random.default_rng(0)
    b, n = 5, 21
    x0, psf, _ = _inputs(rng, b, n)
    observed = 300.0 * x0
    psf = psf / psf.sum(axis=(1, 2), keepdims=True)
    sigma = np.array([0.0, 1.0, 10.0, 30.0, 1e6])
    x, psf_in, noise_in, scale = normalise(observed, psf, sigma)
    assert x.dtype == psf_in.dtype == noise_in.dtype == np.float32
    assert np.all(scale > 0) and scale.shape == (b,)
    np.testing.assert_allclose(denormalise(x, scale), observed, rtol=1e-6, atol=1e-6)
    truth = observed * 1.5
    np.testing.assert_allclose(denormalise(normalise_target(truth, scale), scale), truth, rtol=1e-6, atol=1e-6)
    # the PSF keeps its shape (peak 1, not z-scored) and sums to 1 / peak
    np.testing.assert_allclose(psf_in.max(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(psf_in.sum(axis=(1, 2)) * psf.max(axis=(1, 2)), 1.0, rtol=1e-5)
    assert noise_in[0] == pytest.approx(np.log10(NOISE_FLOOR))
    assert scale[-1] == pytest.approx(1e6)  # noise floor on the scale
    assert noise_in[-1] == pytest.approx(0.0, abs=1e-6)
    # flux scaling: same network input, scale multiplied
    x2, _, noise2, scale2 = normalise(7.0 * observed, psf, 7.0 * sigma)
    np.testing.assert_allclose(x2, x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noise2, noise_in, atol=1e-5)
    np.testing.assert_allclose(scale2, 7.0 * scale, rtol=1e-6)
    # degenerate stamp: all zeros and noiseless stays finite
    x3, _, n3, s3 = normalise(np.zeros((1, n, n)), psf[:1], 0.0)
    assert s3[0] == 1.0 and np.all(x3 == 0) and np.isfinite(n3).all()


# -- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [48, 53])
def test_shapes_jax(n):
    params = jax_model.init_params(TINY, seed=0)
    x, psf, noise = _inputs(np.random.default_rng(n), 4, n)
    y = _jax_apply(TINY, _perturbed_jax(params), x, psf, noise)
    assert y.shape == (4, n, n) and y.dtype == np.float32 and np.isfinite(y).all()


@pytest.mark.parametrize("n", [48, 53])
def test_shapes_torch(n):
    torch.manual_seed(0)
    model = torch_model.DeconvNetTorch(TINY)
    x, psf, noise = _inputs(np.random.default_rng(n), 4, n)
    y = _torch_apply(model, x, psf, noise)
    assert y.shape == (4, n, n) and y.dtype == np.float32 and np.isfinite(y).all()


def _perturbed_jax(params):
    return flat_to_jax_params(_perturbed(jax_params_to_flat(params), 1))


# -- conversion ---------------------------------------------------------------------------------
def test_parameter_names_and_shapes_agree():
    flat_jax = jax_params_to_flat(jax_model.init_params(TINY))
    flat_torch = torch_state_to_flat(torch_model.DeconvNetTorch(TINY).state_dict())
    assert set(flat_jax) == set(flat_torch)
    assert "enc0.block0.conv1.kernel" in flat_jax and "psf.level0.conv1.kernel" in flat_jax
    assert "enc1.block0.norm1.scale" in flat_jax and "cond2.dense1.kernel" in flat_jax
    for key in flat_jax:
        assert flat_jax[key].shape == flat_torch[key].shape, key
    assert flat_jax["enc1.block0.conv1.kernel"].shape == (3, 3, 16, 16)  # HWIO
    assert flat_jax["down0.kernel"].shape == (3, 3, 8, 16)


def test_jax_to_torch_equivalence():
    # JAX init, then random values in every tensor: the default init zeroes the FiLM
    # layers, the second conv of each block and the head, which makes the fresh network
    # the identity (global residual) and would hide layout errors in those layers.
    flat = _perturbed(jax_params_to_flat(jax_model.init_params(TINY, seed=3)), 2)
    params = flat_to_jax_params(flat)
    model = torch_model.DeconvNetTorch(TINY)
    model.load_state_dict(flat_to_torch_state(flat), strict=True)
    for n in (48, 53):
        x, psf, noise = _inputs(np.random.default_rng(10 + n), 4, n)
        y_jax = _jax_apply(TINY, params, x, psf, noise)
        _assert_close(y_jax, _torch_apply(model, x, psf, noise))
        assert np.abs(y_jax - x).max() > 1e-2  # not trivially the identity


def test_torch_to_jax_equivalence():
    torch.manual_seed(5)
    model = torch_model.DeconvNetTorch(TINY)
    flat = _perturbed(torch_state_to_flat(model.state_dict()), 4)
    model.load_state_dict(flat_to_torch_state(flat), strict=True)
    params = flat_to_jax_params(torch_state_to_flat(model.state_dict()))
    for n in (48, 53):
        x, psf, noise = _inputs(np.random.default_rng(20 + n), 4, n)
        _assert_close(_jax_apply(TINY, params, x, psf, noise), _torch_apply(model, x, psf, noise))


def test_converter_round_trips_are_exact():
    flat = _perturbed(jax_params_to_flat(jax_model.init_params(TINY)), 6)
    back = torch_state_to_flat(flat_to_torch_state(flat))
    again = jax_params_to_flat(flat_to_jax_params(back))
    assert set(again) == set(flat)
    for key in flat:
        np.testing.assert_array_equal(again[key], flat[key])


def test_weights_file_round_trip(tmp_path):
    flat = _perturbed(jax_params_to_flat(jax_model.init_params(TINY)), 7)
    meta = {"dataset": "smoke", "epoch": 3, "val_nmse": np.float64(0.25)}
    path = save_weights(tmp_path / "w.npz", flat, TINY, meta)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary left behind
    flat2, cfg2, meta2 = load_weights(path)
    assert cfg2 == TINY
    assert meta2 == {"dataset": "smoke", "epoch": 3, "val_nmse": 0.25}
    assert set(flat2) == set(flat)
    for key in flat:
        assert flat2[key].dtype == np.float32
        np.testing.assert_array_equal(flat2[key], flat[key])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        load_weights(tmp_path / "bad.npz")


# -- plugin -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    flat = _perturbed(jax_params_to_flat(jax_model.init_params(TINY, seed=8)), 9)
    path = tmp_path_factory.mktemp("w") / "tiny.npz"
    save_weights(path, flat, TINY, {"dataset": "test", "pixel_scale_arcsec": 0.2, "target_fwhm_arcsec": 0.5})
    return path, flat


def _batch(rng, b, n, pixel_scale=0.2):
    x, psf, _ = _inputs(rng, b, n)
    psf = psf / psf.sum(axis=(1, 2), keepdims=True)
    sigma = np.where(np.arange(b) % 3 == 0, 0.0, 5.0)
    return Batch(observed=500 * x, psf=psf, noise_sigma=sigma, pixel_scale_arcsec=pixel_scale, target_fwhm_arcsec=0.5)


@pytest.mark.parametrize("cls", [plugin.DeconvNetJax, plugin.DeconvNetTorch])
def test_plugin_matches_model_and_chunks(cls, tiny_weights):
    path, flat = tiny_weights
    method = cls(weights=str(path), batch_size=4)  # 11 stamps: chunks 4, 4, 3 (JAX: padded to 4)
    assert isinstance(method, Deconvolver) and method.device == "cpu"
    batch = _batch(np.random.default_rng(1), 11, 53)
    out = method.deconvolve(batch)
    assert out.shape == (11, 53, 53) and out.dtype == np.float32
    x, psf_in, noise_in, scale = normalise(batch.observed, batch.psf, batch.noise_sigma)
    params = flat_to_jax_params(flat)
    y = np.concatenate([_jax_apply(TINY, params, *(a[i : i + 4] for a in (x, psf_in, noise_in))) for i in (0, 4, 7)])
    ref = denormalise(np.concatenate([y[:8], y[-3:]]), scale)
    _assert_close(out / scale[:, None, None], ref / scale[:, None, None])
    p = method.params()
    assert p["weights"] == "tiny.npz"
    assert p["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p["n_params"] == sum(v.size for v in flat.values())
    assert DeconvNetConfig.from_dict(p["config"]) == TINY
    with pytest.raises(MethodError, match="pixel_scale"):
        method.deconvolve(_batch(np.random.default_rng(2), 4, 48, pixel_scale=0.1))


@pytest.mark.parametrize("cls", [plugin.DeconvNetJax, plugin.DeconvNetTorch])
def test_plugin_errors(cls, tmp_path, monkeypatch):
    monkeypatch.setattr(plugin, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(MethodError, match="no trained weights at .*deconvnet-ground-v1.npz"):
        cls()
    with pytest.raises(MethodError, match="no DeconvNet weights"):
        cls(weights=str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(MethodError, match="cannot load"):
        cls(weights=str(tmp_path / "junk.npz"))
    # weights that do not fit their config
    flat = jax_params_to_flat(jax_model.init_params(TINY))
    flat.pop("head.bias")
    save_weights(tmp_path / "broken.npz", flat, TINY)
    with pytest.raises(MethodError, match="do not fit"):
        cls(weights=str(tmp_path / "broken.npz"))
    assert cls.requires and cls.extra in ("jax", "torch") and cls.description
