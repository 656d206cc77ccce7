"""``deconvbench list-datasets`` and ``deconvbench list-methods``."""

from __future__ import annotations

import typer

from . import app


@app.command("list-datasets")
def list_datasets() -> None:
    """List the dataset cards with their splits."""
    from ..cards import list_cards, load_card
    from ..tables import datasets_table

    print(datasets_table([load_card(name) for name in list_cards()]))


@app.command("list-methods")
def list_methods(
    options: bool = typer.Option(False, "--options", help="also show each method's constructor options and defaults"),
) -> None:
    """List registered deconvolvers (entry points) with their availability."""
    from ..methods import list_methods as registered
    from ..methods import method_options
    from ..tables import methods_table

    infos = registered()
    print(methods_table(infos, {info.name: method_options(info.name) for info in infos} if options else None))
