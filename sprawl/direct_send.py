"""A write that skips the transport's buffer (issue 16).

Twisted's TCP transport buffers every ``write`` and sends it at the reactor's
next poll: an ``epoll_ctl`` pair (start writing, stop writing), a poll round and
``doWrite`` for every answer or frame.  :func:`send_first` hands the bytes to
the socket at once when nothing waits before them in the transport's buffer,
and leaves everything unusual to the transport.  The HTTP answers and WebSocket
frames (:mod:`sprawl.http.server`, lean1) and the peer channel's frames
(:mod:`sprawl.peer.outbound`, qpath43) share it.

It reads the transport's private fields (``dataBuffer``, ``offset``,
``_tempDataLen``, ``_writeDisconnecting``): the tests in
``tests/unit/http/test_send_now.py`` and ``tests/unit/peer/test_peer_tcp.py``
pin the behaviour on the Twisted version installed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

#: The plain TCP transports :func:`send_first` writes to (TLS and test
#: transports are left alone).
_PLAIN = (tcp.Server, tcp.Client)


def send_first(transport: Any, data: bytes) -> int:
    """Hand ``data`` to a plain TCP connection's socket at once, when nothing is waiting
    before it in the transport's buffer: how many bytes the socket took (0: none; the
    caller gives the rest to ``transport.write`` as usual).  A write so sent never passes
    through the transport's buffer, so it costs no ``epoll_ctl`` pair and no reactor
    round.  Anything unusual is left to the transport: TLS, a closing or half-closed
    connection, a paused producer, bytes already buffered, a full socket, or a failed
    send (the reactor finds the error again on its own write and closes as it always
    does)."""
    if type(transport) not in _PLAIN or transport.TLS or type(data) is not bytes:
        return 0
    if not transport.connected or transport.disconnecting or transport._writeDisconnecting:
        return 0
    if transport.producerPaused or transport._tempDataLen or len(transport.dataBuffer) > transport.offset:
        return 0
    try:
        return int(transport.socket.send(data))
    except OSError:
        return 0
