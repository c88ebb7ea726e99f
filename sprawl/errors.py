"""Errors that cross module boundaries, each with a stable snake_case code.

Every error a client can see carries an HTTP status, a ``code`` and a human
message; the HTTP layer renders them as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations


class SprawlError(Exception):
    """Base class: an error with a stable ``code`` and an HTTP ``status``."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        """The error body every API error uses."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(SprawlError):
    """The request is malformed or violates a documented limit."""

    status = 400
    code = "bad_request"


class NotFound(SprawlError):
    """A named topic, group or route does not exist."""

    status = 404
    code = "not_found"


class Conflict(SprawlError):
    """The request conflicts with existing state (e.g. fewer partitions)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(SprawlError):
    """A body, batch or message exceeds its limit."""

    status = 413
    code = "payload_too_large"


class Overloaded(SprawlError):
    """A bounded queue is full; retry after ``retry_after`` seconds."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, *, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(SprawlError):
    """The node cannot serve the request right now (stopping, no leader)."""

    status = 503
    code = "unavailable"


class InsufficientStorage(SprawlError):
    """The node's storage budget is exhausted; nothing was written."""

    status = 507
    code = "insufficient_storage"


class ConfigError(ValueError):
    """An option or configuration file value is invalid."""


class CorruptData(SprawlError):
    """Stored records of a range do not read back as written (a checksum
    mismatch, a damaged key, a gap, an unreadable page): the read that met
    them fails rather than skipping them.  The error body names the range."""

    status = 500
    code = "corrupt_record"

    def __init__(self, message: str, *, topic: str, partition: int, first: int, last: int, tier: str):
        super().__init__(message)
        self.details = {
            "topic": topic,
            "partition": partition,
            "first_offset": first,
            "last_offset": last,
            "tier": tier,
        }

    def to_json(self) -> dict[str, dict[str, str]]:
        """The error body, with the damaged range's topic, partition, offsets and tier."""
        body = super().to_json()
        body["error"].update(self.details)  # type: ignore[arg-type]
        return body
