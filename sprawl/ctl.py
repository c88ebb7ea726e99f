"""``sprawlctl``: the command-line client of a Sprawl cluster.

Every command except ``bench`` speaks plain synchronous HTTP (:mod:`http.client`) to the first
node of ``-n URL[,URL...]`` that answers; a node that refuses the connection or times out is
skipped. Failures end with a non-zero exit status and one line on stderr::

    sprawlctl: error: not_found: topic 'x' does not exist

``bench`` drives :mod:`sprawl.bench`, which has its own minimal asyncio HTTP client.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import click

from sprawl import __version__

DEFAULT_URL = "http://localhost:8080"
#: Messages per publish request when reading stdin or repeating with ``-c``.
PUBLISH_BATCH = 500
#: How many times in a row ``subscribe`` reconnects a dropped stream before giving up.
STREAM_RETRIES = 5

_ACKS = click.Choice(["quorum", "leader", "none"])
_STORAGE = click.Choice(["durable", "ephemeral"])
_START = click.Choice(["earliest", "latest"])
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: Raised by click >= 8.2 for a bare group invocation; it shows the help, not an error line.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", click.UsageError)


class CtlError(click.ClickException):
    """A failure reported as one ``sprawlctl: error: ...`` line and exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        """Write the one-line error to stderr."""
        _error_line(self.format_message())


def _error_line(message: str) -> None:
    text = " ".join(message.split()) or "failed"
    click.echo(f"sprawlctl: error: {text}", err=True)


# --------------------------------------------------------------------------------------------
# HTTP client


def parse_urls(values: Iterable[str]) -> list[str]:
    """Split ``-n`` values on commas, add ``http://`` where no scheme is given, drop dupes."""
    urls: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip().rstrip("/")
            if not item:
                continue
            if "://" not in item:
                item = "http://" + item
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise click.BadParameter(f"not an http(s) URL: {item}", param_hint="'-n'")
            if item not in urls:
                urls.append(item)
    return urls or [DEFAULT_URL]


def _reason(exc: BaseException) -> str:
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


def error_text(status: int, body: bytes) -> str:
    """``code: message`` from a Sprawl error body, or the status and start of the body."""
    try:
        err = json.loads(body)["error"]
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        lines = body.decode("utf-8", "replace").strip().splitlines()
        reason = http.client.responses.get(status, "")
        return f"HTTP {status} {reason}".rstrip() + (f": {lines[0][:200]}" if lines else "")


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
            raise CtlError(f"{self.url}: answer is not JSON: {self.body[:80]!r}") from None

    def check(self, *ok: int) -> Reply:
        """Raise :class:`CtlError` with the server's error unless the status is 2xx (or ``ok``)."""
        if (self.status in ok) if ok else (200 <= self.status < 300):
            return self
        raise CtlError(error_text(self.status, self.body))


#: How often a request answered 429 is sent again (after Retry-After) before giving up.
MAX_429_RETRIES = 5
#: The longest Retry-After sprawlctl honours, in seconds.
MAX_RETRY_AFTER = 10.0


def retry_after_seconds(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header: 1 s when absent or a date, at most 10 s."""
    try:
        seconds = float(value) if value else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Client:
    """Synchronous JSON-over-HTTP client with fail-over across a list of node URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 10.0,
        token: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        #: Bearer token sent with every request (``--token`` / ``SPRAWL_TOKEN``).
        self.token = token
        #: CA bundle (PEM) that https:// nodes' certificates must chain to (``--cacert``).
        self.cacert = cacert

    def __repr__(self) -> str:
        return f"Client({self.urls!r}, token={'set' if self.token else 'none'})"

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _connection(self, url: str, timeout: float | None) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        assert parts.hostname is not None
        if parts.scheme == "https":
            import ssl

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
        raise CtlError(f"cannot reach {what}: " + "; ".join(errors))

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
    ) -> Reply:
        """Send one request to the first node that answers and return its reply.

        A node that cannot be connected to is skipped. A node that times out, drops the
        connection after the request was sent or answers 503 (unavailable) is skipped only for
        idempotent methods, so a publish is never silently sent twice.
        """
        hdrs = {
            "Accept": "application/json",
            "User-Agent": f"sprawlctl/{__version__}",
            **self._auth_headers(),
        }
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if body is not None:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        timeout = self.timeout if timeout is None else timeout
        errors: list[str] = []
        unavailable: Reply | None = None
        for url in list(self.urls):
            conn = self._connection(url, timeout)
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    errors.append(f"{url}: {_reason(exc)}")
                    continue
                start = time.monotonic()
                try:
                    conn.request(method, self._target(url, path, query), body, hdrs)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    if method in _IDEMPOTENT:
                        errors.append(f"{url}: {_reason(exc)}")
                        continue
                    raise CtlError(
                        f"{url}: {_reason(exc)} (the request may or may not have been applied)"
                    ) from None
                reply = Reply(url, resp.status, resp.headers, data, time.monotonic() - start)
                if reply.status == 503 and method in _IDEMPOTENT:
                    unavailable = unavailable or reply
                    continue
                self._prefer(url)
                return reply
            finally:
                conn.close()
        if unavailable is not None:
            return unavailable
        self._down(errors)

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
                errors.append(f"{url}: {_reason(exc)}")
                continue
            if resp.status != 200:
                data = resp.read()
                conn.close()
                raise CtlError(error_text(resp.status, data))
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout)
            self._prefer(url)
            return conn, resp
        self._down(errors)


def _topic_path(topic: str, *rest: str) -> str:
    return "/".join(["/v1/topics", quote(topic, safe="")] + [quote(r, safe="") for r in rest])


# --------------------------------------------------------------------------------------------
# output helpers


def _write_line(data: bytes) -> None:
    """Write one line of bytes to stdout and flush it (pipes see messages as they arrive)."""
    click.echo(data)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows as left-aligned columns under upper-case headers."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def _human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return _cell(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # unreachable


def message_bytes(msg: dict[str, Any]) -> bytes:
    """A message's payload as bytes (``payload`` as UTF-8, or ``payload_b64`` decoded)."""
    if "payload_b64" in msg and msg.get("payload") is None:
        try:
            return base64.b64decode(msg["payload_b64"])
        except (ValueError, TypeError):
            return str(msg["payload_b64"]).encode()
    payload = msg.get("payload")
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return json.dumps(payload).encode()


def _emit_message(msg: dict[str, Any], as_json: bool) -> None:
    _write_line(json.dumps(msg).encode() if as_json else message_bytes(msg))


def _payload_field(data: bytes | str) -> dict[str, str]:
    """``{"payload": text}`` for UTF-8 input, else ``{"payload_b64": ...}``."""
    if isinstance(data, str):
        return {"payload": data}
    try:
        return {"payload": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode("ascii")}


# --------------------------------------------------------------------------------------------
# the command group


class _Cli(click.Group):
    """The root group: reports every failure as one line on stderr."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; exit with 0, 1 (failure), 2 (usage) or 130 (interrupted)."""
        code: int
        try:
            rv = super().main(args, prog_name or "sprawlctl", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _NO_ARGS_IS_HELP as exc:
            exc.show()
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error_line(exc.format_message() + hint)
            code = exc.exit_code
        except click.ClickException as exc:
            if isinstance(exc, CtlError):
                exc.show()
            else:
                _error_line(exc.format_message())
            code = exc.exit_code
        except click.Abort:
            _error_line("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-n",
    "--nodes",
    "nodes",
    multiple=True,
    envvar="SPRAWL_URL",
    metavar="URL[,URL...]",
    help=f"Node URLs to use, in order of preference (env SPRAWL_URL; default {DEFAULT_URL}). "
    "A node that is down is skipped.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    envvar="SPRAWL_TIMEOUT",
    help="Seconds to wait for a node to connect and answer.",
)
@click.option(
    "--token",
    envvar="SPRAWL_TOKEN",
    metavar="TOKEN",
    help="Bearer token for nodes with authentication on (env SPRAWL_TOKEN; prefer the variable: "
    "arguments are visible to other users).",
)
@click.option(
    "--cacert",
    envvar="SPRAWL_CACERT",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle that https:// nodes' certificates must chain to (env SPRAWL_CACERT).",
)
@click.version_option(__version__, prog_name="sprawlctl")
@click.pass_context
def cli(
    ctx: click.Context, nodes: tuple[str, ...], timeout: float, token: str | None, cacert: str | None
) -> None:
    """Operate a Sprawl pub/sub cluster over its HTTP API."""
    ctx.obj = Client(parse_urls(nodes), timeout, token=token, cacert=cacert)


def _client(ctx: click.Context) -> Client:
    client = ctx.find_object(Client)
    assert client is not None
    return client


# --------------------------------------------------------------------------------------------
# publish


def _stdin_bytes() -> IO[bytes]:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def _read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _print_publish(answer: Any, as_json: bool) -> None:
    if as_json:
        _print_json(answer)
        return
    if not isinstance(answer, dict):
        raise CtlError(f"unexpected publish answer: {answer!r}"[:200])
    offsets = answer.get("offsets") or []
    ids = answer.get("ids") or [None] * len(offsets)
    parts = answer.get("partitions") or [None] * len(offsets)
    for offset, partition, msg_id in zip(offsets, parts, ids, strict=False):
        click.echo(f"offset={offset} partition={_cell(partition)} id={_cell(msg_id)}")


@cli.command()
@click.option("-t", "--topic", required=True, help="Topic to publish to.")
@click.option(
    "-m",
    "-p",
    "--message",
    "--payload",
    "message",
    metavar="MSG",
    help="Message text; '-' reads stdin, one message per line.",
)
@click.option(
    "-f",
    "--file",
    "path",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Send the file's bytes as one message; '-' reads stdin, one message per line.",
)
@click.option(
    "-c",
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Publish the message this many times (batched).",
)
@click.option("-k", "--key", help="Partitioning key.")
@click.option("--id", "msg_id", help="Message id for idempotent publish.")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME=VALUE", help="Message header.")
@click.option("--acks", type=_ACKS, help="Wait for quorum (default), leader or no acknowledgement.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def publish(
    ctx: click.Context,
    topic: str,
    message: str | None,
    path: str | None,
    count: int,
    key: str | None,
    msg_id: str | None,
    headers: tuple[str, ...],
    acks: str | None,
    as_json: bool,
) -> None:
    """Publish messages to a topic; prints offset, partition and id of each."""
    client = _client(ctx)
    if (message is None) == (path is None):
        raise click.UsageError("give exactly one of -m/--message and -f/--file")
    header_map: dict[str, str] = {}
    for spec in headers:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {spec!r}", param_hint="'--header'")
        header_map[name] = value
    extra: dict[str, Any] = {}
    if key is not None:
        extra["key"] = key
    if header_map:
        extra["headers"] = header_map
    if msg_id is not None:
        extra["id"] = msg_id
    url_path = _topic_path(topic, "messages")

    def send(messages: list[dict[str, Any]]) -> None:
        body: dict[str, Any] = {"messages": messages}
        if acks is not None:
            body["acks"] = acks
        _print_publish(client.call("POST", url_path, body), as_json)

    if message == "-" or path == "-":
        if count != 1 or msg_id is not None:
            raise click.UsageError("-c and --id cannot be used when reading messages from stdin")
        lines = _read_lines(_stdin_bytes())
        for batch in _batches(({**_payload_field(ln), **extra} for ln in lines), PUBLISH_BATCH):
            send(batch)
        return
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CtlError(f"cannot read {path}: {exc.strerror or exc}") from None
        if count == 1 and not extra and acks is None:
            # One raw message: the body is the payload, byte for byte.
            reply = client.request("POST", url_path, body=data).check()
            _print_publish(reply.json(), as_json)
            return
        item: dict[str, Any] = {**_payload_field(data), **extra}
    else:
        assert message is not None
        item = {"payload": message, **extra}
    remaining = count
    while remaining:
        n = min(remaining, PUBLISH_BATCH)
        send([item] * n)
        remaining -= n


# --------------------------------------------------------------------------------------------
# subscribe


@dataclass
class SseEvent:
    """One server-sent event."""

    event: str
    id: str | None
    data: str


def sse_events(lines: Iterable[bytes]) -> Iterator[SseEvent]:
    """Parse an SSE byte stream given as lines (comments and retry fields are skipped)."""
    data: list[str] = []
    event = ""
    event_id: str | None = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event or "message", event_id, "\n".join(data))
            data, event, event_id = [], "", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value


def _noting_wait(lines: Iterable[bytes], topic: str, say: bool) -> Iterator[bytes]:
    """``lines``, saying on stderr (when ``say``) that the node waits for the topic to be created."""
    for line in lines:
        if say and line.startswith(b": waiting for topic "):
            click.echo(f"waiting for topic {topic!r} to be created ...", err=True)
            say = False
        yield line


class _Idle(Exception):
    """No message arrived within ``--idle-timeout``."""


def _response_lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """Lines of a streamed body until it ends or breaks; a read timeout raises :class:`_Idle`."""
    while True:
        try:
            line = resp.readline()
        except TimeoutError:
            raise _Idle from None
        except (OSError, http.client.HTTPException):
            return
        if not line:
            return
        yield line


def _stream_subscribe(
    client: Client,
    topic: str,
    start: str,
    partition: int | None,
    count: int | None,
    as_json: bool,
    idle_timeout: float | None,
) -> int:
    """Print messages from the SSE stream; reconnect (with Last-Event-ID) when it drops."""
    received = 0
    last_id: str | None = None
    failures = 0
    last_message = time.monotonic()
    path = _topic_path(topic, "stream")
    query = {"from": start, "partition": partition}
    waiting_since: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else None
        try:
            conn, resp = client.stream(path, query, headers, read_timeout=idle_timeout)
        except CtlError as e:
            if received == 0 and "topic_not_found" in e.format_message():
                # Subscribers may start first: wait for the topic to appear
                # (the first publish creates it), within --idle-timeout if set.
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    click.echo(f"waiting for topic {topic!r} to be created ...", err=True)
                if idle_timeout and now - waiting_since > idle_timeout:
                    raise
                time.sleep(0.5)
                continue
            if received == 0 or failures >= STREAM_RETRIES:
                raise
            failures += 1
            time.sleep(min(0.25 * 2**failures, 5.0))
            continue
        try:
            for event in sse_events(_noting_wait(_response_lines(resp), topic, received == 0)):
                if event.event == "error":
                    raise CtlError(_sse_error(event.data))
                if event.event != "message":
                    continue
                try:
                    msg = json.loads(event.data)
                except ValueError:
                    raise CtlError(f"malformed event data: {event.data[:80]!r}") from None
                _emit_message(msg, as_json)
                received += 1
                failures = 0
                last_message = time.monotonic()
                last_id = event.id or last_id
                if count is not None and received >= count:
                    return received
            if idle_timeout and time.monotonic() - last_message > idle_timeout:
                raise _Idle
        except _Idle:
            return received
        finally:
            conn.close()
        failures += 1
        if failures > STREAM_RETRIES:
            raise CtlError(f"stream of {topic!r} keeps ending; gave up after {STREAM_RETRIES} retries")
        time.sleep(min(0.25 * 2**failures, 5.0))


def _sse_error(data: str) -> str:
    try:
        err = json.loads(data)
        err = err.get("error", err)
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return data.strip() or "stream error"


def _group_subscribe(
    client: Client,
    topic: str,
    group: str,
    start: str,
    count: int | None,
    as_json: bool,
    wait_ms: int,
    idle_timeout: float | None,
) -> int:
    """Pull, print and ack messages through consumer group ``group``."""
    client.call("PUT", _topic_path(topic, "groups", group), {"start": start})
    pull_path = _topic_path(topic, "groups", group, "pull")
    ack_path = _topic_path(topic, "groups", group, "ack")
    received = 0
    last_message = time.monotonic()
    while count is None or received < count:
        wait = wait_ms
        if idle_timeout:
            left = idle_timeout - (time.monotonic() - last_message)
            if left <= 0:
                break
            wait = min(wait, int(left * 1000) + 1)
        want = 100 if count is None else min(100, count - received)
        answer = client.call(
            "POST", pull_path, {"max": want, "wait_ms": wait}, timeout=client.timeout + wait / 1000
        )
        messages = (answer or {}).get("messages") or []
        for msg in messages:
            _emit_message(msg, as_json)
        if messages:
            client.call("POST", ack_path, {"ack_ids": [m["ack_id"] for m in messages]})
            last_message = time.monotonic()
        received += len(messages)
    return received


@cli.command()
@click.option("-t", "--topic", required=True, help="Topic to read.")
@click.option(
    "--from",
    "start",
    default="latest",
    show_default=True,
    metavar="earliest|latest|N",
    help="Where to start: earliest, latest or an offset.",
)
@click.option("--partition", type=click.IntRange(min=0), help="Read only this partition.")
@click.option("--group", help="Consume as a member of this consumer group (pull + ack).")
@click.option("-c", "--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@click.option("--json", "as_json", is_flag=True, help="Print each whole message as JSON.")
@click.option(
    "--wait-ms",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Long-poll time of each group pull.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="Stop after S seconds without a message (0 = never); with -c, fewer than -c "
    "messages is then an error.",
)
@click.pass_context
def subscribe(
    ctx: click.Context,
    topic: str,
    start: str,
    partition: int | None,
    group: str | None,
    count: int | None,
    as_json: bool,
    wait_ms: int,
    idle_timeout: float,
) -> None:
    """Print each message's payload on its own line as it arrives (Ctrl-C stops)."""
    client = _client(ctx)
    if start not in ("earliest", "latest") and not start.isdigit():
        raise click.BadParameter("expected earliest, latest or an offset", param_hint="'--from'")
    try:
        if group is not None:
            if start not in ("earliest", "latest"):
                raise click.BadParameter("with --group only earliest or latest", param_hint="'--from'")
            if partition is not None:
                raise click.UsageError("--partition cannot be combined with --group")
            received = _group_subscribe(
                client, topic, group, start, count, as_json, wait_ms, idle_timeout or None
            )
        else:
            received = _stream_subscribe(
                client, topic, start, partition, count, as_json, idle_timeout or None
            )
    except KeyboardInterrupt:
        return
    if count is not None and received < count:
        raise CtlError(f"received {received} of {count} messages within --idle-timeout")


# --------------------------------------------------------------------------------------------
# topics


@cli.group()
def topics() -> None:
    """List, create, describe and delete topics."""


def _partition_count(value: Any) -> Any:
    return len(value) if isinstance(value, (list, dict)) else value


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def topics_list(ctx: click.Context, as_json: bool) -> None:
    """List topics with their size."""
    answer = _client(ctx).call("GET", "/v1/topics")
    if as_json:
        _print_json(answer)
        return
    rows = []
    for t in (answer or {}).get("topics", []):
        config = t.get("config") if isinstance(t.get("config"), dict) else {}
        rows.append(
            [
                t.get("name"),
                _partition_count(t.get("partitions", config.get("partitions"))),
                t.get("replication_factor", config.get("replication_factor")),
                t.get("storage", config.get("storage")),
                t.get("messages"),
                _human_bytes(t.get("bytes")),
            ]
        )
    _table(["NAME", "PARTITIONS", "RF", "STORAGE", "MESSAGES", "BYTES"], rows)


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), help="Number of partitions.")
@click.option("--replication-factor", type=click.IntRange(min=1), help="Replicas per partition.")
@click.option("--storage", type=_STORAGE, help="durable (fsynced, default) or ephemeral (memory).")
@click.option("--retention-ms", type=click.IntRange(min=0), help="Delete messages older than this.")
@click.option("--retention-bytes", type=click.IntRange(min=0), help="Keep at most this many bytes.")
@click.option("--max-message-bytes", type=click.IntRange(min=1), help="Largest message accepted.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def topics_create(
    ctx: click.Context,
    name: str,
    partitions: int | None,
    replication_factor: int | None,
    storage: str | None,
    retention_ms: int | None,
    retention_bytes: int | None,
    max_message_bytes: int | None,
    as_json: bool,
) -> None:
    """Create a topic (or update the settings of an existing one)."""
    body = {
        k: v
        for k, v in {
            "partitions": partitions,
            "replication_factor": replication_factor,
            "storage": storage,
            "retention_ms": retention_ms,
            "retention_bytes": retention_bytes,
            "max_message_bytes": max_message_bytes,
        }.items()
        if v is not None
    }
    reply = _client(ctx).request("PUT", _topic_path(name), body).check()
    if as_json:
        _print_json(reply.json())
    else:
        click.echo(f"topic {name} {'created' if reply.status == 201 else 'updated'}")


def _describe_partitions(desc: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """Per-partition details of a topic description (a list or a dict keyed by partition)."""
    parts = desc.get("partition_details")
    if parts is None:
        parts = desc.get("partitions")
    if isinstance(parts, dict):
        return [(k, v) for k, v in parts.items() if isinstance(v, dict)]
    if isinstance(parts, list):
        return [(p.get("partition", p.get("id", i)), p) for i, p in enumerate(parts) if isinstance(p, dict)]
    return []


def _tier_text(name: str, info: Any) -> str:
    if not isinstance(info, dict):
        return f"{name} {_cell(info)}"
    if info.get("enabled") is False:
        return f"{name} off"
    if "low" in info and "high" in info:
        if info["low"] is None or info["low"] == info["high"]:
            return f"{name} empty" + _tier_status(info)
        text = f"{name} [{info['low']},{info['high']})"
        if "messages" in info:
            text += f" {info['messages']} msgs"
        if "bytes" in info:
            text += f" {_human_bytes(info['bytes'])}"
        return text + _tier_status(info)
    fields = " ".join(f"{k}={_human_bytes(v) if k == 'bytes' else _cell(v)}" for k, v in info.items())
    return f"{name} {fields}"


def _tier_status(info: dict[str, Any]) -> str:
    """`` FAILING (error)`` for an S3 tier whose uploads fail, `` uploading`` while one runs."""
    if info.get("status") == "failing":
        return f" FAILING ({info.get('last_error') or 'unknown error'})"
    if info.get("uploading"):
        return " uploading"
    return ""


_PARTITION_COLUMNS = ("leader", "epoch", "replicas", "low", "high_watermark")


@topics.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def topics_describe(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a topic's settings and every partition's replicas, offsets and tiers."""
    desc = _client(ctx).call("GET", _topic_path(name))
    if as_json:
        _print_json(desc)
        return
    if not isinstance(desc, dict):
        raise CtlError(f"unexpected answer: {desc!r}"[:200])
    parts = _describe_partitions(desc)
    for key, value in desc.items():
        if key == "partition_details" or (key == "partitions" and not isinstance(value, int)):
            continue
        if isinstance(value, dict) and key == "config":
            for ckey, cvalue in value.items():
                click.echo(f"{ckey}: {_cell(cvalue)}")
        elif key == "bytes":
            click.echo(f"{key}: {_human_bytes(value)}")
        else:
            click.echo(f"{key}: {_cell(value)}")
    if not isinstance(desc.get("partitions"), int) and parts:
        click.echo(f"partitions: {len(parts)}")
    if not parts:
        return
    extra = [k for k in ("log_end", "bytes") if any(k in p for _, p in parts)]
    click.echo("")
    _table(
        ["PARTITION", *(c.upper() for c in _PARTITION_COLUMNS), *(c.upper() for c in extra)],
        [
            [
                pid,
                *(p.get(c) for c in _PARTITION_COLUMNS),
                *(_human_bytes(p.get(c)) if c == "bytes" else p.get(c) for c in extra),
            ]
            for pid, p in parts
        ],
    )
    if any(isinstance(p.get("tiers"), dict) for _, p in parts):
        click.echo("")
        _table(
            ["PARTITION", "TIERS"],
            [
                [pid, "   ".join(_tier_text(k, v) for k, v in (p.get("tiers") or {}).items())]
                for pid, p in parts
            ],
        )


@topics.command("delete")
@click.argument("name")
@click.pass_context
def topics_delete(ctx: click.Context, name: str) -> None:
    """Delete a topic and all its messages."""
    _client(ctx).request("DELETE", _topic_path(name)).check()
    click.echo(f"topic {name} deleted")


# --------------------------------------------------------------------------------------------
# groups


@cli.group()
def groups() -> None:
    """Create, inspect and consume through consumer groups."""


@groups.command("create")
@click.argument("topic")
@click.argument("group")
@click.option("--start", type=_START, help="Where a new group starts (default: server's).")
@click.option("--ack-deadline-ms", type=click.IntRange(min=1), help="Lease time of a message.")
@click.option("--max-deliveries", type=click.IntRange(min=1), help="Attempts before dead-letter.")
@click.option("--dead-letter-topic", help="Where messages go after --max-deliveries attempts.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def groups_create(
    ctx: click.Context,
    topic: str,
    group: str,
    start: str | None,
    ack_deadline_ms: int | None,
    max_deliveries: int | None,
    dead_letter_topic: str | None,
    as_json: bool,
) -> None:
    """Create a consumer group on a topic (or update its settings)."""
    body = {
        k: v
        for k, v in {
            "start": start,
            "ack_deadline_ms": ack_deadline_ms,
            "max_deliveries": max_deliveries,
            "dead_letter_topic": dead_letter_topic,
        }.items()
        if v is not None
    }
    reply = _client(ctx).request("PUT", _topic_path(topic, "groups", group), body).check()
    if as_json:
        _print_json(reply.json())
    else:
        click.echo(f"group {group} on {topic} {'created' if reply.status == 201 else 'ready'}")


@groups.command("describe")
@click.argument("topic")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def groups_describe(ctx: click.Context, topic: str, group: str, as_json: bool) -> None:
    """Show a group's committed offsets, lag, in-flight and dead-lettered counts."""
    desc = _client(ctx).call("GET", _topic_path(topic, "groups", group))
    if as_json or not isinstance(desc, dict):
        _print_json(desc)
        return
    for key, value in desc.items():
        click.echo(f"{key}: {_cell(value)}")


@groups.command("delete")
@click.argument("topic")
@click.argument("group")
@click.pass_context
def groups_delete(ctx: click.Context, topic: str, group: str) -> None:
    """Delete a consumer group (its offsets and leases)."""
    _client(ctx).request("DELETE", _topic_path(topic, "groups", group)).check()
    click.echo(f"group {group} on {topic} deleted")


@groups.command("pull")
@click.argument("topic")
@click.argument("group")
@click.option(
    "--max", "max_", type=click.IntRange(min=1), default=10, show_default=True, help="Most messages to lease."
)
@click.option(
    "--wait-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Long-poll this long when nothing is available.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each message as JSON.")
@click.pass_context
def groups_pull(ctx: click.Context, topic: str, group: str, max_: int, wait_ms: int, as_json: bool) -> None:
    """Lease messages; prints ack_id, attempt, partition, offset and payload of each."""
    client = _client(ctx)
    answer = client.call(
        "POST",
        _topic_path(topic, "groups", group, "pull"),
        {"max": max_, "wait_ms": wait_ms},
        timeout=client.timeout + wait_ms / 1000,
    )
    for msg in (answer or {}).get("messages") or []:
        if as_json:
            _print_json(msg)
            continue
        payload = message_bytes(msg).decode("utf-8", "replace")
        click.echo(
            f"ack_id={msg.get('ack_id')} attempt={_cell(msg.get('delivery_attempt'))} "
            f"partition={_cell(msg.get('partition'))} offset={_cell(msg.get('offset'))} "
            f"payload={payload}"
        )


def _settle(ctx: click.Context, verb: str, topic: str, group: str, body: dict[str, Any]) -> None:
    answer = _client(ctx).call("POST", _topic_path(topic, "groups", group, verb), body)
    done_key = "acked" if verb == "ack" else "nacked"
    done = (answer or {}).get(done_key)
    wanted = len(body["ack_ids"])
    click.echo(f"{done_key} {_cell(done)}")
    if isinstance(done, int) and done < wanted:
        refused = (answer or {}).get("refused")
        if isinstance(refused, dict) and refused:
            why = ", ".join(f"{k} ({v})" for k, v in refused.items())
        elif isinstance(refused, list) and refused:
            why = ", ".join(map(str, refused))
        else:
            why = "expired or unknown"
        raise CtlError(f"{verb} refused for {wanted - done} of {wanted} ack ids: {why}")


@groups.command("ack")
@click.argument("topic")
@click.argument("group")
@click.argument("ack_ids", nargs=-1, required=True)
@click.pass_context
def groups_ack(ctx: click.Context, topic: str, group: str, ack_ids: tuple[str, ...]) -> None:
    """Acknowledge leased messages (fails when a lease has expired)."""
    _settle(ctx, "ack", topic, group, {"ack_ids": list(ack_ids)})


@groups.command("nack")
@click.argument("topic")
@click.argument("group")
@click.argument("ack_ids", nargs=-1, required=True)
@click.option("--delay-ms", type=click.IntRange(min=0), help="Redeliver after this delay.")
@click.pass_context
def groups_nack(
    ctx: click.Context, topic: str, group: str, ack_ids: tuple[str, ...], delay_ms: int | None
) -> None:
    """Give leased messages back for redelivery."""
    body: dict[str, Any] = {"ack_ids": list(ack_ids)}
    if delay_ms is not None:
        body["delay_ms"] = delay_ms
    _settle(ctx, "nack", topic, group, body)


# --------------------------------------------------------------------------------------------
# cluster


@cli.group()
def cluster() -> None:
    """Inspect cluster membership, Raft state and partition placement."""


def _members_table(members: Any, leader: Any) -> None:
    rows = [
        [
            m.get("id"),
            m.get("state"),
            m.get("incarnation"),
            m.get("peer"),
            m.get("http"),
            "*" if leader is not None and m.get("id") == leader else "",
        ]
        for m in (members or [])
        if isinstance(m, dict)
    ]
    _table(["ID", "STATE", "INCARNATION", "PEER", "HTTP", "LEADER"], rows)


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def cluster_status(ctx: click.Context, as_json: bool) -> None:
    """Show this node's view: id, Raft leader and term, members."""
    info = _client(ctx).call("GET", "/v1/cluster")
    if as_json or not isinstance(info, dict):
        _print_json(info)
        return
    click.echo(f"node: {_cell(info.get('node_id'))}")
    click.echo(f"leader: {_cell(info.get('leader'))}")
    click.echo(f"term: {_cell(info.get('term'))}")
    raft = info.get("raft")
    if isinstance(raft, dict):
        click.echo(f"raft role: {_cell(raft.get('role'))}")
        click.echo(f"commit/applied: {_cell(raft.get('commit_index'))}/{_cell(raft.get('applied'))}")
        click.echo(f"voters: {', '.join(map(str, raft.get('voters') or [])) or '-'}")
        click.echo(f"learners: {', '.join(map(str, raft.get('learners') or [])) or '-'}")
        if "target_voters" in raft:
            voters = raft.get("voters") or []
            ft = raft.get("fault_tolerance")
            state = "fault-tolerant" if raft.get("fault_tolerant") else "NOT at full strength"
            click.echo(
                f"fault tolerance: {_cell(ft)} voter failure{'' if ft == 1 else 's'} "
                f"({len(voters)} voters, {_cell(raft.get('live_voters'))} up, target {_cell(raft.get('target_voters'))}; "
                f"{state})"
            )
        for key in (
            "snapshot_index",
            "elections",
            "leader_changes",
            "proposal_ms_p50",
            "cluster_id",
            "forced_new_cluster",
        ):
            if key in raft:
                click.echo(f"{key.replace('_', ' ')}: {_cell(raft[key])}")
    parts = info.get("partitions")
    if isinstance(parts, dict):
        click.echo(
            f"partitions led: {_cell(parts.get('leading'))}, "
            f"under-replicated: {_cell(parts.get('under_replicated'))}, "
            f"replicas here: {_cell(parts.get('replicas'))}, "
            f"forwarded publishes: {_cell(parts.get('forwarded'))}, "
            f"failovers committed: {_cell(parts.get('failovers'))}"
        )
    for key, value in info.items():
        if key not in ("node_id", "leader", "term", "raft", "members", "partitions"):
            click.echo(f"{key}: {_cell(value)}")
    click.echo("")
    _members_table(info.get("members"), info.get("leader"))


@cluster.command("members")
@click.option("--json", "as_json", is_flag=True, help="Print the members as JSON.")
@click.pass_context
def cluster_members(ctx: click.Context, as_json: bool) -> None:
    """List members with their gossip state and addresses; * marks the Raft leader."""
    info = _client(ctx).call("GET", "/v1/cluster") or {}
    if as_json:
        _print_json(info.get("members"))
        return
    _members_table(info.get("members"), info.get("leader"))


@cluster.command("placement")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.option("-t", "--topic", help="Only this topic.")
@click.pass_context
def cluster_placement(ctx: click.Context, as_json: bool, topic: str | None) -> None:
    """Show which nodes hold each partition, and its leader and epoch."""
    info = _client(ctx).call("GET", "/v1/cluster/placement") or {}
    if as_json:
        _print_json(info)
        return
    rows = []
    placement = info.get("topics") or {}
    for name in sorted(placement):
        if topic is not None and name != topic:
            continue
        parts = placement[name] or {}
        items = parts.items() if isinstance(parts, dict) else enumerate(parts)
        for pid, p in sorted(items, key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
            p = p if isinstance(p, dict) else {}
            rows.append([name, pid, p.get("leader"), p.get("epoch"), p.get("replicas")])
    _table(["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS"], rows)


@cluster.command("keygen")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the key to this file (created with mode 600) instead of printing it.",
)
def cluster_keygen(output: str | None) -> None:
    """Print a new random cluster key (32 bytes) for --cluster-key-file / SPRAWL_CLUSTER_KEY.

    Every node of a cluster needs the same key; it authenticates gossip and
    every frame of the peer channel.  Needs no node.
    """
    from sprawl.config import generate_cluster_key

    key = generate_cluster_key()
    if output is None:
        click.echo(key)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CtlError(f"{output} exists; not overwriting a cluster key") from None
    except OSError as e:
        raise CtlError(f"cannot create {output}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


# --------------------------------------------------------------------------------------------
# diagnose


@dataclass
class NodeReport:
    """What ``diagnose`` learnt about one node."""

    url: str
    up: bool = False
    ready: bool = False
    problem: str | None = None
    health_ms: float | None = None
    ready_reason: str | None = None
    cluster: dict[str, Any] | None = None


def _probe(url: str, timeout: float) -> NodeReport:
    report = NodeReport(url)
    client = Client([url], timeout)
    try:
        health = client.request("GET", "/healthz")
    except CtlError as exc:
        report.problem = str(exc.message).rsplit(": ", 1)[-1]
        return report
    report.health_ms = health.elapsed * 1000
    report.up = health.status == 200
    if not report.up:
        report.problem = f"unhealthy: {error_text(health.status, health.body)}"
        return report
    try:
        ready = client.request("GET", "/readyz")
        report.ready = ready.status == 200
        if not report.ready:
            report.ready_reason = _ready_reason(ready)
        cluster_reply = client.request("GET", "/v1/cluster")
        if cluster_reply.status == 200:
            info = cluster_reply.json()
            report.cluster = info if isinstance(info, dict) else None
    except CtlError as exc:
        report.up = False
        report.problem = str(exc.message).rsplit(": ", 1)[-1]
    return report


def _ready_reason(reply: Reply) -> str:
    try:
        body = json.loads(reply.body)
    except ValueError:
        text = reply.body.decode("utf-8", "replace").strip()
        return text.splitlines()[0][:200] if text else f"HTTP {reply.status}"
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            err = body["error"]
            return str(err.get("message") or err.get("code"))
        for key in ("reason", "message", "status"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:200]


def _problems(reports: list[NodeReport]) -> list[str]:
    problems = []
    for r in reports:
        if not r.up:
            problems.append(f"{r.url}: down ({r.problem})")
        elif not r.ready:
            problems.append(f"{r.url}: not ready: {r.ready_reason}")
    views = [(r.url, r.cluster) for r in reports if r.cluster is not None]
    for url, info in views:
        if not info.get("leader"):
            problems.append(f"{url}: knows no Raft leader")
        raft: dict[str, Any] = info["raft"] if isinstance(info.get("raft"), dict) else {}
        if raft.get("fault_tolerant") is False and raft.get("leader"):
            problems.append(
                f"{url}: Raft is not fault-tolerant: {len(raft.get('voters') or [])} voters, "
                f"{_cell(raft.get('live_voters'))} up, target {_cell(raft.get('target_voters'))} "
                f"(survives {_cell(raft.get('fault_tolerance'))} more voter failures)"
            )
        for m in info.get("members") or []:
            if isinstance(m, dict) and m.get("state") not in (None, "alive"):
                problems.append(f"{url}: sees member {m.get('id')} as {m.get('state')}")
    leaders = {str(info.get("leader")) for _, info in views if info.get("leader")}
    if len(leaders) > 1:
        problems.append(
            "nodes disagree on the leader: "
            + ", ".join(f"{url} says {info.get('leader')}" for url, info in views)
        )
    member_sets = {
        url: sorted(
            str(m.get("id"))
            for m in info.get("members") or []
            if isinstance(m, dict) and m.get("state") in (None, "alive")
        )
        for url, info in views
    }
    if len({tuple(v) for v in member_sets.values()}) > 1:
        problems.append(
            "nodes disagree on the alive members: "
            + "; ".join(f"{url} sees {','.join(ids) or 'none'}" for url, ids in member_sets.items())
        )
    ids: dict[str, str] = {}
    for url, info in views:
        node_id = str(info.get("node_id"))
        if node_id in ids:
            problems.append(f"{url} and {ids[node_id]} are the same node {node_id}")
        ids[node_id] = url
    return problems


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def diagnose(ctx: click.Context, as_json: bool) -> None:
    """Check every node given with -n: health, readiness, cluster view; list problems."""
    client = _client(ctx)
    reports = [_probe(url, client.timeout) for url in client.urls]
    problems = _problems(reports)
    if as_json:
        _print_json(
            {
                "nodes": [r.__dict__ for r in reports],
                "problems": problems,
            }
        )
    else:
        for r in reports:
            click.echo(r.url)
            if not r.up:
                click.echo(f"  health:  DOWN ({r.problem})")
                continue
            click.echo(f"  health:  ok ({r.health_ms:.1f} ms)")
            click.echo("  ready:   yes" if r.ready else f"  ready:   NO ({r.ready_reason})")
            info = r.cluster
            if info is None:
                click.echo("  cluster: no answer")
                continue
            raft: dict[str, Any] = info["raft"] if isinstance(info.get("raft"), dict) else {}
            members = [m for m in info.get("members") or [] if isinstance(m, dict)]
            states: dict[str, int] = {}
            for m in members:
                states[str(m.get("state"))] = states.get(str(m.get("state")), 0) + 1
            click.echo(
                f"  node:    {_cell(info.get('node_id'))} (raft {_cell(raft.get('role'))}, "
                f"term {_cell(info.get('term', raft.get('term')))})"
            )
            click.echo(f"  leader:  {_cell(info.get('leader'))}")
            click.echo(
                f"  members: {len(members)} ("
                + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                + ")"
            )
        click.echo("")
        if problems:
            click.echo("problems:")
            for p in problems:
                click.echo(f"  - {p}")
        else:
            click.echo("no problems found")
    bad = sum(1 for r in reports if not (r.up and r.ready))
    if bad:
        raise CtlError(f"{bad} of {len(reports)} node(s) down or not ready")


# --------------------------------------------------------------------------------------------
# bench


class _ProgressLine:
    """A cheap one-line progress display on stderr, redrawn at most 5 times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def __call__(self, published: int, pub_total: int, delivered: int, del_total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        width = 30
        done = published / pub_total if pub_total else 1.0
        bar = "#" * int(done * width)
        line = f"\r[{bar:<{width}}] published {published}/{pub_total}"
        if del_total:
            line += f"  delivered {delivered}/{del_total}"
        click.echo(line, nl=False, err=True)
        self._shown = True

    def close(self) -> None:
        """Erase the line."""
        if self._shown:
            click.echo("\r\x1b[2K", nl=False, err=True)


def _ms(summary: Any) -> str:
    if summary is None:
        return "n/a"
    return f"p50 {summary.p50:.2f}  p99 {summary.p99:.2f}  max {summary.max:.2f}"


@cli.command()
@click.option("--topic", help="Topic to use (default: a fresh one, deleted afterwards).")
@click.option(
    "--messages", type=click.IntRange(min=1), default=100_000, show_default=True, help="Messages to publish."
)
@click.option(
    "--size",
    type=click.IntRange(min=19),
    default=100,
    show_default=True,
    help="Payload bytes per message (at least 19: the send timestamp).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Messages per publish request.",
)
@click.option(
    "--publishers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Concurrent publishing connections.",
)
@click.option(
    "--subscribers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="SSE subscribers reading from latest.",
)
@click.option("--acks", type=_ACKS, default="quorum", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Total msgs/s to publish at (0 = as fast as possible).",
)
@click.option(
    "--storage", type=_STORAGE, default="durable", show_default=True, help="Storage of the created topic."
)
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions of the created topic.")
@click.option(
    "--replication-factor", type=click.IntRange(min=1), help="Replication factor of the created topic."
)
@click.option("--keep-topic", is_flag=True, help="Do not delete the fresh topic afterwards.")
@click.option(
    "--inline-subscribers", is_flag=True, help="Run subscribers in this process instead of a child process."
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Stop waiting for deliveries after this many seconds without one.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress line on stderr (default: when stderr is a terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.pass_context
def bench(
    ctx: click.Context,
    topic: str | None,
    messages: int,
    size: int,
    batch: int,
    publishers: int,
    subscribers: int,
    acks: str,
    rate: float,
    storage: str,
    partitions: int | None,
    replication_factor: int | None,
    keep_topic: bool,
    inline_subscribers: bool,
    drain_timeout: float,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Measure publish and delivery throughput and latency."""
    from sprawl.bench import BenchConfig, BenchError, run_bench

    client = _client(ctx)
    config = BenchConfig(
        urls=list(client.urls),
        topic=topic,
        messages=messages,
        size=size,
        batch=batch,
        publishers=publishers,
        subscribers=subscribers,
        acks=acks,
        rate=rate,
        storage=storage,
        partitions=partitions,
        replication_factor=replication_factor,
        keep_topic=keep_topic,
        subscriber_process=not inline_subscribers,
        timeout=max(client.timeout, 30.0),
        drain_timeout=drain_timeout,
    )
    if progress is None:
        progress = sys.stderr.isatty()
    line = _ProgressLine(progress)
    # The bench's own HTTP clients (and its subscriber process) read these.
    saved = {k: os.environ.get(k) for k in ("SPRAWL_TOKEN", "SPRAWL_CACERT")}
    if client.token:
        os.environ["SPRAWL_TOKEN"] = client.token
    if client.cacert:
        os.environ["SPRAWL_CACERT"] = client.cacert
    try:
        result = run_bench(config, line)
    except BenchError as exc:
        raise CtlError(str(exc)) from None
    finally:
        line.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if as_json:
        _print_json(result.to_dict())
    else:
        r = result
        click.echo(
            f"publish:   {r.published} msgs in {r.publish_seconds:.2f} s = "
            f"{r.publish_msgs_per_s:,.0f} msgs/s, {r.publish_mb_per_s:.2f} MB/s"
            + (f" ({r.throttled} throttled requests)" if r.throttled else "")
        )
        click.echo(f"publish request latency ms: {_ms(r.publish_latency_ms)}")
        if r.subscribers:
            click.echo(
                f"delivered: {r.delivered}/{r.delivery_target} msgs in {r.delivery_seconds:.2f} s"
                f" = {r.delivered_msgs_per_s:,.0f} msgs/s, {r.delivered_mb_per_s:.2f} MB/s"
                f" (total of {r.subscribers} subscriber{'s' if r.subscribers != 1 else ''})"
            )
            click.echo(f"end-to-end latency ms: {_ms(r.e2e_latency_ms)}")
        click.echo(
            f"payload {r.size} B, acks {r.acks}, batch {r.batch}, publishers {r.publishers}, "
            f"subscribers {r.subscribers}, replication {_cell(r.replication_factor)}, "
            f"partitions {_cell(r.partitions)}, storage {r.storage}"
            + (f", rate {r.rate:g} msgs/s" if r.rate else "")
            + f", topic {r.topic}"
        )
        for warning in r.warnings:
            click.echo(f"warning: {warning}", err=True)
    if not result.complete:
        raise CtlError(f"subscribers received {result.delivered} of {result.delivery_target} messages")


# --------------------------------------------------------------------------------------------
# damaged ranges


def _ranges_table(rows: list[dict[str, Any]]) -> None:
    _table(
        ["TOPIC", "PARTITION", "OFFSETS", "TIER", "STATE", "REASON"],
        [
            (
                r["topic"],
                r["partition"],
                f"{r['first_offset']}-{r['last_offset']}",
                r["tier"],
                r.get("state", "damaged"),
                r["reason"],
            )
            for r in rows
        ],
    )


def _s3_for_verify(endpoint: str | None, bucket: str | None, region: str) -> Any:
    """A boto3 client and bucket for ``verify --s3-*`` (None without an endpoint)."""
    endpoint = endpoint or os.environ.get("SPRAWL_S3_ENDPOINT") or os.environ.get("MINIO_ENDPOINT")
    bucket = bucket or os.environ.get("SPRAWL_S3_BUCKET") or os.environ.get("MINIO_BUCKET")
    if not endpoint:
        return None
    if not bucket:
        raise CtlError("--s3-endpoint needs --s3-bucket (or SPRAWL_S3_BUCKET)")
    from sprawl.config import normalize_endpoint_url
    from sprawl.storage.s3 import S3Client, S3Settings

    settings = S3Settings(
        endpoint=normalize_endpoint_url(endpoint),
        bucket=bucket,
        region=region,
        access_key=os.environ.get("SPRAWL_S3_ACCESS_KEY") or os.environ.get("MINIO_ACCESS_KEY"),
        secret_key=os.environ.get("SPRAWL_S3_SECRET_KEY") or os.environ.get("MINIO_SECRET_KEY"),
    )
    return S3Client(settings, None)._boto(), bucket


@cli.command()
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--s3-endpoint", help="Also check the S3 objects the manifests name (env SPRAWL_S3_ENDPOINT).")
@click.option("--s3-bucket", help="Bucket of --s3-endpoint (env SPRAWL_S3_BUCKET).")
@click.option("--s3-region", default="us-east-1", show_default=True, help="Region of --s3-endpoint.")
@click.option(
    "--scrub",
    is_flag=True,
    help="Online: start a scrub pass of every stored record now, wait for it, then report.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Online: seconds --scrub waits at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify(
    ctx: click.Context,
    data_dir: str | None,
    s3_endpoint: str | None,
    s3_bucket: str | None,
    s3_region: str,
    scrub: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Print every damaged range of stored messages.

    With DATA_DIR (the node stopped): open its LMDB read-only and check every
    stored record (checksums, keys, gaps) -- and with --s3-endpoint every S3
    object its manifests name.  Without DATA_DIR: ask the node (--nodes) for
    what its reads and its background scrub found (--scrub: scrub everything
    now first).  Exits 1 when anything is damaged.
    """
    if data_dir is not None:
        from sprawl.storage.offline import verify_data_dir

        try:
            report = verify_data_dir(data_dir, _s3_for_verify(s3_endpoint, s3_bucket, s3_region))
        except Exception as e:  # an environment LMDB cannot open, a store that cannot be reached
            raise CtlError(f"cannot verify {data_dir}: {type(e).__name__}: {e}") from None
        if as_json:
            _print_json(report.to_dict())
        else:
            if report.findings:
                _ranges_table([f.to_dict() for f in report.findings])
            if report.skipped:
                click.echo(f"{len(report.skipped)} range(s) skipped earlier by an operator")
            for err in report.errors:
                click.echo(f"error: {err}", err=True)
            click.echo(
                f"{report.partitions} partition(s): {report.lmdb_bytes} bytes of records in LMDB"
                + (
                    f", {report.s3_objects} S3 object(s) ({report.s3_bytes} bytes)"
                    if report.s3_objects
                    else ""
                )
                + f" checked; {len(report.findings)} damaged range(s)"
            )
        if report.findings or report.errors:
            ctx.exit(1)
        return
    client = _client(ctx)
    if scrub:
        target = int(client.call("POST", "/v1/damage/scrub")["pass"])
        deadline = time.monotonic() + wait_timeout
        for _ in range(int(wait_timeout * 4) + 2):
            answer = client.call("GET", "/v1/damage")
            if int(answer["scrub"]["passes"]) >= target:
                break
            if time.monotonic() > deadline:
                raise CtlError(f"the scrub pass did not finish within {wait_timeout:g}s")
            time.sleep(0.25)
    answer = client.call("GET", "/v1/damage")
    if as_json:
        _print_json(answer)
    else:
        rows = answer["ranges"]
        if rows:
            _ranges_table(rows)
        sc = answer["scrub"]
        if sc.get("enabled"):
            click.echo(
                f"scrub: {sc['passes']} pass(es) done, {'running ' + format(sc['progress'], '.0%') if sc['running'] else 'idle'}"
                f", {sc['scanned_bytes']} bytes checked at {sc['rate_bytes_per_s']} bytes/s"
            )
        else:
            click.echo("scrub: off")
        click.echo(f"{answer['damaged']} damaged range(s), {answer['skipped']} skipped")
    if answer["damaged"]:
        ctx.exit(1)


@cli.group()
def damage() -> None:
    """Damaged ranges of stored messages on a node."""


@damage.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def damage_list(ctx: click.Context, as_json: bool) -> None:
    """The node's damaged and skipped ranges and its scrub's progress."""
    ctx.invoke(verify, as_json=as_json)


@damage.command("skip")
@click.argument("topic")
@click.argument("partition", type=click.IntRange(min=0))
@click.argument("first", type=click.IntRange(min=0))
@click.argument("last", type=click.IntRange(min=0))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
@click.pass_context
def damage_skip(
    ctx: click.Context, topic: str, partition: int, first: int, last: int, yes: bool, as_json: bool
) -> None:
    """Give up the damaged range meeting offsets FIRST..LAST of TOPIC/PARTITION on the
    node (--nodes): readers pass over it from now on.  For a node that has no healthy
    replica to repair the range from; the messages in it are lost."""
    if not yes:
        click.confirm(
            f"Skip the damaged range of {topic}/{partition} meeting offsets {first}-{last}? "
            "Its messages will never be delivered",
            abort=True,
        )
    answer = _client(ctx).call(
        "POST",
        _topic_path(topic, "damage", "skip"),
        {"partition": partition, "first_offset": first, "last_offset": last},
    )
    if as_json:
        _print_json(answer)
        return
    r = answer["skipped"]
    click.echo(f"skipped {topic}/{partition} offsets {r['first_offset']}-{r['last_offset']} ({r['reason']})")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sprawlctl")


if __name__ == "__main__":
    main()
