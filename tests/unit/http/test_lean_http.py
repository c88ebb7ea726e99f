"""The lean HTTP/1.1 request parser (sprawl/http/lean_http.py) and the channel that uses it:
for any bytes, in any split into reads, the node's HTTP channel answers exactly what it
answers with twisted.web's parser alone (the same requests, headers, bodies, errors and
closes), and a hot-route request that arrives whole in one read skips twisted.web's
line-by-line parse."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sprawl.http import lean_http
from sprawl.http.lean_http import parse_hot
from sprawl.http.server import make_site

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class _Echo(Resource):
    """Answers with what it was asked (method, URI, headers, body); a path holding ``later``
    is answered on the clock's next tick instead (a pipelined request waits for it)."""

    isLeaf = True

    def __init__(self, clock: task.Clock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, request: Any) -> Any:
        body = request.content.read() if request.content is not None else b""
        seen = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "args": sorted(
                (k.decode("latin-1"), [v.decode("latin-1") for v in vs]) for k, vs in request.args.items()
            ),
            "headers": sorted(
                (k.decode("latin-1"), [v.decode("latin-1") for v in vs])
                for k, vs in request.requestHeaders.getAllRawHeaders()
            ),
            "body": body.decode("latin-1"),
        }
        out = json.dumps(seen).encode()
        request.setHeader(b"content-length", b"%d" % len(out))
        if b"later" in request.uri:
            self.clock.callLater(0.01, _answer, request, out)
            return NOT_DONE_YET
        return out


def _answer(request: Any, out: bytes) -> None:
    if not request.finished and not request._disconnected:
        request.write(out)
        request.finish()


class _Transport(StringTransport):
    """A test transport that logs what the channel asks of it as a producer's consumer
    (pause, resume, unregister), instead of refusing calls after a close."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def _checkState(self) -> None:
        pass

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def unregisterProducer(self) -> None:
        self.events.append("unregister")
        self.producer = None


def _serve(reads: list[bytes], lean: bool) -> tuple[bytes, bool, list[str]]:
    """What a channel (lean parse on or off) writes for ``reads``, Date headers cut,
    whether it closed, and what it asked of its transport as a producer."""
    clock = task.Clock()
    site = make_site(_Echo(clock), max_body=1000, reactor=clock)
    proto = site.buildProtocol(ADDR)
    proto.lean_parse = lean
    transport = _Transport()
    proto.makeConnection(transport)
    for data in reads:
        try:
            proto.dataReceived(data)
        except Exception as e:  # the reactor would drop the connection: so does this
            transport.events.append(f"raised {type(e).__name__}")
            break
        clock.advance(0.02)
    clock.advance(0.02)
    out = b"\r\n".join(line for line in transport.value().split(b"\r\n") if not line.startswith(b"Date: "))
    closing = bool(transport.disconnecting)
    proto.connectionLost(None)
    return out, closing, transport.events


_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"get", b"G\x00T", b""])
_TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/v1/topics/t/messages",
            b"/v1/topics/t/stream?from=latest",
            b"/v1/topics/t/messages?timeout=0&max=2",
            b"/v1/topics/a%2Fb/messages",
            b"/v1/topics/t/messages/",
            b"/v1/topics/later/messages",
            b"/v1/topics/t/m\x7fsg",
            b"/v1/topics/\xc3\xa9/stream",
            b"/v1/topics/t/m sg",
            b"/other",
            b"",
        ]
    ),
    st.binary(max_size=20).map(lambda b: b"/v1/topics/" + b),
)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"])
_HEADER = st.one_of(
    st.sampled_from(
        [
            (b"Host", b"x"),
            (b"Content-Type", b"application/json"),
            (b"Connection", b"close"),
            (b"Connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Expect", b"100-continue"),
            (b"Upgrade", b"websocket"),
            (b"content-LENGTH", b"3"),
            (b"Content-Length", b"+3"),
            (b"Content-Length", b" 0 "),
            (b" Folded", b"x"),
            (b"Bad Name", b"x"),
            (b"X-Empty", b""),
            (b"X-Spaces", b"  a b \t"),
            (b"Cookie", b"a=b"),
        ]
    ),
    st.tuples(st.binary(min_size=0, max_size=8), st.binary(max_size=12)),
)


_PLAIN_HEADER = st.one_of(
    st.sampled_from(
        [
            (b"Host", b"x"),
            (b"Content-Type", b"application/json"),
            (b"Connection", b"close"),
            (b"Connection", b"keep-alive, Close"),
            (b"X-Spaces", b"  a b \t"),
            (b"X-Tab", b"\ta\t"),
            (b"X-Empty", b""),
            (b"Cookie", b"a=b; c=d"),
            (b"Last-Event-ID", b"0:3"),
            (b"Authorization", b"Bearer t"),
        ]
    ),
    st.tuples(
        st.from_regex(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,8}\Z"),
        st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")),
    ),
)


@st.composite
def _requests(draw: Any) -> bytes:
    """One request: half of them of the shape the lean parser takes (its headers varied),
    the others anything near it, well formed or not."""
    if draw(st.booleans()):
        method = draw(st.sampled_from([b"GET", b"POST"]))
        target = draw(
            st.sampled_from(
                [b"/v1/topics/t/messages", b"/v1/topics/later/stream?x=%20&y", b"/v1/topics/%2F/messages"]
            )
        )
        version, sep = b"HTTP/1.1", b"\r\n"
        headers = draw(st.lists(_PLAIN_HEADER, max_size=6))
        length = draw(st.sampled_from(["right", "none", "right", "long"]))
    else:
        method, target, version = draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)
        headers = draw(st.lists(st.one_of(_HEADER, _PLAIN_HEADER), max_size=6))
        length = draw(st.sampled_from(["right", "short", "long", "none", "twice"]))
        sep = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    body = draw(st.binary(max_size=24))
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    n = len(body)
    if length == "right":
        lines.append(b"Content-Length: %d" % n)
    elif length == "short":
        lines.append(b"Content-Length: %d" % max(0, n - 2))
    elif length == "long":
        lines.append(b"Content-Length: %d" % (n + 2))
    elif length == "twice":
        lines += [b"Content-Length: %d" % n] * 2
    else:
        body = b"" if draw(st.booleans()) else body
    return sep.join(lines) + sep + sep + body


@st.composite
def _reads(draw: Any) -> list[bytes]:
    """One to three requests (or random bytes), split into reads at random places."""
    stream = b"".join(draw(st.lists(st.one_of(_requests(), st.binary(max_size=40)), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    reads, last = [], 0
    for c in [*cuts, len(stream)]:
        reads.append(stream[last:c])
        last = c
    return [r for r in reads if r]


@settings(max_examples=600, deadline=None)
@given(_reads())
def test_the_lean_parse_answers_exactly_as_twisted_web_does(reads: list[bytes]) -> None:
    """Any bytes, split into any reads: the answers (every byte but the Date header) and
    whether the connection closes are the same with the lean parse as without it."""
    assert _serve(reads, lean=True) == _serve(reads, lean=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_the_parser_never_crashes_and_stays_in_its_bounds(data: bytes) -> None:
    """Random bytes: ``parse_hot`` returns None or a request whose parts lie inside ``data``
    and inside its bounds."""
    found = parse_hot(data)
    if found is not None:
        assert found.method in (b"GET", b"POST") and found.target.startswith(b"/v1/topics/")
        assert found.body_start <= lean_http.MAX_HEAD + 4
        assert found.end == found.body_start + found.length <= len(data)
        assert len(found.headers) <= lean_http.MAX_HEADERS


def test_a_content_length_of_thousands_of_digits_is_left_to_twisted_web() -> None:
    """A ``Content-Length`` longer than ``int()`` converts (4,300 digits) or than any body a
    read holds: ``parse_hot`` leaves it to twisted.web (it raised ValueError before, which
    dropped the connection unanswered), which answers it as it would without the lean parse."""
    for digits in (19, 5_000):
        head = b"POST /v1/topics/t/messages HTTP/1.1\r\nContent-Length: " + b"9" * digits + b"\r\n\r\n"
        assert parse_hot(head) is None
        assert _serve([head], lean=True) == _serve([head], lean=False)


def test_a_whole_hot_request_is_parsed_lean_and_the_rest_is_left_to_twisted() -> None:
    """A publish in one read is read by ``parse_hot`` (twisted.web's ``lineReceived`` never
    runs for it); a request in two reads, another route, HTTP/1.0, chunked or
    ``Expect: 100-continue`` go to twisted.web's parser."""
    body = b'{"messages":[{"payload":"x"}]}'
    whole = b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    found = parse_hot(whole + b"GET /next")
    assert found is not None and found.end == len(whole) and found.length == len(body)
    assert found.headers == [(b"Host", b"x"), (b"Content-Length", b"%d" % len(body))]
    assert parse_hot(whole[:-1]) is None  # the body is not whole
    for other in (
        whole.replace(b"POST /v1/topics/t/messages", b"PUT /v1/topics/t"),
        whole.replace(b"HTTP/1.1", b"HTTP/1.0"),
        whole.replace(b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"),
        whole.replace(b"Host: x", b"Expect: 100-continue"),
        whole.replace(b"Host: x", b"Host: x\r\n folded"),
        whole.replace(b"\r\n\r\n", b"\r\nX: " + b"y" * lean_http.MAX_HEAD + b"\r\n\r\n"),
    ):
        assert parse_hot(other) is None, other

    clock = task.Clock()
    site = make_site(_Echo(clock), max_body=1000, reactor=clock)
    proto = site.buildProtocol(ADDR)
    lines: list[bytes] = []
    plain = proto.lineReceived
    proto.lineReceived = lambda line: (lines.append(line), plain(line))[1]
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(whole)
    assert lines == [] and b'"body": "{\\"messages\\"' in transport.value()
    proto.dataReceived(whole[:10])
    proto.dataReceived(whole[10:])
    assert lines and transport.value().count(b"HTTP/1.1 200 OK") == 2
