"""The fault watch's probe of a peer port (sprawl.cluster.fault_watch), on real loopback
sockets: refused (nothing listens), silent (a connection accepted, nothing said, as by a
stopped process), answers (the CHALLENGE comes) -- what tells a killed node from a
stopped one."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import protocol

from harness import the_reactor, until
from sprawl.cluster import fault_watch
from sprawl.cluster.fault_watch import FaultWatch


class _Member:
    def __init__(self, node_id: str, port: int) -> None:
        self.node_id = node_id
        self.meta = {"peer": f"127.0.0.1:{port}"}
        self.addr = ("127.0.0.1", port)
        self.state = "suspect"


class _Gossip:
    def __init__(self, members: list[_Member]) -> None:
        self._members = members

    def members(self) -> list[_Member]:
        return self._members


def _watch(members: list[_Member]) -> FaultWatch:
    return FaultWatch("me", the_reactor(), None, None, None, _Gossip(members), (2, 3))


async def _probe(watch: FaultWatch, node: str) -> str:
    watch._maybe_probe(node)
    await until(lambda: node in watch.reach, f"the probe of {node}")
    return watch.reach[node][0]


@pytest_twisted.ensureDeferred
async def test_refused_silent_and_answering_ports(monkeypatch: Any) -> None:
    monkeypatch.setattr(fault_watch, "PROBE_TIMEOUT", 0.3)
    monkeypatch.setattr(FaultWatch, "tick", lambda self: None)  # (no observation: only the probe)
    # nothing listens: a port held bound (so no other socket can take it) but not listening,
    # which the kernel refuses; a port merely released could be handed to the next bind(0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    # accepts (the kernel's backlog) but never reads or writes: a stopped process
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)

    class Hello(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"\x00\x00\x00\x11\x01" + b"c" * 16)  # a CHALLENGE frame

    port = the_reactor().listenTCP(0, protocol.Factory.forProtocol(Hello), interface="127.0.0.1")
    try:
        members = [
            _Member("gone", closed),
            _Member("stopped", mute.getsockname()[1]),
            _Member("up", port.getHost().port),
        ]
        w = _watch(members)
        assert await _probe(w, "gone") == "refused"
        assert await _probe(w, "stopped") == "silent"
        assert await _probe(w, "up") == "answers"
        assert w._probing == set()
        # at most one probe per member per PROBE_EVERY
        before = dict(w._probed_at)
        w._maybe_probe("up")
        assert w._probed_at == before
    finally:
        s.close()
        mute.close()
        await port.stopListening()
