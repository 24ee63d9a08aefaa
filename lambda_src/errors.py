"""The one exception type that turns into a client-facing JSON error."""

from __future__ import annotations


class ApiError(Exception):
    """An error the client caused or can act on; becomes ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
