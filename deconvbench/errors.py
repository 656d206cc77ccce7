"""User-facing errors: anything raised as :class:`DeconvbenchError` is printed by the
CLI as one line on stderr with exit status 2 (no traceback).

Each error also subclasses the built-in exception it stands for (as GalSim's
``GalSimValueError`` is a ``ValueError``), so library callers may catch either.
"""


class DeconvbenchError(Exception):
    """A problem the user can fix (bad card, bad path, corrupt file, unknown method)."""


class CardError(DeconvbenchError, ValueError):
    """A dataset card is missing or invalid."""


class DataError(DeconvbenchError, ValueError):
    """A dataset file is missing, unreadable or corrupt."""


class MethodError(DeconvbenchError, LookupError):
    """A method is unknown, unavailable, or failed."""


class OutputError(DeconvbenchError, OSError):
    """An output location cannot be written (read-only folder, a directory given as file)."""


class UsageError(DeconvbenchError, ValueError):
    """Command options that do not fit together or are out of range."""
