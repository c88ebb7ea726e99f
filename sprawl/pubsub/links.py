"""What the broker asks of the cluster layer above it, bound once that layer exists.

The cluster's parts (control, data plane, group routes, the Raft-replicated
remote log) are built on the broker, so the broker cannot be handed them at
construction.  The composition root builds one :class:`ClusterLinks` first,
gives it to the broker's constructor, and binds the cluster's parts into it
once they exist (:meth:`ClusterLinks.bind`).  Unbound, the broker does the
work itself: it creates topics, publishes into its own partitions and owns
the group state of every partition -- a lone broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sprawl.interfaces import GroupOwner, RecordPublisher, TopicCreator
    from sprawl.storage.remote_log import RemoteLog


class ClusterLinks:
    """The broker's links upward: topic creation, publish routing, group
    ownership and the shared remote-segment list (each None until bound)."""

    def __init__(self, remote_log: RemoteLog | None = None) -> None:
        self.creator: TopicCreator | None = None
        self.publisher: RecordPublisher | None = None
        self.group_owner: GroupOwner | None = None
        #: Where the partitions' shared remote-segment lists live
        #: (:mod:`sprawl.storage.remote_log`); None: nothing moves to or is
        #: trimmed from S3 (a cluster node until its data plane is up).
        self.remote_log = remote_log

    def bind(
        self,
        *,
        creator: TopicCreator | None = None,
        publisher: RecordPublisher | None = None,
        group_owner: GroupOwner | None = None,
    ) -> None:
        """Route auto-creation, the broker's own publishes and group ownership
        through the cluster (each one given; the others stay as they are)."""
        if creator is not None:
            self.creator = creator
        if publisher is not None:
            self.publisher = publisher
        if group_owner is not None:
            self.group_owner = group_owner

    def bind_remote_log(self, remote_log: RemoteLog | None) -> None:
        """Where the shared remote-segment lists live from now on (None: nowhere yet)."""
        self.remote_log = remote_log
