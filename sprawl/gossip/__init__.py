"""SWIM + Lifeguard gossip membership: the pure protocol core and its UDP adapter.

Every module here except the UDP adapter (:mod:`sprawl.gossip.udp`, with
:mod:`~sprawl.gossip.incarnation_file` and :mod:`~sprawl.gossip.peer_port`) is pure (no Twisted, no
I/O; tests/contract/test_purity.py and the import contract check it).  :mod:`sprawl.gossip.membership`
holds the protocol (:class:`Membership`, driven by ``tick``/``receive``/
``join``/``leave`` and returning datagrams and member events);
:mod:`~sprawl.gossip.messages` and :mod:`~sprawl.gossip.wire` define and
(de)serialise what travels in UDP datagrams; :mod:`~sprawl.gossip.broadcast`
is the retransmit-limited dissemination queue,
:mod:`~sprawl.gossip.suspicion` the Lifeguard suspicion timer and
:mod:`~sprawl.gossip.load` the per-partition rates in the gossiped load.  The
UDP adapter :mod:`~sprawl.gossip.udp` (with the saved incarnation of
:mod:`~sprawl.gossip.incarnation_file` and the port binding of
:mod:`~sprawl.gossip.peer_port`) is the only part that imports Twisted and
touches sockets, disk and time.
"""

from sprawl.gossip.membership import (
    Address,
    GossipConfig,
    Member,
    MemberEvent,
    Membership,
    Output,
)
from sprawl.gossip.wire import DecodeError

__all__ = ["Address", "DecodeError", "GossipConfig", "Member", "MemberEvent", "Membership", "Output"]
