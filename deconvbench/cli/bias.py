"""``deconvbench bias``: the streaming precision test of the metacal shear bias (library: deconvbench.bias)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import (
    BLAS_THREADS_OPTION,
    CENTRING_HELP,
    EXECUTOR_OPTION,
    SCHEDULER_FILE_OPTION,
    SCHEDULER_OPTION,
    WORKERS_OPTION,
    command_line,
    executor_spec,
    metacal_config,
    parse_options,
    progress_task,
)


@app.command("bias")
def bias_command(
    method: str = typer.Option(..., "--method", help="method name (see list-methods)"),
    card: str = typer.Option("metacal-offsets", "--card", help="metacal card (name or TOML path)"),
    split: str = typer.Option(..., "--split", help="split of the card, e.g. snr50"),
    n: int = typer.Option(..., "--n", help="number of stamps (multiple of 4); rendered on the fly, never stored"),
    out: Path | None = typer.Option(None, "--out", help="result JSON (default out/bias_METHOD_CARD_SPLIT_nN.json)"),
    fixnoise: bool = typer.Option(False, "--fixnoise", help="add ngmix's fixnoise term"),
    estimator: str = typer.Option("wmom", "--estimator", help="wmom or admom"),
    centring: str = typer.Option("newton", "--centring", help=CENTRING_HELP),
    chunk_groups: int = typer.Option(64, "--chunk-groups", help="groups of 4 stamps per chunk (memory ~ chunk)"),
    n_boot: int = typer.Option(200, "--n-boot", help="Poisson bootstrap replicates"),
    device: str | None = typer.Option(
        None, "--device", help="run the Fourier route of wmom in JAX on cpu or gpu (default: numpy)"
    ),
    option: list[str] = typer.Option([], "--option", help="METHOD.key=value passed to the method"),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="card setting KEY=VALUE applied first (repeatable), e.g. --set stamp.kernel_wrap=truncated: a "
        "variant of the card (its hash, recorded in the result, is then not the published card's)",
    ),
    extend: Path | None = typer.Option(
        None, "--extend", help="result JSON of the same run with a smaller --n: continue from its saved state"
    ),
    executor: str = EXECUTOR_OPTION,
    workers: int = WORKERS_OPTION,
    scheduler: str | None = SCHEDULER_OPTION,
    scheduler_file: Path | None = SCHEDULER_FILE_OPTION,
    blas_threads: int = BLAS_THREADS_OPTION,
) -> None:
    """Streaming m, c, alpha with bootstrap errors: render, deconvolve, metacal, sum (resumable)."""
    from ..bias import run_bias
    from ..cards import load_card
    from ..harness import metacal_suffix
    from ..methods import load_method
    from ..tables import bias_table

    spec = executor_spec(executor, workers, scheduler, scheduler_file, blas_threads)
    config = metacal_config(estimator, fixnoise, device, centring)
    method_options = parse_options(option, [method]).get(method, {})
    card_obj = load_card(card, settings)
    card_obj.split(split)
    out = out or Path("out") / f"bias_{method}{metacal_suffix(config)}_{card_obj.name}_{split}_n{n}.json"
    deconvolver = load_method(method, **method_options)
    with progress_task(f"bias {method} {card_obj.name}/{split}", n) as advance:
        result = run_bias(
            deconvolver,
            card_obj,
            split,
            n,
            out,
            config,
            chunk_groups=chunk_groups,
            n_boot=n_boot,
            progress=advance,
            command=command_line(),
            executor=spec,
            method_options=method_options,
            extend=extend,
        )
    print(bias_table(result))
    print(
        f"wall {result['throughput']['stream_seconds']:.1f} s, peak memory {result['peak_memory_mb']:.0f} MB, "
        f"stamps digest {result['dataset']['checksum'][:16]}…; result {out}"
    )
