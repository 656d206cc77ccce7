"""A wheel built from the repository carries everything a user needs (cards, PSF models,
DeconvNet weights, the result schema) and works from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("deconvbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "deconvbench/cli/__init__.py",
        "deconvbench/result.schema.json",
        "deconvbench_datasets/smoke.toml",
        "deconvbench_datasets/checksums.json",
        "deconvbench_baselines/deconvnet/weights/deconvnet-ground-v1.npz",
    ):
        assert expected in names, expected
    assert any(n.startswith("deconvbench_datasets/psf-models/") for n in names)

    # a separate environment that has the dependencies (this one's site-packages, appended
    # after its own, without its editable install of the checkout) and the wheel, no deps
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DECONVBENCH_DATA")}
    env["DECONVBENCH_DATA"] = str(work / "data")

    def cli(*args):
        code = "from deconvbench.cli import main; main()"
        return subprocess.run([python, "-c", code, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    where = subprocess.run([python, "-c", "import deconvbench, deconvbench_baselines; print(deconvbench.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert str(site) in where.stdout and str(REPO) not in where.stdout, where.stdout + where.stderr
    gen = cli("generate", "smoke", "--split", "test", "--n", "8", "--out", "smoke8.h5")
    assert gen.returncode == 0, gen.stderr
    run = cli("run", "-m", "fft", "-m", "deconvnet-torch", "--data", "smoke8.h5", "--out", "results")
    assert run.returncode == 0, run.stderr
    for name in ("fft", "deconvnet-torch"):
        result = json.loads((work / "results" / f"{name}_smoke-v3_test_n8.json").read_text())
        assert result["failures"]["stamps_failed"] == 0 and result["dataset"]["checksum_verified"]
