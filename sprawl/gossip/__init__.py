"""SWIM + Lifeguard gossip membership: the pure protocol core.

Nothing in this package imports Twisted.  :mod:`sprawl.gossip.membership`
holds the protocol (:class:`Membership`, driven by ``tick``/``receive``/
``join``/``leave`` and returning datagrams and member events);
:mod:`~sprawl.gossip.messages` and :mod:`~sprawl.gossip.wire` define and
(de)serialise what travels in UDP datagrams; :mod:`~sprawl.gossip.broadcast`
is the retransmit-limited dissemination queue and
:mod:`~sprawl.gossip.suspicion` the Lifeguard suspicion timer.  The UDP
adapter lives beside them and is the only part that touches sockets and time.
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
