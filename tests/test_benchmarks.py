"""The asv benchmark suite imports and is discovered (a broken benchmark fails CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_asv_check_discovers_the_benchmarks(tmp_path):
    asv = shutil.which("asv", path=str(Path(sys.executable).parent)) or shutil.which("asv")
    if asv is None:
        pytest.skip("asv is not installed (extra [dev])")
    proc = subprocess.run(
        [asv, "check", "-E", f"existing:{sys.executable}"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout


def test_benchmark_modules_define_benchmarks():
    sys.path.insert(0, str(REPO))
    try:
        import importlib

        names = []
        for module in ("bench_generate", "bench_deconvolve", "bench_metacal", "bench_science"):
            mod = importlib.import_module(f"benchmarks.{module}")
            for cls in vars(mod).values():
                if isinstance(cls, type) and cls.__module__ == mod.__name__:
                    names += [n for n in vars(cls) if n.startswith(("time_", "peakmem_", "track_"))]
    finally:
        sys.path.remove(str(REPO))
    for prefix in ("time_", "peakmem_", "track_"):
        assert any(n.startswith(prefix) for n in names), prefix


def _bench(module: str):
    import importlib

    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"benchmarks.{module}")
    finally:
        sys.path.remove(str(REPO))


def test_benchmark_data_stays_in_the_working_folder(tmp_path, monkeypatch):
    """asv removes its working folder after the benchmarks: nothing may be written elsewhere."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("deconvbench-asv-*"))
    path = Path(_bench("_data").generate_split("smoke", "test", n=8))
    assert path.is_relative_to(tmp_path) and path.exists()
    generate = _bench("bench_generate").Generate()
    generate.setup("ground-v3")
    assert generate.folder.exists()
    generate.teardown("ground-v3")
    assert not generate.folder.exists()
    assert set(Path(tempfile.gettempdir()).glob("deconvbench-asv-*")) == before


def test_a_missing_benchmarked_method_fails_loudly():
    data = _bench("_data")
    with pytest.raises(RuntimeError, match="benchmarked method 'no-such-method' is missing"):
        data.benchmarked_method("no-such-method")
    with pytest.raises(RuntimeError, match="missing"):
        _bench("bench_deconvolve").Deconvolve().setup("unused", 256, "no-such-method")


def test_ablation_variants_build_valid_train_commands(tmp_path):
    """Every variant of the DeconvNet/DeconvFilter ablation names a registered method and
    only options its trainer accepts (a typo would fail hours into an ablation run)."""
    import argparse
    import importlib

    from deconvbench_baselines.deconvnet.config import DeconvNetConfig
    from deconvbench_baselines.deconvnet.filter_model import FilterConfig
    from deconvbench_baselines.deconvnet.losses import LossWeights
    from deconvbench_baselines.deconvnet.objectives import UNetObjective

    ablation = importlib.import_module("benchmarks.deconvnet_ablation")
    args = argparse.Namespace(out=tmp_path, dataset="ground-v3", n_train=4000, n_val=1000, epochs=2,
                              batch_size=32, lr=1e-2, device="cpu", threads=1)  # fmt: skip
    for name, variant in ablation.VARIANTS.items():
        method, cmd = ablation.train_command(name, args)
        assert method == variant["method"] and cmd[cmd.index("--out") + 1] == str(tmp_path / name)
        options = dict(cmd[i + 1].split("=", 1) for i, word in enumerate(cmd) if word == "--set")
        if method == "deconvfilter":
            allowed = set(FilterConfig.__dataclass_fields__) | set(LossWeights.__dataclass_fields__)
        else:
            allowed = set(DeconvNetConfig.__dataclass_fields__) | UNetObjective.keys()
            UNetObjective(**{k: (v if not v.replace(".", "").isdigit() else float(v)) for k, v in options.items()})
        assert set(options) <= allowed, name


@pytest.mark.parametrize("option", ["--dataset", "--mcal-dataset"])
def test_ablation_unknown_card_is_one_line(option, tmp_path, capsys):
    """A card name the ablation cannot load stops it before any work: one line, exit 2."""
    import importlib

    ablation = importlib.import_module("benchmarks.deconvnet_ablation")
    assert ablation.main([option, "no-such-card", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-card" in err and option in err
    assert not (tmp_path / "out").exists()
