"""DeconvNet's metacal-aware training objectives (shear equivariance, PSF invariance,
band, flux): the Fourier-space views against GalSim, and training with each term."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
galsim = pytest.importorskip("galsim")

from deconvbench_baselines.deconvnet.config import DeconvNetConfig  # noqa: E402
from deconvbench_baselines.deconvnet.convert import load_weights  # noqa: E402
from deconvbench_baselines.deconvnet.objectives import (  # noqa: E402
    UNetObjective,
    observe_from_truth,
    shear_under_target,
)
from deconvbench_baselines.deconvnet.train import train  # noqa: E402

PIXEL, TARGET, N = 0.2, 0.5, 48
TINY = DeconvNetConfig(depth=3, width=8, blocks_per_scale=1, norm_groups=4, psf_width=4, psf_size=16, cond_dim=8)
GEOMETRY = {"pixel_scale_arcsec": PIXEL, "target_fwhm_arcsec": TARGET}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _draw(profile, n: int = N) -> np.ndarray:
    """GalSim drawing (pixel convolved), centred on pixel (n//2, n//2) for even n."""
    return profile.drawImage(nx=n, ny=n, scale=PIXEL, offset=(0.5, 0.5)).array.astype(np.float64)


def _galaxy(flux=1000.0):
    return galsim.Exponential(half_light_radius=0.45, flux=flux).shear(g1=0.2, g2=-0.1)


def test_shear_under_target_is_the_sheared_galaxy_convolved_with_the_target():
    target = galsim.Gaussian(fwhm=TARGET)
    truth = _draw(galsim.Convolve(_galaxy(), target))
    for g1, g2 in [(0.05, 0.0), (-0.02, 0.04)]:
        want = _draw(galsim.Convolve(_galaxy().shear(g1=g1, g2=g2), target))
        got = shear_under_target(truth, g1, g2, PIXEL, TARGET)[0]
        # measured: 1.7e-5 / 2.1e-5 of the peak (the exponential's light beyond the stamp)
        assert np.abs(got - want).max() < 5e-5 * want.max()
    # g = 0 is the identity
    assert np.abs(shear_under_target(truth, 0.0, 0.0, PIXEL, TARGET)[0] - truth).max() < 1e-9 * truth.max()


def test_observe_from_truth_is_the_galaxy_through_the_psf_stamp():
    target = galsim.Gaussian(fwhm=TARGET)
    psf = galsim.Moffat(beta=3.0, fwhm=0.8).shear(g1=0.03, g2=0.01)
    truth = _draw(galsim.Convolve(_galaxy(), target))
    psf_stamp = _draw(psf)
    want = _draw(galsim.Convolve(_galaxy(), psf))
    got = observe_from_truth(truth, psf_stamp / psf_stamp.sum(), PIXEL, TARGET)[0]
    # measured: 4.8e-4 of the peak, from the Moffat wings beyond the 48-pixel PSF stamp
    # (it holds 0.99952 of the flux and is renormalised to 1, as the datasets' psf stamps are)
    assert np.abs(got - want).max() < 1e-3 * want.max()
    gauss_psf = galsim.Gaussian(fwhm=0.8).shear(g1=0.03, g2=0.01)
    want = _draw(galsim.Convolve(_galaxy(), gauss_psf))
    got = observe_from_truth(truth, _draw(gauss_psf), PIXEL, TARGET)[0]
    assert np.abs(got - want).max() < 5e-6 * want.max()  # measured 6.2e-7 (a compact PSF)


def _batches(seed: int, b: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    target = galsim.Gaussian(fwhm=TARGET)
    out = {key: [] for key in ("observed", "psf", "truth", "noise_sigma")}
    for _ in range(b):
        gal = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.7), flux=rng.uniform(300, 3000))
        gal = gal.shear(g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3))
        psf = galsim.Moffat(beta=3.0, fwhm=rng.uniform(0.7, 0.9)).shear(g1=rng.uniform(-0.03, 0.03), g2=0.0)
        clean = _draw(galsim.Convolve(gal, psf))
        sigma = clean.max() / rng.uniform(5, 30)
        p = _draw(psf)
        out["observed"].append(clean + sigma * rng.standard_normal(clean.shape))
        out["psf"].append(p / p.sum())
        out["truth"].append(_draw(galsim.Convolve(gal, target)))
        out["noise_sigma"].append(sigma)
    return {
        key: np.asarray(value, dtype=np.float64 if key == "noise_sigma" else np.float32) for key, value in out.items()
    }


TRAIN = [_batches(s) for s in (1, 2)]
VAL = [_batches(9)]


def _train(tmp_path, name, objective, epochs=2, **kw):
    return train(
        "torch", TINY, lambda epoch: iter(TRAIN), lambda: iter(VAL), epochs=epochs, lr=3e-3, seed=0,
        out_dir=tmp_path / name, metadata=dict(GEOMETRY), objective=objective, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    "term, space, target",
    [
        ("shear_weight", "pixels", "truth"),
        ("psf_weight", "pixels", "truth"),
        ("shear_weight", "metacal", "truth"),
        ("psf_weight", "metacal", "truth"),
        ("shear_weight", "pixels", "output"),
        ("psf_weight", "pixels", "output"),
        ("shear_weight", "metacal", "output"),
        ("psf_weight", "metacal", "output"),
        ("band_weight", "pixels", "truth"),
        ("flux_weight", "pixels", "truth"),
        ("noiseless_weight", "pixels", "truth"),
    ],
    ids=lambda v: str(v).removesuffix("_weight"),
)
def test_each_objective_term_trains_and_is_recorded(tmp_path, term, space, target):
    objective = UNetObjective(**{term: 1.0}, equivariance_space=space, equivariance_target=target)
    term_dir = f"{term}-{space}-{target}"
    result = _train(tmp_path, term_dir, objective)
    first, last = result["history"][0], result["history"][-1]
    key = term.removesuffix("_weight")
    assert set(first["train_terms"]) >= {"pixel", key, "total"}
    assert np.isfinite(last["train_loss"]) and first["train_terms"][key] > 0
    _, _, meta = load_weights(tmp_path / term_dir / "best.npz")
    assert meta["objective"][term] == 1.0 and meta["objective"]["equivariance_space"] == space
    again = _train(tmp_path, term_dir + "-again", objective)  # deterministic, views included
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in result["history"]]


def test_the_shear_term_makes_the_output_more_equivariant(tmp_path):
    """Trained with a strong shear term, the network's noiseless output commutes with
    shear better than the same network trained on the pixel loss alone."""
    from deconvbench_baselines.deconvnet.convert import flat_to_torch_state
    from deconvbench_baselines.deconvnet.normalise import denormalise, normalise
    from deconvbench_baselines.deconvnet.plugin import DeconvNetTorch  # noqa: F401 (registered)
    from deconvbench_baselines.deconvnet.torch_model import DeconvNetTorch as Net

    def equivariance_error(weights_path):
        flat, config, _ = load_weights(weights_path)
        net = Net(config)
        net.load_state_dict(flat_to_torch_state(flat))
        net.eval()
        batch = VAL[0]
        truth = batch["truth"].astype(np.float64)
        psf = batch["psf"].astype(np.float64)

        def f(obs):
            x, p, nz, s = normalise(obs, psf, np.zeros(len(obs)))
            with torch.no_grad():
                y = net(*(torch.from_numpy(a.astype(np.float32)) for a in (x, p, nz))).numpy()
            return denormalise(y, s)

        g1, g2 = 0.05, 0.0
        obs = observe_from_truth(truth, psf, PIXEL, TARGET)
        obs_g = observe_from_truth(shear_under_target(truth, g1, g2, PIXEL, TARGET), psf, PIXEL, TARGET)
        want = shear_under_target(f(obs), g1, g2, PIXEL, TARGET)
        return float(np.mean(((f(obs_g) - want) ** 2).sum((1, 2)) / (want**2).sum((1, 2))))

    _train(tmp_path, "pixel", UNetObjective(), epochs=3)
    _train(tmp_path, "shear", UNetObjective(shear_weight=100.0), epochs=3)
    assert equivariance_error(tmp_path / "shear" / "best.npz") < equivariance_error(tmp_path / "pixel" / "best.npz")


def test_weighted_ellipticity_of_a_gaussian_is_the_analytic_one():
    """Gaussian-weighted moments of an elliptical Gaussian (covariance C) are those of the
    Gaussian with covariance (C⁻¹ + I/σ_w²)⁻¹."""
    from deconvbench_baselines.deconvnet.objectives import _weighted_ellipticity

    n, sigma_w = 64, 4.0
    cov = np.array([[9.0, 2.0], [2.0, 5.0]])  # (x, y) in pixels²
    y, x = np.mgrid[:n, :n] - n // 2
    inv = np.linalg.inv(cov)
    image = np.exp(-0.5 * (inv[0, 0] * x**2 + 2 * inv[0, 1] * x * y + inv[1, 1] * y**2))
    w = np.linalg.inv(inv + np.eye(2) / sigma_w**2)
    want = np.array([w[0, 0] - w[1, 1], 2 * w[0, 1]]) / (w[0, 0] + w[1, 1])
    centre = torch.full((1, 2), float(n // 2), dtype=torch.float64)
    got = _weighted_ellipticity(torch, torch.from_numpy(image[None]), centre, sigma_w)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_init_weights_fine_tunes_from_a_model(tmp_path):
    _train(tmp_path, "base", UNetObjective(), epochs=1)
    base, _, _ = load_weights(tmp_path / "base" / "best.npz")
    objective = UNetObjective(init_weights=str(tmp_path / "base" / "best.npz"))
    result = train(
        "torch", TINY, lambda epoch: iter(TRAIN), lambda: iter(VAL), epochs=1, lr=1e-12, seed=7,
        out_dir=tmp_path / "tuned", metadata=dict(GEOMETRY), objective=objective,
    )  # fmt: skip
    tuned, _, _ = load_weights(tmp_path / "tuned" / "best.npz")
    # lr ~ 0: the weights are the initial ones, not seed 7's random initialisation
    assert all(np.allclose(tuned[k], base[k], atol=1e-6) for k in base)
    assert result["best_val_nmse"] == pytest.approx(
        _train(tmp_path, "again", UNetObjective(), epochs=1)["best_val_nmse"], rel=1e-4
    )


def test_bad_objectives_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shear_weight"):
        UNetObjective(shear_weight=-1.0)
    with pytest.raises(ValueError, match="shear_max"):
        UNetObjective(shear_max=0.5)
    with pytest.raises(ValueError, match="shear_norm"):
        UNetObjective(shear_norm="pixel")
    with pytest.raises(ValueError, match="equivariance_space"):
        UNetObjective(equivariance_space="fourier")
    with pytest.raises(ValueError, match="equivariance_target"):
        UNetObjective(equivariance_target="model")
    pytest.importorskip("jax")
    with pytest.raises(ValueError, match="framework torch"):
        train("jax", TINY, lambda e: iter(TRAIN), lambda: iter(VAL), epochs=1, out_dir=tmp_path / "j",
              metadata=dict(GEOMETRY), objective=UNetObjective(psf_weight=1.0))  # fmt: skip
    other = DeconvNetConfig(depth=3, width=4, blocks_per_scale=1, norm_groups=2, psf_width=4, psf_size=16, cond_dim=8)
    _train(tmp_path, "base", UNetObjective(), epochs=1)
    with pytest.raises(ValueError, match="different config"):
        init = UNetObjective(init_weights=str(tmp_path / "base" / "best.npz"))
        train("torch", other, lambda e: iter(TRAIN), lambda: iter(VAL), epochs=1, out_dir=tmp_path / "o",
              metadata=dict(GEOMETRY), objective=init)  # fmt: skip


def test_cli_rejects_unknown_and_jax_objectives(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "deconvbench.cli", "train", "--dataset", "smoke", "--out", str(tmp_path / "x")]
    for extra, message in [
        (["--framework", "torch", "--set", "shear_wieght=1"], "unknown DeconvNet option"),
        (["--framework", "jax", "--set", "shear_weight=1"], "need --framework torch"),
        (["--framework", "torch", "--set", "init_weights=missing.npz"], "no such file"),
    ]:
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
