"""What every Sprawl client reads the same way: the error text of an answer, a network
failure in a few words, and the one ``Retry-After`` rule."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

#: The longest ``Retry-After`` any Sprawl client honours, in seconds.
MAX_RETRY_AFTER = 10.0
#: The wait when a 429 has no ``Retry-After`` (or an HTTP date): the server always sends one.
DEFAULT_RETRY_AFTER = 1.0


class ClientError(Exception):
    """A request failed; the message is one line fit for an operator."""


def error_text(status: int, body: bytes) -> str:
    """``code: message`` from a Sprawl error body (``{"error": {"code", "message"}}``), or the
    status, its reason and the start of the body."""
    try:
        err = json.loads(body)["error"]
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError, IndexError):
        lines = body.decode("utf-8", "replace").strip().splitlines()
        reason = http.client.responses.get(status, "")
        return f"HTTP {status} {reason}".rstrip() + (f": {lines[0][:200]}" if lines else "")


def event_error_text(data: str) -> str:
    """``code: message`` of an SSE ``error`` event's data (the error object, bare or wrapped)."""
    try:
        err: Any = json.loads(data)
        err = err.get("error", err)
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return data.strip() or "stream error"


def retry_after_seconds(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header: the number it gives, 1 s when absent or
    an HTTP date, never less than 0 nor more than :data:`MAX_RETRY_AFTER`."""
    try:
        seconds = float(value) if value else DEFAULT_RETRY_AFTER
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def failure_reason(exc: BaseException) -> str:
    """A short human description of a network failure."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
