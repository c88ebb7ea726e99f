"""The blocking JSON-over-HTTP client of a Sprawl cluster (:mod:`http.client`, no reactor):
fail-over over a list of node URLs, TLS with a CA bundle, a bearer token, and requests
answered 429 sent again after ``Retry-After``.  ``sprawlctl`` and the local-cluster launcher
use it; so does the test harness."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

from sprawl import __version__
from sprawl.client.errors import ClientError, error_text, failure_reason, retry_after_seconds
from sprawl.client.wire import LEAN_MARK, MSGPACK, refused_lean

DEFAULT_URL = "http://localhost:8080"
#: How often a request answered 429 is sent again (after Retry-After) before giving up.
MAX_429_RETRIES = 5
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


def normalize_url(item: str) -> str:
    """``http://`` added where no scheme is given, the trailing slash dropped; raises
    :class:`ValueError` for anything but an http(s) URL with a host."""
    item = item.strip().rstrip("/")
    if "://" not in item:
        item = "http://" + item
    parts = urlsplit(item)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {item}")
    return item


def split_urls(values: Iterable[str]) -> list[str]:
    """Comma-separated URL lists as one list (normalized, duplicates dropped, in order);
    ``[DEFAULT_URL]`` when empty."""
    urls: list[str] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            url = normalize_url(item)
            if url not in urls:
                urls.append(url)
    return urls or [DEFAULT_URL]


def topic_path(topic: str, *rest: str) -> str:
    """``/v1/topics/{topic}/...`` with every segment quoted."""
    return "/".join(["/v1/topics", quote(topic, safe="")] + [quote(r, safe="") for r in rest])


@dataclass
class Reply:
    """One HTTP answer."""

    url: str
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    def json(self) -> Any:
        """The body decoded as JSON (None when empty)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"{self.url}: answer is not JSON: {self.body[:80]!r}") from None

    def check(self, *ok: int) -> Reply:
        """Raise :class:`ClientError` with the server's error unless the status is 2xx (or ``ok``)."""
        if (self.status in ok) if ok else (200 <= self.status < 300):
            return self
        raise ClientError(error_text(self.status, self.body))


class Client:
    """Synchronous JSON-over-HTTP client with fail-over across a list of node URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 10.0,
        token: str | None = None,
        cacert: str | None = None,
        user_agent: str = f"sprawl-client/{__version__}",
    ) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        #: Bearer token sent with every request (``--token`` / ``SPRAWL_TOKEN``).
        self.token = token
        #: CA bundle (PEM) that https:// nodes' certificates must chain to (``--cacert``).
        self.cacert = cacert
        self.user_agent = user_agent
        #: Node URLs that refused a lean (msgpack) publish body: sent JSON from then on.
        self.json_only: set[str] = set()

    def __repr__(self) -> str:
        return f"Client({self.urls!r}, token={'set' if self.token else 'none'})"

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _connection(self, url: str, timeout: float | None) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        assert parts.hostname is not None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.cacert)
            return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    @staticmethod
    def _target(url: str, path: str, query: dict[str, Any] | None) -> str:
        base = urlsplit(url).path.rstrip("/")
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            if clean:
                path += "?" + urlencode(clean)
        return base + path

    def _down(self, errors: list[str]) -> NoReturn:
        what = "the node" if len(self.urls) == 1 else "any node"
        raise ClientError(f"cannot reach {what}: " + "; ".join(errors))

    def _prefer(self, url: str) -> None:
        """Try ``url`` first from now on (it answered)."""
        if self.urls[0] != url:
            self.urls.remove(url)
            self.urls.insert(0, url)

    def request(self, method: str, path: str, json_body: Any = None, **kwargs: Any) -> Reply:
        """:meth:`request_once`, sent again after the ``Retry-After`` delay while the node
        answers 429 (a refused request wrote nothing), at most ``MAX_429_RETRIES`` times."""
        for attempt in range(MAX_429_RETRIES + 1):
            reply = self.request_once(method, path, json_body, **kwargs)
            if reply.status != 429 or attempt == MAX_429_RETRIES:
                return reply
            time.sleep(retry_after_seconds(reply.headers.get("Retry-After")))
        raise AssertionError("unreachable")

    def request_once(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        body: bytes | None = None,
        content_type: str = "application/octet-stream",
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        lean: bytes | None = None,
    ) -> Reply:
        """Send one request to the first node that answers and return its reply.

        A node that cannot be connected to is skipped. A node that times out, drops the
        connection after the request was sent or answers 503 (unavailable) is skipped only for
        idempotent requests (by default GET, HEAD, PUT and DELETE; ``idempotent`` says so for
        others, e.g. a publish whose messages all carry ids), so a publish is never silently
        sent twice.

        ``lean``: a msgpack body sent instead of the JSON one to a node not in
        :attr:`json_only`; a node that refuses it (:func:`sprawl.client.wire.refused_lean`,
        nothing stored) gets the JSON body right after, and JSON from then on.
        """
        safe = method in _IDEMPOTENT if idempotent is None else idempotent
        hdrs = {"Accept": "application/json", "User-Agent": self.user_agent, **self._auth_headers()}
        if json_body is not None:
            content_type = "application/json"
        if body is not None or json_body is not None:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        timeout = self.timeout if timeout is None else timeout
        errors: list[str] = []
        unavailable: Reply | None = None
        for url in list(self.urls):
            got: Reply | str | None = None
            if lean is not None and url not in self.json_only:
                target = self._target(url, path, {**(query or {}), **LEAN_MARK})
                lean_hdrs = {**hdrs, "Content-Type": MSGPACK}
                got = self._exchange(url, method, target, lean, lean_hdrs, timeout, safe)
                if isinstance(got, Reply) and refused_lean(got.status, got.body):
                    self.json_only.add(url)
                    got = None
            if got is None:
                if json_body is not None and body is None:
                    body = json.dumps(json_body).encode()  # (not before a lean body is refused)
                got = self._exchange(url, method, self._target(url, path, query), body, hdrs, timeout, safe)
            if isinstance(got, str):
                errors.append(got)
                continue
            if got.status == 503 and safe:
                unavailable = unavailable or got
                continue
            self._prefer(url)
            return got
        if unavailable is not None:
            return unavailable
        self._down(errors)

    def _exchange(
        self,
        url: str,
        method: str,
        target: str,
        body: bytes | None,
        hdrs: dict[str, str],
        timeout: float,
        safe: bool,
    ) -> Reply | str:
        """One request to ``url``: its reply, or why the node is skipped (it could not be
        reached, or -- for a ``safe`` request -- the answer was lost)."""
        conn = self._connection(url, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                return f"{url}: {failure_reason(exc)}"
            start = time.monotonic()
            try:
                conn.request(method, target, body, hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if safe:
                    return f"{url}: {failure_reason(exc)}"
                raise ClientError(
                    f"{url}: {failure_reason(exc)} (the request may or may not have been applied)"
                ) from None
            return Reply(url, resp.status, resp.headers, data, time.monotonic() - start)
        finally:
            conn.close()

    def call(self, method: str, path: str, json_body: Any = None, **kwargs: Any) -> Any:
        """:meth:`request`, fail on an error status, and return the decoded JSON answer."""
        return self.request(method, path, json_body, **kwargs).check().json()

    def stream(
        self,
        path: str,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Open a long-lived GET (an SSE stream) on the first node that answers.

        The connect and the response head are bounded by the timeout; each later read of the
        body by ``read_timeout`` (None = unbounded).
        """
        hdrs = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self._auth_headers()}
        hdrs.update(headers or {})
        errors: list[str] = []
        for url in list(self.urls):
            conn = self._connection(url, self.timeout)
            try:
                conn.request("GET", self._target(url, path, query), headers=hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                errors.append(f"{url}: {failure_reason(exc)}")
                continue
            if resp.status != 200:
                data = resp.read()
                conn.close()
                raise ClientError(error_text(resp.status, data))
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout)
            self._prefer(url)
            return conn, resp
        self._down(errors)
