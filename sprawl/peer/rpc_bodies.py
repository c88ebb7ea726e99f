"""The shapes of the cluster's peer RPC bodies (``publish``, ``fetch``,
``partition_status``, ``group_pull``, ``group_settle``, ``group_describe``,
``group_extend``;
the handlers live in :mod:`sprawl.cluster.routing`,
:mod:`sprawl.cluster.dataplane` and :mod:`sprawl.cluster.group_routes`).
Pure: msgspec types only.

:class:`~sprawl.peer.rpc.PeerRPC` converts every request body to its
method's type before the handler runs, so a body of the wrong shape is a 400
``bad_request`` answer -- never a ``KeyError`` in a handler.  Fields a type
does not name are let through untouched (a newer peer may send more); the
handlers read the body as the map it arrived as.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

TopicName = Annotated[str, msgspec.Meta(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=249)]
Partition = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
#: A record as :func:`sprawl.log.record.pack_record` sends it.
PackedRecord = tuple[
    Int64,
    Int64,
    Int64,
    Text | None,
    str | None,
    Annotated[dict[str, str], msgspec.Meta(max_length=1024)] | None,
    bytes,
    bool,
    bool,
]


class PublishBody(msgspec.Struct):
    """``publish``: records for one partition, forwarded to its leader."""

    topic: TopicName
    partition: Partition
    acks: Literal["quorum", "leader", "none"]
    records: Annotated[list[PackedRecord], msgspec.Meta(min_length=1, max_length=100_000)]
    named: Annotated[list[Text], msgspec.Meta(max_length=100_000)] = []


class FetchBody(msgspec.Struct):
    """``fetch``: a read of one partition at a node that holds it."""

    topic: TopicName
    partition: Partition
    start: NonNegative | Literal["earliest", "latest"] | None = None
    from_time: Int64 | None = None
    limit: Int64 | None = None
    wait_ms: Int64 | None = None
    #: Bytes of records the caller wants at most (the holder caps it at BATCH_BYTES).
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


class StatusBody(msgspec.Struct):
    """``partition_status``: the leader's view of one partition."""

    topic: TopicName
    partition: Partition


class GroupPullBody(msgspec.Struct):
    """``group_pull``: lease messages of a group at the owner of some partitions."""

    topic: TopicName
    group: GroupName
    max: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    partitions: Annotated[list[Partition], msgspec.Meta(max_length=65536)]
    #: Message bytes the caller wants at most (the owner caps it at BATCH_BYTES).
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


class GroupSettleBody(msgspec.Struct):
    """``group_settle``: ack (or nack) deliveries at their owner."""

    topic: TopicName
    group: GroupName
    ack_ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=100_000)]
    nack: bool = False
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0
    #: The leases were never seen by a consumer: take them back without
    #: counting an attempt (sent with ``nack`` too, for nodes that predate it).
    unseen: bool = False


class GroupExtendBody(msgspec.Struct):
    """``group_extend``: extend leases at their owner (its own method, so a node
    that predates it refuses it rather than reading it as an ack)."""

    topic: TopicName
    group: GroupName
    ack_ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=100_000)]
    extend_ms: Annotated[int, msgspec.Meta(ge=1, le=43_200_000)]


class GroupDescribeBody(msgspec.Struct):
    """``group_describe``: the owner's cursors of some partitions."""

    topic: TopicName
    group: GroupName
    partitions: Annotated[list[Partition], msgspec.Meta(max_length=65536)]


#: Each method's body type.
BODIES: dict[str, type[msgspec.Struct]] = {
    "publish": PublishBody,
    "fetch": FetchBody,
    "partition_status": StatusBody,
    "group_pull": GroupPullBody,
    "group_settle": GroupSettleBody,
    "group_describe": GroupDescribeBody,
    "group_extend": GroupExtendBody,
}
