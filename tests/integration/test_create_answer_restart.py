"""A topic creation (and deletion) is answered once its Raft entry is
committed and applied in memory, before the broker's own write of it is on
disk (issue 23, create23).  What makes that answer honest: the entry is on
disk on a majority, and a restart applies it again.  So: ``kill -9`` every
node right after the answers, start them again on their data dirs, and the
created topics are there and the deleted one is not, on every node."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness import NodeCluster, http_json, poll_until

pytestmark = pytest.mark.integration

BOUND = 60.0


def test_topics_answered_just_before_every_node_is_killed_are_there_after_restart(
    cluster_factory: Callable[..., NodeCluster],
) -> None:
    """Creates (and one delete) answered on a follower, then all three nodes
    killed at once without a pause: after a restart every node lists exactly
    what the answers said."""
    c = cluster_factory(3, "k")
    leader = c.raft_leader()
    entry = next(n for n in c.names if n != leader)  # a follower proposes: its own apply answers
    for name in ("gone", "a", "b", "c"):
        status, body = http_json(c.url(entry) + f"/v1/topics/{name}", "PUT", {}, timeout=15)
        assert status == 201, body
    status, body = http_json(c.url(entry) + "/v1/topics/gone", "DELETE", timeout=15)
    assert status == 204, body
    for n in [entry, *(x for x in c.names if x != entry)]:
        c.kill(n)
    for n in c.names:
        c.restart(n)
    assert poll_until(c.formed, BOUND) is not None, (c.raft_views(), {n: c.get(n, "/readyz") for n in c.up()})

    def names_on(n: str) -> set[str]:
        status, body = c.get(n, "/v1/topics")
        return {t["name"] for t in body["topics"]} if status == 200 else set()

    want = {"a", "b", "c"}

    def all_there() -> bool:
        return all(names_on(n) == want for n in c.names)

    assert poll_until(all_there, BOUND) is not None, {n: sorted(names_on(n)) for n in c.names}
    for n in c.names:
        assert c.get(n, "/v1/topics/gone")[0] == 404
