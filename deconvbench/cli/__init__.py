"""The ``deconvbench`` command line: parses arguments, calls the library, prints.

One module per command (``generate``, ``verify``, ``run``, ``bias``, ``submit``, ``leaderboard``, ``report``,
``train``, ``demo``, ``listing``); shared helpers in ``_common``. Every user error
(bad card, missing file, unknown method, corrupt data, unwritable output) is printed as
one line on stderr with exit status 2; an interruption (Ctrl-C, SIGTERM) prints one line
and exits 130; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import signal
import sys

import typer
from rich.markup import escape

from .. import __version__
from ..errors import DeconvbenchError
from ..execution.base import WorkerLostError
from ._common import err_console

EXIT_WORKER_LOST = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark and dataset suite for PSF deconvolution of galaxy images (weak lensing).",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"deconvbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Benchmark and dataset suite for PSF deconvolution of galaxy images (weak lensing)."""


from . import bias, demo, generate, leaderboard, listing, report, run, submit, train, validate_render, verify  # noqa: E402,F401  (registers)
from .sensitivity import sensitivity as _sensitivity  # noqa: E402,F401  (registers)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


#: how an interrupted command continues, by command name
_CONTINUES = {
    "run": "`run --resume` continues it",
    "train": "`train --resume` continues it",
    "bias": "the same `bias` command continues it from its checkpoint",
}


def _interrupted(command: str | None = None) -> None:
    how = _CONTINUES.get(command or "", "`run --resume`, `train --resume` and `bias` (run again) continue their runs")
    err_console.print(
        f"interrupted: stopped before completion (nothing written under the final name; {how})",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(EXIT_INTERRUPTED)


def _command_name(argv: list[str]) -> str | None:
    """The subcommand of a command line (its first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; never returns (exits with the command's status)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    command = _command_name(sys.argv[1:] if argv is None else argv)
    try:
        status = app(args=argv, standalone_mode=False)  # typer turns Ctrl-C into the return value 130
    except WorkerLostError as exc:  # not the user's fault: a worker kept dying (memory, node loss)
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_WORKER_LOST)
    except DeconvbenchError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted(command)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors of the CLI framework
            err_console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise  # anything else is a bug: traceback
    if status == EXIT_INTERRUPTED:
        _interrupted(command)
    sys.exit(status if isinstance(status, int) else 0)
