"""Integration: the data plane between real ``twistd sprawl`` processes on
127.0.0.1 -- consumer groups whose partitions are led by different nodes,
a lone node whose partitions grow to the replication factor as nodes join,
and publishes forwarded to partition leaders with every acks level.

Bounds: a cluster forms within :data:`FORM_BOUND` (as in the Raft tests); a
partition whose leader was killed has a new one within :data:`FAILOVER_BOUND`
-- the controller notices within its beat timeout (20 ticks of 0.1 s = 2 s)
or sooner when gossip declares the node dead, fences a majority and commits
the new epoch through Raft (milliseconds), with the rest left for scheduling
three processes on a shared 2-core machine.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness import FeedReader, NodeProcess, http_json, poll_until
from sprawl.cluster.placement import replicas as rendezvous

pytestmark = pytest.mark.integration

FORM_BOUND = 30.0
FAILOVER_BOUND = 10.0
REPLICATE_BOUND = 30.0


def _call(
    node: NodeProcess, method: str, path: str, body: Any = None, timeout: float = 15
) -> tuple[int, Any]:
    return http_json(node.url + path, method, body, timeout)


def _start(sprawl_nodes: Any, names: list[str], *extra: str) -> list[NodeProcess]:
    first = sprawl_nodes("--node-id", names[0], *extra, name=names[0])
    seeds = ("--seeds", f"127.0.0.1:{first.peer_port}")
    with ThreadPoolExecutor(max(len(names) - 1, 1)) as pool:
        rest = list(pool.map(lambda nm: sprawl_nodes("--node-id", nm, *seeds, *extra, name=nm), names[1:]))
    nodes = [first, *rest]
    _wait_voters(nodes, names)
    return nodes


def _wait_voters(nodes: list[NodeProcess], names: list[str]) -> None:
    def formed() -> bool:
        views = [_call(n, "GET", "/v1/cluster")[1] or {} for n in nodes]
        return all(sorted((v.get("raft") or {}).get("voters", [])) == sorted(names) for v in views)

    assert poll_until(formed, FORM_BOUND) is not None, "the cluster did not form"


def _hop_count(node: NodeProcess, hop: str) -> float:
    """How many ``hop`` hops the node's ``sprawl_replication_hop_seconds`` counted."""
    import urllib.request

    text = urllib.request.urlopen(node.url + "/metrics", timeout=15).read().decode()
    prefix = f'sprawl_replication_hop_seconds_count{{hop="{hop}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def _placement(node: NodeProcess, topic: str) -> dict[str, Any]:
    status, body = _call(node, "GET", "/v1/cluster/placement")
    assert status == 200, body
    return body["topics"][topic]  # type: ignore[no-any-return]


def _details(node: NodeProcess, topic: str) -> list[dict[str, Any]]:
    status, body = _call(node, "GET", f"/v1/topics/{topic}")
    return body["partition_details"] if status == 200 else []  # type: ignore[no-any-return]


def _drain(nodes: list[NodeProcess], topic: str, group: str, bound: int = 200) -> list[str]:
    """Pull and ack on the nodes in turn until a pull brings nothing; payloads in delivery order."""
    out: list[str] = []
    for i in range(bound):
        node = nodes[i % len(nodes)]
        status, body = _call(
            node, "POST", f"/v1/topics/{topic}/groups/{group}/pull", {"max": 7, "wait_ms": 300}
        )
        assert status == 200, body
        msgs = body["messages"]
        if not msgs:
            return out
        out += [m["payload"] for m in msgs]
        other = nodes[(i + 1) % len(nodes)]
        status, acked = _call(
            other, "POST", f"/v1/topics/{topic}/groups/{group}/ack", {"ack_ids": [m["ack_id"] for m in msgs]}
        )
        assert status == 200 and acked["acked"] == len(msgs), acked
    raise AssertionError("the group never ran dry")


def _grouped_topic(
    nodes: list[NodeProcess], topic: str, group: str, body: dict[str, Any], count: int
) -> None:
    """A 3-partition topic (leaders on two nodes at least) with ``group`` known to every
    node, and ``count`` messages ``job-I`` published through the nodes in turn."""
    assert _call(nodes[0], "PUT", f"/v1/topics/{topic}", {"partitions": 3, "replication_factor": 3})[0] == 201
    # nodes[1] answers the group's PUT from what it applied: a linearizable read
    # first makes it apply the topic (else 404 while it lags behind nodes[0])
    assert _call(nodes[1], "GET", f"/v1/topics/{topic}?consistency=linearizable")[0] == 200
    assert _call(nodes[1], "PUT", f"/v1/topics/{topic}/groups/{group}", body)[0] == 201

    def group_everywhere() -> bool:
        return all(_call(n, "GET", f"/v1/topics/{topic}/groups/{group}")[0] == 200 for n in nodes)

    assert poll_until(group_everywhere, 10) is not None
    leaders = {pl["leader"] for pl in _placement(nodes[2], topic).values()}
    assert len(leaders) >= 2, f"rendezvous placed every leader on one node: {leaders}"
    for i in range(count):
        msg = {"messages": [{"payload": f"job-{i}", "key": f"k{i}"}]}
        status, body = _call(nodes[i % 3], "POST", f"/v1/topics/{topic}/messages", msg)
        assert status == 200, body


def test_group_partitions_are_owned_by_their_leaders_and_survive_a_leader_kill(sprawl_nodes: Any) -> None:
    """Pulls and acks on any node deliver each message once, however the
    partitions' leaders are spread; once followers adopted the leaders'
    checkpoints, killing a partition leader redelivers nothing acked."""
    names = ["g0", "g1", "g2"]
    nodes = _start(sprawl_nodes, names)
    _grouped_topic(nodes, "jobs", "workers", {"start": "earliest"}, 60)
    first = _drain(nodes, "jobs", "workers")
    assert sorted(first) == sorted(f"job-{i}" for i in range(60)), "each message exactly once"

    def adopted() -> bool:
        """Every replica holds the owner's committed offsets (the checkpoints arrived)."""
        views = [_details(n, "jobs") for n in nodes]
        if not all(views):
            return False
        for p in range(3):
            owner = next((v[p] for v in views if v[p].get("role") == "leader"), None)
            if owner is None:
                return False
            want = owner["groups_committed"].get("workers")
            if want is None or any(v[p]["groups_committed"].get("workers") != want for v in views):
                return False
        return True

    assert poll_until(adopted, 15) is not None, [_details(n, "jobs") for n in nodes]
    victim_name = _placement(nodes[0], "jobs")["0"]["leader"]
    victim = nodes[names.index(victim_name)]
    survivors = [n for n in nodes if n is not victim]
    victim.kill()

    def published_after() -> bool:
        status, _ = _call(
            survivors[0],
            "POST",
            "/v1/topics/jobs/messages",
            # An id: a try that failed over mid-way may still have stored it,
            # and the retry must not publish a second "late" (docs/api.md).
            {"messages": [{"payload": "late", "key": "k0", "id": "late-after-kill"}]},
        )
        return status == 200

    assert poll_until(published_after, FAILOVER_BOUND) is not None
    again = _drain(survivors, "jobs", "workers")
    assert again == ["late"], f"acked messages delivered again after the failover: {again}"


def test_group_leases_are_extended_at_their_owners_from_any_node(sprawl_nodes: Any) -> None:
    """Leases of partitions led by different nodes, extended through a node that
    owns only some of them (the others over the ``group_extend`` RPC), are not
    redelivered at their old deadline and are acked after it; extending them once
    acked is 404 ``lease_not_found``."""
    names = ["e0", "e1", "e2"]
    nodes = _start(sprawl_nodes, names)
    _grouped_topic(nodes, "long", "slow", {"start": "earliest", "ack_deadline_ms": 1500}, 12)
    leased: list[dict[str, Any]] = []
    for _ in range(50):
        if len(leased) == 12:
            break
        status, body = _call(
            nodes[0], "POST", "/v1/topics/long/groups/slow/pull", {"max": 12, "wait_ms": 200}
        )
        assert status == 200, body
        leased += body["messages"]
    assert sorted(m["payload"] for m in leased) == sorted(f"job-{i}" for i in range(12))
    assert len({m["partition"] for m in leased}) >= 2
    ids = [m["ack_id"] for m in leased]
    status, body = _call(
        nodes[2], "POST", "/v1/topics/long/groups/slow/extend", {"ack_ids": ids, "extend_ms": 120_000}
    )
    assert status == 200 and body["extended"] == 12 and body["refused"] == {}, body
    # Each node waits 2.5 s for a message: the old deadlines (1.5 s) pass meanwhile.
    for n in nodes:
        status, body = _call(n, "POST", "/v1/topics/long/groups/slow/pull", {"max": 12, "wait_ms": 2500})
        assert status == 200 and body["messages"] == [], "an extended lease was redelivered"
    status, body = _call(nodes[1], "POST", "/v1/topics/long/groups/slow/ack", {"ack_ids": ids})
    assert status == 200 and body["acked"] == 12, body
    status, body = _call(nodes[0], "POST", "/v1/topics/long/groups/slow/extend", {"ack_ids": ids})
    assert (status, body["error"]["code"]) == (404, "lease_not_found"), body


def test_a_lone_node_grows_its_partitions_to_the_replication_factor(sprawl_nodes: Any) -> None:
    """A topic made on a one-node cluster (replication factor 3, one replica
    possible) gets two more replicas when two nodes join; they copy what the
    first node acknowledged alone, which stays readable after it is killed."""
    first = sprawl_nodes("--node-id", "solo", name="solo")
    assert _call(first, "PUT", "/v1/topics/grow", {"partitions": 2})[0] == 201
    assert all(pl["replicas"] == ["solo"] for pl in _placement(first, "grow").values())
    for i in range(20):
        status, body = _call(
            first, "POST", "/v1/topics/grow/messages", {"messages": [{"payload": f"m{i}", "key": f"k{i}"}]}
        )
        assert status == 200 and body["stored"] == "lmdb", body
    seeds = ("--seeds", f"127.0.0.1:{first.peer_port}")
    others = [sprawl_nodes("--node-id", nm, *seeds, name=nm) for nm in ("j1", "j2")]
    nodes = [first, *others]
    _wait_voters(nodes, ["solo", "j1", "j2"])

    def replicated() -> bool:
        pls = _placement(first, "grow")
        if not all(len(pl["replicas"]) == 3 for pl in pls.values()):
            return False
        views = [_details(n, "grow") for n in nodes]
        return all(
            v and all(d["log_end"] == d["high_watermark"] == views[0][p]["log_end"] for p, d in enumerate(v))
            for v in views
        )

    assert poll_until(replicated, REPLICATE_BOUND) is not None, [_details(n, "grow") for n in nodes]
    first.kill()

    def all_readable() -> bool:
        status, body = _call(others[0], "GET", "/v1/topics/grow/messages?from=earliest&limit=100")
        return status == 200 and sorted(m["payload"] for m in body["messages"]) == sorted(
            f"m{i}" for i in range(20)
        )

    assert poll_until(all_readable, FAILOVER_BOUND) is not None
    status, body = _call(others[1], "POST", "/v1/topics/grow/messages", {"messages": [{"payload": "after"}]})
    assert status == 200 and body["stored"] == "quorum", body


def test_publishes_are_forwarded_to_leaders_with_every_acks_level(sprawl_nodes: Any) -> None:
    """A node that leads none of a topic's partitions forwards each message
    to its partition's leader; ``acks`` says what the answer waited for, and a
    repeated id gets its first offset back through the forwarding."""
    names = ["f0", "f1", "f2"]
    nodes = _start(sprawl_nodes, names)
    status, _ = _call(nodes[0], "PUT", "/v1/topics/fwd", {"partitions": 1, "replication_factor": 2})
    assert status == 201
    pl = _placement(nodes[0], "fwd")["0"]
    assert len(pl["replicas"]) == 2
    outsider = next(n for n, nm in zip(nodes, names, strict=True) if nm not in pl["replicas"])
    follower = next(
        n for n, nm in zip(nodes, names, strict=True) if nm in pl["replicas"] and nm != pl["leader"]
    )
    expect = {"quorum": "quorum", "leader": "lmdb", "none": "pending"}
    offsets = []
    for node in (outsider, follower):
        for acks, stored in expect.items():
            status, body = _call(
                node, "POST", "/v1/topics/fwd/messages", {"messages": [{"payload": acks}], "acks": acks}
            )
            assert status == 200 and body["stored"] == stored, body
            offsets += body["offsets"]
    assert len(set(offsets)) == len(offsets)
    status, a = _call(
        outsider, "POST", "/v1/topics/fwd/messages", {"messages": [{"payload": "x", "id": "once"}]}
    )
    status2, b = _call(
        follower, "POST", "/v1/topics/fwd/messages", {"messages": [{"payload": "x", "id": "once"}]}
    )
    assert status == status2 == 200 and a["offsets"] == b["offsets"] and b["duplicates"] == [True], (a, b)

    status, _ = _call(nodes[0], "PUT", "/v1/topics/eph", {"storage": "ephemeral", "replication_factor": 3})
    assert status == 201
    status, body = _call(outsider, "POST", "/v1/topics/eph/messages", {"messages": [{"payload": "e"}]})
    assert status == 200 and body["stored"] == "quorum", body  # replicated: stored on a majority

    def outsider_reads_all() -> bool:
        status, body = _call(outsider, "GET", "/v1/topics/fwd/messages?from=earliest&limit=100")
        return status == 200 and len(body["messages"]) == 7

    assert poll_until(outsider_reads_all, 10) is not None
    status, cluster = _call(outsider, "GET", "/v1/cluster")
    # its own three acks levels and the id
    assert cluster["partitions"]["forwarded"] >= 4, cluster["partitions"]
    # ... each timed as a hop (issue 16): forwarded there, a majority reached on the leader
    assert _hop_count(outsider, "forward") >= 4
    leader = next(n for n, nm in zip(nodes, names, strict=True) if nm == pl["leader"])
    assert _hop_count(leader, "quorum") >= 4

    # dead letters go through the dead-letter topic's leader like any publish
    assert _call(nodes[0], "PUT", "/v1/topics/dlq", {"replication_factor": 3})[0] == 201
    assert _call(nodes[0], "PUT", "/v1/topics/work", {"partitions": 2, "replication_factor": 3})[0] == 201
    group = {"start": "earliest", "max_deliveries": 1, "dead_letter_topic": "dlq"}
    assert _call(nodes[0], "PUT", "/v1/topics/work/groups/g", group)[0] == 201
    for i in range(4):
        assert (
            _call(
                nodes[i % 3],
                "POST",
                "/v1/topics/work/messages",
                {"messages": [{"payload": f"bad-{i}", "key": f"k{i}"}]},
            )[0]
            == 200
        )

    def pulled_and_nacked() -> bool:
        st, got = _call(nodes[1], "POST", "/v1/topics/work/groups/g/pull", {"max": 10, "wait_ms": 200})
        if st == 200 and got["messages"]:
            _call(
                nodes[2],
                "POST",
                "/v1/topics/work/groups/g/nack",
                {"ack_ids": [m["ack_id"] for m in got["messages"]]},
            )
        views = [_call(n, "GET", "/v1/topics/dlq/messages?from=earliest&limit=100") for n in nodes]
        return all(st == 200 and len(b["messages"]) == 4 for st, b in views)

    assert poll_until(pulled_and_nacked, 15) is not None

    # a replicated topic deleted and made again starts empty everywhere
    assert _call(follower, "DELETE", "/v1/topics/fwd")[0] == 204
    assert _call(outsider, "PUT", "/v1/topics/fwd", {"replication_factor": 2})[0] == 201
    status, body = _call(outsider, "POST", "/v1/topics/fwd/messages", {"messages": [{"payload": "again"}]})
    assert status == 200 and body["offsets"] == [1], body  # offset 0 is the new leader's epoch marker

    def only_the_new_message() -> bool:
        views = [_call(n, "GET", "/v1/topics/fwd/messages?from=earliest&limit=100") for n in nodes]
        return all(st == 200 and [m["payload"] for m in b["messages"]] == ["again"] for st, b in views)

    assert poll_until(only_the_new_message, 10) is not None


def test_a_websocket_group_consumer_gets_every_partition_whoever_leads_it(sprawl_nodes: Any) -> None:
    """A WebSocket in group mode on one node is fed from every partition's
    leader (group state lives with each leader), each message once; its
    leases are acked over HTTP on another node, at each partition's owner."""
    names = ["w0", "w1", "w2"]
    nodes = _start(sprawl_nodes, names)
    assert _call(nodes[0], "PUT", "/v1/topics/wsg", {"partitions": 3, "replication_factor": 3})[0] == 201
    assert _call(nodes[0], "PUT", "/v1/topics/wsg/groups/g", {"start": "earliest"})[0] == 201
    leaders = {pl["leader"] for pl in _placement(nodes[0], "wsg").values()}
    assert len(leaders) >= 2, f"rendezvous placed every leader on one node: {leaders}"
    # the group is applied on every node a moment after the answer on the first
    assert poll_until(lambda: _call(nodes[1], "GET", "/v1/topics/wsg/groups/g")[0] == 200, 10) is not None
    reader = FeedReader(nodes[1].http_port, "/v1/topics/wsg/ws?group=g", websocket=True)
    try:
        for i in range(30):
            msg = {"messages": [{"payload": f"w-{i}", "key": f"k{i}"}]}
            assert _call(nodes[i % 3], "POST", "/v1/topics/wsg/messages", msg)[0] == 200
        assert poll_until(lambda: len(reader.received()) >= 30, 20) is not None, (
            reader.status,
            len(reader.received()),
        )
        got = reader.received()
        assert sorted(m["payload"] for m in got) == sorted(f"w-{i}" for i in range(30))
        assert len({m["partition"] for m in got}) == 3
        status, acked = _call(
            nodes[2], "POST", "/v1/topics/wsg/groups/g/ack", {"ack_ids": [m["ack_id"] for m in got]}
        )
        assert status == 200 and acked["acked"] == 30, acked
    finally:
        reader.close()


def test_a_joining_node_takes_its_share_of_replicas(sprawl_nodes: Any) -> None:
    """When a fourth node joins, every partition moves to the replica set
    rendezvous hashing gives over the four nodes -- the new node gains the
    partitions it ranks high for (added first, a replica dropped only once the
    goal's replicas hold every committed record) -- and every acknowledged
    message is on every new replica."""
    names = ["s0", "s1", "s2"]
    nodes = _start(sprawl_nodes, names)
    status, _ = _call(nodes[0], "PUT", "/v1/topics/spread", {"partitions": 6, "replication_factor": 2})
    assert status == 201
    for i in range(60):
        msg = {"messages": [{"payload": f"s-{i}", "key": f"k{i}"}]}
        assert _call(nodes[i % 3], "POST", "/v1/topics/spread/messages", msg)[0] == 200
    assert not any("s3" in pl["replicas"] for pl in _placement(nodes[0], "spread").values())
    new = sprawl_nodes("--node-id", "s3", "--seeds", f"127.0.0.1:{nodes[0].peer_port}", name="s3")
    everyone = [*nodes, new]

    goal = {str(p): set(rendezvous("spread", p, ["s0", "s1", "s2", "s3"], 2)) for p in range(6)}
    assert any("s3" in g for g in goal.values())

    def moved() -> bool:
        pls = _placement(nodes[1], "spread")
        return {p: set(pl["replicas"]) for p, pl in pls.items()} == goal

    assert poll_until(moved, REPLICATE_BOUND) is not None, _placement(nodes[1], "spread")
    pls = _placement(nodes[1], "spread")

    def settled() -> bool:
        """Every replica holds its partition's log up to the leader's end."""
        for p, pl in pls.items():
            views = {
                nm: _details(n, "spread") for nm, n in zip(["s0", "s1", "s2", "s3"], everyone, strict=True)
            }
            ends = [views[r][int(p)]["log_end"] if views[r] else -1 for r in pl["replicas"]]
            hws = [views[r][int(p)]["high_watermark"] if views[r] else -2 for r in pl["replicas"]]
            if len(set(ends)) != 1 or ends != hws:
                return False
        return True

    assert poll_until(settled, REPLICATE_BOUND) is not None
    status, body = _call(new, "GET", "/v1/topics/spread/messages?from=earliest&limit=1000")
    assert status == 200 and sorted(m["payload"] for m in body["messages"]) == sorted(
        f"s-{i}" for i in range(60)
    )


def test_a_topic_created_on_one_node_is_served_through_another_at_once(sprawl_nodes: Any) -> None:
    """Read-your-writes for metadata from any entry node: a topic created on
    one node takes a publish (and a read) through another node at once, even
    while its partition's leader has not applied the creation yet.  The leader
    is held back on purpose -- stopped (SIGSTOP) while the topic is created and
    the publish is forwarded to it, continued once the entry node has
    forwarded -- so the forwarded publish reaches it before the creation is
    applied there (its Raft log is fsynced first): the entry node waits for
    the leader instead of answering 404 ``topic_not_found``.  50 topics, 50
    publishes; every other topic has one replica, on the held-back node, and
    is also read through the entry node (a forwarded fetch) once the entry
    node knows it."""
    names = ["r0", "r1", "r2"]
    nodes = _start(sprawl_nodes, names)
    by_name = dict(zip(names, nodes, strict=True))
    status, view = _call(nodes[0], "GET", "/v1/cluster")
    raft_leader = view["raft"]["leader"]
    # the lagging partition leader: not the Raft leader (the other two commit without it)
    lagging = next(nm for nm in names if nm != raft_leader)
    creator, entry = (by_name[nm] for nm in names if nm != lagging)
    lag = by_name[lagging]
    topics = [t for t in (f"race-{i}" for i in range(10_000)) if rendezvous(t, 0, names, 3)[0] == lagging][
        :50
    ]
    answers: list[tuple[str, str, int, Any]] = []

    def forwarded() -> int:
        st, body = _call(entry, "GET", "/v1/cluster")
        return int(body["partitions"]["forwarded"]) if st == 200 else -1

    with ThreadPoolExecutor(2) as pool:
        for i, topic in enumerate(topics):
            rf = 3 if i % 2 == 0 else 1
            before = forwarded()
            lag.signal(signal.SIGSTOP)
            try:
                status, body = _call(creator, "PUT", f"/v1/topics/{topic}", {"replication_factor": rf})
                assert status == 201, body
                assert _placement(creator, topic)["0"]["leader"] == lagging
                read = None
                if rf == 1:  # entry holds no replica: once it knows the topic, a read is forwarded too
                    assert (
                        poll_until(lambda t=topic: _call(entry, "GET", f"/v1/topics/{t}")[0] == 200, 30)
                        is not None
                    )
                    read = pool.submit(
                        _call, entry, "GET", f"/v1/topics/{topic}/messages?from=earliest", None, 30
                    )
                msg = {"messages": [{"payload": topic, "id": f"{topic}-m"}]}
                publish = pool.submit(_call, entry, "POST", f"/v1/topics/{topic}/messages", msg, 30)
                assert poll_until(lambda b=before: forwarded() > b, 30, step=0.02) is not None, (
                    f"{topic}: the entry node did not forward the publish"
                )
            finally:
                lag.signal(signal.SIGCONT)
            answers.append((topic, "publish", *publish.result(60)))
            if read is not None:
                answers.append((topic, "read", *read.result(60)))
    bad = [a for a in answers if a[2] != 200]
    assert not bad, f"{len(bad)} of {len(answers)} requests refused, first {bad[:3]}"
    assert len(answers) == 75
