"""The gossip protocol's messages, as typed msgspec structs.

Every message is a tagged, array-like struct, so on the wire it is a short
msgpack array whose first element is a small integer tag.  Field types carry
their limits (lengths, ranges) so the decoder rejects out-of-range input
before the protocol core ever sees it.

Failure detection (SWIM):

* :class:`Ping` -- direct probe; answered with :class:`Ack`.
* :class:`PingReq` -- ask a member to probe ``target`` for us; it relays the
  :class:`Ack`, or answers :class:`Nack` if the target stayed silent
  (Lifeguard uses missing nacks as a sign that *we* are the slow one).

Dissemination (piggybacked on every packet and gossiped):

* :class:`Alive`, :class:`Suspect`, :class:`Dead`, :class:`Leave` -- state
  updates about one member, ordered by incarnation number.

Anti-entropy:

* :class:`PushPull` -- a chunk of full member state, exchanged with a random
  member periodically and with the seeds on join.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

#: Member states as they travel on the wire (compact integers).
STATE_ALIVE = 0
STATE_SUSPECT = 1
STATE_DEAD = 2
STATE_LEFT = 3

MAX_NODE_ID = 128
MAX_HOST = 255
MAX_META_KEYS = 64
MAX_MEMBERS_PER_CHUNK = 512
MAX_CHUNKS = 4096

NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NODE_ID)]
OptNodeId = Annotated[str, msgspec.Meta(max_length=MAX_NODE_ID)]
Host = Annotated[str, msgspec.Meta(max_length=MAX_HOST)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Incarnation = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
WireState = Annotated[int, msgspec.Meta(ge=STATE_ALIVE, le=STATE_LEFT)]
WireAddr = tuple[Host, Port]
MetaKey = Annotated[str, msgspec.Meta(max_length=64)]
WireMeta = Annotated[dict[MetaKey, Any], msgspec.Meta(max_length=MAX_META_KEYS)]


class Ping(msgspec.Struct, tag=1, array_like=True, frozen=True, gc=False):
    """Direct probe.  ``target`` names the node the sender expects at the
    address (empty: whoever is there), so a restarted process on a reused
    port does not answer for someone else."""

    seq: Seq
    target: OptNodeId
    source: OptNodeId


class Ack(msgspec.Struct, tag=2, array_like=True, frozen=True, gc=False):
    """Answer to :class:`Ping` (or relayed answer to :class:`PingReq`)."""

    seq: Seq
    source: OptNodeId


class Nack(msgspec.Struct, tag=3, array_like=True, frozen=True, gc=False):
    """An intermediary's "the target did not answer me" for a :class:`PingReq`."""

    seq: Seq


class PingReq(msgspec.Struct, tag=4, array_like=True, frozen=True, gc=False):
    """Ask the receiver to probe ``target`` at ``target_addr`` on our behalf.

    ``seq`` is the requester's sequence number, echoed in the relayed
    :class:`Ack` or in a :class:`Nack` (sent only if ``nack`` is true).
    """

    seq: Seq
    target: NodeId
    target_addr: WireAddr
    source: OptNodeId
    nack: bool = True


class Alive(msgspec.Struct, tag=5, array_like=True, frozen=True, gc=False):
    """``node_id`` is alive at ``addr`` with ``meta``, as of ``incarnation``."""

    incarnation: Incarnation
    node_id: NodeId
    addr: WireAddr
    meta: WireMeta


class Suspect(msgspec.Struct, tag=6, array_like=True, frozen=True, gc=False):
    """``from_id`` suspects ``node_id`` (at ``incarnation``) has failed."""

    incarnation: Incarnation
    node_id: NodeId
    from_id: NodeId


class Dead(msgspec.Struct, tag=7, array_like=True, frozen=True, gc=False):
    """``from_id`` declares ``node_id`` (at ``incarnation``) dead."""

    incarnation: Incarnation
    node_id: NodeId
    from_id: NodeId


class Leave(msgspec.Struct, tag=8, array_like=True, frozen=True, gc=False):
    """``node_id`` leaves the cluster gracefully (left, not dead)."""

    incarnation: Incarnation
    node_id: NodeId


class MemberState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One member's full record inside a :class:`PushPull` chunk."""

    node_id: NodeId
    addr: WireAddr
    meta: WireMeta
    state: WireState
    incarnation: Incarnation


class PushPull(msgspec.Struct, tag=9, array_like=True, frozen=True, gc=False):
    """A chunk of the sender's full membership state.

    Full state rarely fits one datagram, so it travels as ``parts`` chunks
    (this one is number ``part``, from 0), each independently mergeable; the
    requester re-asks when a reply stays incomplete.  A request (``reply``
    false) is answered once per ``(sender, req)`` with the receiver's own
    state (``reply`` true).  ``join`` marks the exchange a node makes with its
    seeds when joining.
    """

    req: Seq
    join: bool
    reply: bool
    part: Annotated[int, msgspec.Meta(ge=0, lt=MAX_CHUNKS)]
    parts: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS)]
    members: Annotated[list[MemberState], msgspec.Meta(max_length=MAX_MEMBERS_PER_CHUNK)]


#: Every message that can appear in a packet.
Message = Ping | Ack | Nack | PingReq | Alive | Suspect | Dead | Leave | PushPull
