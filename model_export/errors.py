"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ExportError(Exception):
    """A user-facing failure: bad input, unreachable service or a failed verification.

    The message is a complete sentence meant for the terminal; no traceback is needed to act on it.
    """
