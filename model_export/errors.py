"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ExportError(Exception):
    """A user-facing failure: bad input, unreachable service or a failed verification.

    The message is a complete sentence meant for the terminal; no traceback is needed to act on it.
    """


class WeightsUnavailable(ExportError):
    """Pretrained weights could not be fetched (offline, proxy, hash mismatch)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
