"""User-facing errors: anything raised as :class:`DeconvbenchError` is printed by the
CLI as one line on stderr with a non-zero exit status (no traceback)."""


class DeconvbenchError(Exception):
    """A problem the user can fix (bad card, bad path, corrupt file, unknown method)."""


class CardError(DeconvbenchError):
    """A dataset card is missing or invalid."""


class DataError(DeconvbenchError):
    """A dataset file is missing, unreadable or corrupt."""


class MethodError(DeconvbenchError):
    """A method is unknown, unavailable, or failed."""
