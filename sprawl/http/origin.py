"""Which web pages may change state on this node: the ``Origin`` check.

A browser attaches ``Origin`` to every cross-origin request, and to same-origin
requests that are not GET/HEAD.  A page on another site can make a browser send
a "simple" POST (``text/plain``, no preflight) or open a WebSocket (never
preflighted) to any address the browser reaches -- a node on ``localhost`` or
the user's network included.  So state-changing requests (POST, PUT, PATCH,
DELETE) and WebSocket upgrades are refused (403 ``origin_not_allowed``) when
they carry an ``Origin`` that is neither this node itself (same scheme, host
and port as the request's ``Host``: the dashboard it serves) nor listed in
``--allowed-origins``.  Requests without ``Origin`` -- curl, ``sprawlctl``,
every non-browser client -- are not affected.

A listed origin also gets CORS: its preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered, and every answer to it carries
``Access-Control-Allow-Origin``, so its pages can call the API with ``fetch``.

The grammar of an origin and of ``--allowed-origins`` is the configuration's
(:func:`sprawl.config.parse_allowed_origins`, re-exported here).

Pure: no Twisted import.
"""

from __future__ import annotations

from sprawl.config import origin_key as _key
from sprawl.config import parse_allowed_origins

__all__ = ["ALLOWED_METHODS", "PREFLIGHT_MAX_AGE", "UNSAFE_METHODS", "OriginPolicy", "parse_allowed_origins"]

#: Methods that change state (the rest only read).
UNSAFE_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
#: How long a browser may cache a preflight answer (seconds).
PREFLIGHT_MAX_AGE = b"600"
ALLOWED_METHODS = b"GET, POST, PUT, DELETE"


class OriginPolicy:
    """The node's ``Origin`` rules (see the module docstring)."""

    def __init__(self, allowed: tuple[str, ...] | list[str] = ()) -> None:
        self.any = "*" in allowed
        self.null = "null" in allowed
        self._listed = {k for k in (_key(o) for o in allowed if o not in ("*", "null")) if k is not None}

    def listed(self, origin: bytes) -> bool:
        """Whether ``origin`` is in ``--allowed-origins`` (CORS is answered for it)."""
        if self.any:
            return True
        try:
            text = origin.decode("ascii")
        except UnicodeDecodeError:
            return False
        if text.strip() == "null":
            return self.null
        k = _key(text)
        return k is not None and k in self._listed

    def allows(self, origin: bytes | None, secure: bool, host: bytes | None) -> bool:
        """Whether a state-changing request with this ``Origin`` may proceed:
        no ``Origin``, the node's own origin (``Host`` of the request), or a
        listed one."""
        if origin is None:
            return True
        if self.listed(origin):
            return True
        if host is None:
            return False
        try:
            mine = _key(("https://" if secure else "http://") + host.decode("ascii"))
            theirs = _key(origin.decode("ascii"))
        except UnicodeDecodeError:
            return False
        return theirs is not None and theirs == mine
