"""A lean HTTP/1.1 request parser for the hot routes (issue 16, lean1).

twisted.web's :class:`~twisted.web.http.HTTPChannel` parses a request a line at a time
(``LineReceiver`` splits the read, then one ``lineReceived`` and one ``headerReceived``
per header, a transfer decoder per body): about 100 Python calls per request before the
request is whole, more than a third of twisted.web's share of a one-message publish.
:func:`parse_hot` reads a whole publish, fetch or stream request from one read in a few
``bytes`` operations instead, and :class:`sprawl.http.server.GuardedChannel` hands what it
found to the same ``Request`` methods twisted.web's parser calls, so from there on the
request is twisted.web's as before (routing, authorization, errors, metrics, TLS).

It is deliberately narrow: anything it is not sure of is left to twisted.web's parser,
which then reads the same bytes as if this module did not exist -- so every error answer
(400, 413, 431...) and every unusual but valid form (``Transfer-Encoding``, ``Expect:
100-continue``, folded headers, HTTP/1.0, a request split over several reads, another
method or path) is twisted.web's own.  It takes a request only when:

* it starts ``GET /v1/topics/`` or ``POST /v1/topics/``, the request line is exactly
  ``METHOD SP TARGET SP HTTP/1.1`` with a target of printable ASCII (as twisted.web
  checks it);
* its line and headers end within :data:`MAX_HEAD` bytes (well under twisted.web's
  16 KiB for the line and headers), every line ends ``CRLF``, no ``CR``, ``LF`` or ``NUL``
  stands elsewhere in them;
* at most :data:`MAX_HEADERS` headers, each ``token ":" value`` with no leading
  whitespace (no obsolete line folding), at most one ``Content-Length`` (digits only),
  no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``; a ``Content-Length`` of at
  most :data:`MAX_LENGTH_DIGITS` digits;
* its whole body (``Content-Length`` bytes, none without it) is in the same read.

Pure: no I/O, no Twisted; fuzzed against twisted.web's parser (tests/unit/http/test_lean_http.py).
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Bytes of request line and headers at most (twisted.web allows 16 KiB; a longer head
#: goes to it, which bounds it as it always did).
MAX_HEAD = 8192
#: Headers at most (twisted.web allows 500).
MAX_HEADERS = 100
#: Digits of a ``Content-Length`` at most: a longer one (no body that size fits a read,
#: and past 4,300 digits ``int()`` refuses it) goes to twisted.web, which answers 400.
MAX_LENGTH_DIGITS = 18

_STARTS = (b"POST /v1/topics/", b"GET /v1/topics/")
# twisted.web's request-target check: every byte in 33..176.
_TARGET = re.compile(rb"/v1/topics/[\x21-\xb0]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REFUSED = frozenset((b"transfer-encoding", b"expect", b"upgrade"))


class HotRequest(NamedTuple):
    """A request :func:`parse_hot` read whole."""

    method: bytes
    target: bytes
    #: (name, value) as sent, the value stripped of spaces and tabs (as twisted.web does).
    headers: list[tuple[bytes, bytes]]
    #: ``Content-Length`` (0 without it).
    length: int
    #: Where the body starts in the read; it ends at :attr:`end`.
    body_start: int
    #: Bytes of the read the request takes (what follows is the next request's).
    end: int


def parse_hot(data: bytes) -> HotRequest | None:
    """The request at the start of ``data`` if it is one this module takes (see the
    module docstring), else None: twisted.web's parser is to read ``data``."""
    if not data.startswith(_STARTS):
        return None
    head_end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if head_end < 0:
        return None
    head = data[:head_end]
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head or crlf > MAX_HEADERS:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or _TARGET.fullmatch(parts[1]) is None:
        return None
    method, target = parts[0], parts[1]
    if method != b"GET" and method != b"POST":
        return None
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None
        value = value.strip(b" \t")
        low = name.lower()
        if low == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif low in _REFUSED:
            return None
        headers.append((name, value))
    length = max(0, length)
    body_start = head_end + 4
    end = body_start + length
    if len(data) < end:
        return None
    return HotRequest(method, target, headers, length, body_start, end)
