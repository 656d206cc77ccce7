"""Ablation of the metacal-aware deconvolvers: train each variant, measure, tabulate.

For every variant (a name and the ``deconvbench train`` arguments that make it) this
script trains it (unless ``OUT/VARIANT/best.npz`` exists), then runs, with the normal
commands,

* ``deconvbench run --method M --dataset CARD --split test --n N_TEST``: NMSE and mean
  |Δe| per SNR level, deconvolution stamps/s;
* ``deconvbench run --method M --metacal --dataset MCAL --split S --n N_MCAL`` for
  S in noiseless, snr50, snr20, leakage: m ± σm and c per split, α on the leakage split;

and writes ``OUT/ablation.md`` (one row per variant, plus the reference methods named
with ``--reference``) and ``OUT/ablation.json``. Each row's commands are in the JSON.

    python benchmarks/deconvnet_ablation.py --out out/ablation --variants all --reference fft deconvnet-torch

Not an asv benchmark (asv collects only ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

SNRS = ("10", "20", "40", "80", "200", "noiseless")
MCAL_SPLITS = ("noiseless", "snr50", "snr20", "leakage")

# name -> the method trained and measured, its extra `deconvbench train` arguments, and
# overrides of this script's training settings (epochs, lr, n_train).
SHIPPED_UNET = "baselines/deconvnet/weights/deconvnet-ground-v1.npz"
_UNET_TUNE = {"method": "deconvnet-torch", "epochs": 1, "lr": 3e-4}
_OUT = ["--set", "equivariance_target=output"]
_MCAL = ["--set", "equivariance_space=metacal"]
VARIANTS: dict[str, dict] = {
    "filter-pixel-qflat3": {"method": "deconvfilter", "args": ["--set", "q_flat=3.0"]},
    "filter-pixel-qflat2": {"method": "deconvfilter", "args": ["--set", "q_flat=2.0"]},
    "filter-pixel-qflat0": {"method": "deconvfilter", "args": ["--set", "q_flat=0"]},
    "filter-band100-qflat0": {"method": "deconvfilter", "args": ["--set", "q_flat=0", "--set", "band_weight=100"]},
    # the shipped DeconvFilter weights of every card: q_flat = 3, trained until the
    # validation objective stops improving (cosine schedule over at most 20 epochs)
    "filter-shipped": {
        "method": "deconvfilter",
        "args": ["--set", "q_flat=3.0"],
        "n_train": 6000,
        "n_val": 2000,
        "epochs": 20,
        "patience": 3,
        "threads": 1,
    },
    # the U-Net (DeconvNet), fine-tuned from the shipped pixel-loss weights with one
    # objective term each (weights chosen so that each term starts 5-50x the pixel term).
    # equivariance_target=output: the unsheared output is the (fixed) target
    "unet-pixel": {**_UNET_TUNE, "args": []},
    "unet-shear-nmse": {**_UNET_TUNE, "args": _OUT + ["--set", "shear_weight=1000", "--set", "shear_norm=output"]},
    "unet-shear": {**_UNET_TUNE, "args": _OUT + ["--set", "shear_weight=0.1"]},
    "unet-psf10": {**_UNET_TUNE, "args": _OUT + ["--set", "psf_weight=10"]},
    "unet-psf": {**_UNET_TUNE, "args": _OUT + ["--set", "psf_weight=1"]},
    "unet-shear-mcal-output": {**_UNET_TUNE, "args": _OUT + _MCAL + ["--set", "shear_weight=10"]},
    # metacal space, matched to the truth: the response error² and the leakage² of the
    # Γ-reconvolved wmom ellipticity, both outputs differentiated
    "unet-shear-mcal": {**_UNET_TUNE, "args": _MCAL + ["--set", "shear_weight=10"]},
    "unet-psf-mcal": {**_UNET_TUNE, "args": _MCAL + ["--set", "psf_weight=0.01"]},
    "unet-psf-mcal-anchored": {
        **_UNET_TUNE,
        "args": _MCAL + ["--set", "psf_weight=0.01", "--set", "noiseless_weight=1"],
    },
    "unet-noiseless": {**_UNET_TUNE, "args": ["--set", "noiseless_weight=1"]},
    "unet-shear3-mcal": {**_UNET_TUNE, "args": _MCAL + ["--set", "shear_weight=3"]},
    "unet-shear-psf-mcal": {
        **_UNET_TUNE,
        "args": _MCAL + ["--set", "shear_weight=10", "--set", "psf_weight=0.1", "--set", "noiseless_weight=1"],
    },
    "unet-band": {**_UNET_TUNE, "args": ["--set", "band_weight=10"]},
    "unet-flux": {**_UNET_TUNE, "args": ["--set", "flux_weight=10"]},
    "unet-all": {
        **_UNET_TUNE,
        "args": _MCAL
        + [
            "--set",
            "shear_weight=10",
            "--set",
            "psf_weight=0.01",
            "--set",
            "band_weight=10",
            "--set",
            "flux_weight=10",
            "--set",
            "noiseless_weight=1",
        ],
    },  # fmt: skip
}


def train_command(name: str, args) -> tuple[str, list[str]]:
    """(method, the `deconvbench train` command) of variant ``name``."""
    variant = VARIANTS[name]
    method = variant["method"]
    vdir = args.out / name
    cmd = _cli("train", "--method", method, "--dataset", args.dataset,
               "--n-train", str(variant.get("n_train", args.n_train)), "--n-val", str(variant.get("n_val", args.n_val)),
               "--epochs", str(variant.get("epochs", args.epochs)), "--batch-size", str(args.batch_size),
               "--lr", str(variant.get("lr", args.lr)), "--device", args.device,
               "--threads", str(variant.get("threads", args.threads)), *variant["args"])  # fmt: skip
    if "patience" in variant:
        cmd += ["--patience", str(variant["patience"])]
    if method.startswith("deconvnet"):
        cmd += ["--set", f"init_weights={SHIPPED_UNET}", "--patience", "1"]
    return method, cmd + ["--out", str(vdir)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deconvbench.cli", *args]


def _run(cmd: list[str], log) -> None:
    log.write("$ " + shlex.join(cmd[2:]) + "\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def measure(method: str, options: list[str], out: Path, args, log) -> dict:
    """Run the test split and the metacal splits; return the row and its commands."""
    out.mkdir(parents=True, exist_ok=True)
    opts = [x for o in options for x in ("--option", o)]
    commands = []
    test_json = out / "test.json"
    cmd = _cli("run", "--method", method, *opts, "--dataset", args.dataset, "--split", "test",
               "--n", str(args.n_test), "--out", str(test_json))  # fmt: skip
    if not test_json.exists():
        _run(cmd, log)
    commands.append(shlex.join(["deconvbench", *cmd[3:]]))
    test = json.loads(test_json.read_text())
    row: dict = {"method": method, "options": options}
    by_snr = test["metrics"]["by_snr"]
    row["nmse"] = {s: by_snr[s]["nmse"]["mean"] for s in SNRS if s in by_snr}
    row["e_err"] = {s: by_snr[s]["e_err"]["mean"] for s in SNRS if s in by_snr}
    row["stamps_per_s"] = test["throughput"]["deconv_gal_per_s"]
    row["device"] = test["throughput"].get("device")
    if args.mcal_dataset == "none":  # no metacal card of this geometry
        row["commands"] = commands
        return row
    mcal_opts = opts + [x for o in args.mcal_option for x in ("--option", o)]
    for split in MCAL_SPLITS:
        path = out / f"metacal-{split}.json"
        cmd = _cli("run", "--method", method, *mcal_opts, "--metacal", "--dataset", args.mcal_dataset, "--split", split,
                   "--n", str(args.n_mcal), "--out", str(path))  # fmt: skip
        if not path.exists():
            _run(cmd, log)
        commands.append(shlex.join(["deconvbench", *cmd[3:]]))
        mc = json.loads(path.read_text())["metacal"]
        row[split] = {k: mc.get(k) for k in ("m", "m_err", "c", "c_err", "alpha", "alpha_err")}
    row["commands"] = commands
    return row


def _fmt(x, spec=".3g") -> str:
    return "" if x is None else format(x, spec)


def _pm(value, err, spec) -> str:
    return "" if value is None else f"{_fmt(value, spec)} ± {_fmt(err, '.1e')}"


def markdown(rows: dict[str, dict]) -> str:
    head = (
        ["variant"]
        + [f"NMSE {s}" for s in SNRS]
        + [f"\\|Δe\\| {s}" for s in SNRS]
        + ["m noiseless", "m SNR 50", "m SNR 20", "c noiseless", "c SNR 50", "c SNR 20", "α", "stamps/s"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in rows.items():
        cells = [name]
        cells += [_fmt(r["nmse"].get(s)) for s in SNRS]
        cells += [_fmt(r["e_err"].get(s)) for s in SNRS]
        none: dict = {"m": None, "m_err": None, "c": None, "c_err": None, "alpha": None, "alpha_err": None}
        mc = {split: r.get(split) or none for split in MCAL_SPLITS}  # absent: no metacal card measured
        for split in ("noiseless", "snr50", "snr20"):
            cells.append(_pm(mc[split]["m"], mc[split]["m_err"], "+.2e"))
        for split in ("noiseless", "snr50", "snr20"):
            cells.append(_pm(mc[split]["c"], mc[split]["c_err"], "+.1e"))
        cells.append(_pm(mc["leakage"]["alpha"], mc["leakage"]["alpha_err"], "+.2e"))
        cells.append(_fmt(r["stamps_per_s"], ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/ablation"))
    parser.add_argument("--variants", nargs="*", default=["all"], help="variant names (default all)")
    parser.add_argument("--reference", nargs="*", default=[], help="registered methods to measure as they are")
    parser.add_argument("--dataset", default="ground-v3")
    parser.add_argument("--mcal-dataset", default="metacal-v3", help="metacal card of the same geometry, or none")
    parser.add_argument(
        "--mcal-option", action="append", default=[], help="extra --option for the metacal runs (repeatable)"
    )
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-mcal", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ship", default=None, help="variant to ship as the default weights for --dataset")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    if args.ship and VARIANTS.get(args.ship, {}).get("method") != "deconvfilter":
        print(f"--ship takes a deconvfilter variant, got {args.ship!r}", file=sys.stderr)
        return 2
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        print(f"unknown variant(s): {', '.join(unknown)} (known: {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    from deconvbench.cards import load_card
    from deconvbench.errors import DeconvbenchError

    for option, card in (("--dataset", args.dataset), ("--mcal-dataset", args.mcal_dataset)):
        if option == "--mcal-dataset" and card == "none":
            continue
        try:
            load_card(card)
        except (DeconvbenchError, OSError, ValueError) as exc:
            print(f"{option} {card!r}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return _ablate(names, args)
    except subprocess.CalledProcessError as exc:
        print(
            f"command failed (exit {exc.returncode}): {shlex.join(exc.cmd[2:])}; see {args.out / 'ablation.log'}",
            file=sys.stderr,
        )
        return exc.returncode or 1


def _ablate(names: list[str], args) -> int:
    rows: dict[str, dict] = {}
    with open(args.out / "ablation.log", "a") as log:
        for ref in args.reference:
            rows[ref] = measure(ref, [], args.out / ref, args, log)
        for name in names:
            vdir = args.out / name
            weights = vdir / "best.npz"
            method, train_cmd = train_command(name, args)
            if not weights.exists():
                _run(train_cmd, log)
            row = measure(method, [f"{method}.weights={weights}"], vdir, args, log)
            row["commands"].insert(0, shlex.join(["deconvbench", *train_cmd[3:]]))
            rows[name] = row
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=1))
    (args.out / "ablation.md").write_text(markdown(rows))
    print(markdown(rows))
    if args.ship:
        ship(args.ship, rows[args.ship], args.out / args.ship, args.dataset)
    return 0


def ship(name: str, row: dict, vdir: Path, dataset: str) -> None:
    """Copy VARIANT's best.npz to the shipped weights ``weights/deconvfilter-DATASET.npz``
    and write its model card beside it: the training card plus the test and metacal
    measurements of this script (with their commands)."""
    from deconvbench.atomic import atomic_write, write_json_atomic
    from deconvbench_baselines.deconvnet.filter_plugin import default_filter_weights_path

    target = default_filter_weights_path(dataset)
    blob = (vdir / "best.npz").read_bytes()
    atomic_write(target, lambda f: f.write(blob))
    card = json.loads((vdir / "model_card.json").read_text())
    card["variant"] = name
    card["measured"] = {key: value for key, value in row.items() if key not in ("options",)}
    card["measured"]["weights_option"] = "default weights of deconvfilter (dataset=" + dataset + ")"
    write_json_atomic(target.with_suffix(".json"), card, indent=1, sort_keys=True)
    print(f"shipped {name} as {target.name}")


if __name__ == "__main__":
    sys.exit(main())
