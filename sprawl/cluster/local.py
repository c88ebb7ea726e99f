"""Metadata changes applied straight to the local broker, without Raft.

The seam :class:`sprawl.http.api.SprawlAPI` uses for topic and group
definitions.  A real node uses :class:`sprawl.cluster.control.ClusterControl`
(every change a Raft proposal); in-process tests of the HTTP layer use this
one.  Both pass the same contract tests (tests/test_metadata_seam.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed


class LocalControl:
    """Topic and group definitions changed directly on one broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def put_topic(self, name: str, body: dict[str, Any]) -> Deferred[tuple[Any, bool]]:
        """Create or update a topic; fires with (topic, created)."""
        return self.broker.put_topic(name, body)  # type: ignore[no-any-return]

    def ensure_topic(self, name: str) -> Deferred[Any]:
        """The topic, auto-created with defaults when allowed."""
        return self.broker.ensure_topic(name)  # type: ignore[no-any-return]

    def delete_topic(self, name: str) -> Deferred[None]:
        """Delete a topic and its data."""
        return self.broker.delete_topic(name)  # type: ignore[no-any-return]

    def put_group(self, topic: Any, group: str, body: dict[str, Any]) -> Deferred[tuple[Any, bool]]:
        """Create or update a group of an existing topic; fires with (group, created)."""
        return self.broker.put_group(topic, group, body)  # type: ignore[no-any-return]

    def delete_group(self, topic: Any, group: str) -> Deferred[None]:
        """Forget a group."""
        return self.broker.delete_group(topic, group)  # type: ignore[no-any-return]

    def wait_topic(self, name: str) -> Deferred[None]:
        """Fires once a topic ``name`` is created (committed to LMDB); cancel to stop waiting."""
        return self.broker.new_topics.wait(name)  # type: ignore[no-any-return]

    def linearizable(self) -> Deferred[None]:
        """One node is always up to date with itself."""
        return succeed(None)
