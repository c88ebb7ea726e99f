"""The replicated cluster metadata state machine (:mod:`sprawl.cluster.metadata`): pure."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.metadata import Metadata, decode_command, encode_command


def err(result: dict[str, Any]) -> tuple[str, int]:
    """The (code, status) of an error result."""
    assert set(result) == {"error"}, result
    e = result["error"]
    assert isinstance(e["message"], str) and e["message"]
    return e["code"], e["status"]


def topic(name: str = "t", idx: int = 1, **config: Any) -> tuple[Metadata, dict[str, Any]]:
    """A Metadata holding topic ``name`` created at ``idx`` with ``config``, and the result."""
    m = Metadata()
    r = m.apply(idx, {"op": "put_topic", "name": name, "config": config})
    return m, r


def test_put_topic_creates_with_placement() -> None:
    """A new topic is created with its known config fields only, one placement per partition
    (replicas/leader from the proposal, epoch 1), and its creation index."""
    m = Metadata()
    r = m.apply(
        7,
        {
            "op": "put_topic",
            "name": "t",
            "config": {"partitions": 2, "storage": "memory", "local_path": "/x"},
            "placement": [["a", "b"], None],
        },
    )
    assert r == {"created": True, "created_index": 7}
    assert m.topics["t"] == {
        "config": {"partitions": 2, "storage": "memory"},
        "created_index": 7,
        "groups": {},
    }
    assert m.placement["t"] == [
        {"replicas": ["a", "b"], "leader": "a", "epoch": 1},
        {"replicas": [], "leader": "", "epoch": 1},
    ]
    assert m.applied == 7


def test_put_topic_update_grows_partitions() -> None:
    """Updating an existing topic replaces its config, keeps the creation index and
    places only the added partitions (existing placements untouched)."""
    m, _ = topic(partitions=1, retention_ms=5)
    m.placement["t"][0]["epoch"] = 4
    r = m.apply(
        9, {"op": "put_topic", "name": "t", "config": {"partitions": 3}, "placement": [[], ["x"], ["y"]]}
    )
    assert r == {"created": False, "created_index": 1}
    assert m.topics["t"]["config"] == {"partitions": 3}
    assert [p["replicas"] for p in m.placement["t"]] == [[], ["x"], ["y"]]
    assert m.placement["t"][0]["epoch"] == 4


def test_put_topic_if_absent_leaves_existing() -> None:
    """if_absent on an existing topic changes nothing and reports the original creation."""
    m, _ = topic(partitions=2)
    before = m.copy()
    r = m.apply(5, {"op": "put_topic", "name": "t", "config": {"partitions": 1}, "if_absent": True})
    assert r == {"created": False, "created_index": 1}
    assert m == before


def test_partitions_cannot_shrink() -> None:
    """Lowering partitions is refused with 409 partitions_shrink and leaves the state alone."""
    m, _ = topic(partitions=3)
    before = m.copy()
    assert err(m.apply(2, {"op": "put_topic", "name": "t", "config": {"partitions": 2}})) == (
        "partitions_shrink",
        409,
    )
    assert m == before


def test_partitions_shrink_against_default() -> None:
    """A config without partitions means 1, so going from 2 to unspecified is a shrink."""
    m, _ = topic(partitions=2)
    assert err(m.apply(2, {"op": "put_topic", "name": "t", "config": {}}))[0] == "partitions_shrink"


def test_storage_cannot_change() -> None:
    """Changing storage (including implicitly from the durable default) is 409 storage_change."""
    m, _ = topic(storage="memory")
    before = m.copy()
    assert err(m.apply(2, {"op": "put_topic", "name": "t", "config": {}})) == ("storage_change", 409)
    assert err(m.apply(3, {"op": "put_topic", "name": "t", "config": {"storage": "durable"}})) == (
        "storage_change",
        409,
    )
    assert m == before


def test_delete_topic() -> None:
    """Deleting removes the topic and its placement; deleting a missing topic is 404."""
    m, _ = topic()
    assert m.apply(2, {"op": "delete_topic", "name": "t"}) == {"deleted": True}
    assert m.topics == {} and m.placement == {}
    assert err(m.apply(3, {"op": "delete_topic", "name": "t"})) == ("topic_not_found", 404)


def test_recreated_topic_starts_fresh() -> None:
    """A topic deleted and created again gets the new creation index, no old groups."""
    m, _ = topic()
    m.apply(2, {"op": "put_group", "topic": "t", "group": "g", "config": {}})
    m.apply(3, {"op": "delete_topic", "name": "t"})
    assert m.apply(4, {"op": "put_topic", "name": "t", "config": {}}) == {"created": True, "created_index": 4}
    assert m.topics["t"]["groups"] == {}
    assert len(m.placement["t"]) == 1


def test_groups() -> None:
    """put_group creates then updates (created flag); delete_group deletes, then 404s;
    a group on a missing topic is 404 topic_not_found."""
    m, _ = topic()
    assert m.apply(2, {"op": "put_group", "topic": "t", "group": "g", "config": {"a": 1}}) == {
        "created": True
    }
    assert m.apply(3, {"op": "put_group", "topic": "t", "group": "g", "config": {"a": 2}}) == {
        "created": False
    }
    assert m.topics["t"]["groups"] == {"g": {"a": 2}}
    assert err(m.apply(4, {"op": "put_group", "topic": "nope", "group": "g", "config": {}})) == (
        "topic_not_found",
        404,
    )
    assert m.apply(5, {"op": "delete_group", "topic": "t", "group": "g"}) == {"deleted": True}
    assert err(m.apply(6, {"op": "delete_group", "topic": "t", "group": "g"})) == ("group_not_found", 404)
    assert err(m.apply(7, {"op": "delete_group", "topic": "nope", "group": "g"})) == ("group_not_found", 404)


def test_put_node_and_lookup() -> None:
    """put_node registers/overwrites a node; node_name maps a raft id back to it."""
    m = Metadata()
    assert m.apply(1, {"op": "put_node", "node_id": "a", "raft_id": 3, "peer": "h:1"}) == {"ok": True}
    assert m.nodes["a"] == {"raft_id": 3, "peer": "h:1", "http": ""}
    m.apply(2, {"op": "put_node", "node_id": "a", "raft_id": 4})
    assert m.node_name(4) == "a"
    assert m.node_name(3) is None


def test_set_partition_epoch_fencing() -> None:
    """set_partition needs an epoch above the current one: equal or lower is 409
    stale_epoch and changes nothing; a higher one replaces replicas/leader/epoch."""
    m, _ = topic(partitions=2)
    cmd = {"op": "set_partition", "topic": "t", "partition": 1, "replicas": ["a", "b"], "leader": "b"}
    assert err(m.apply(2, {**cmd, "epoch": 1})) == ("stale_epoch", 409)
    assert m.apply(3, {**cmd, "epoch": 5}) == {"epoch": 5}
    assert m.placement["t"][1] == {"replicas": ["a", "b"], "leader": "b", "epoch": 5}
    before = m.copy()
    assert err(m.apply(4, {**cmd, "epoch": 4, "leader": "a"})) == ("stale_epoch", 409)
    assert err(m.apply(5, {**cmd, "epoch": 5, "leader": "a"})) == ("stale_epoch", 409)
    assert m == before


def test_a_load_move_goal_stays_until_replaced() -> None:
    """A set_partition with a goal keeps it through later commits without one
    (failovers, replica steps); a malformed goal changes nothing."""
    m, _ = topic(partitions=1)
    cmd = {"op": "set_partition", "topic": "t", "partition": 0, "replicas": ["a", "b"], "leader": "a"}
    assert m.apply(2, {**cmd, "epoch": 2, "goal": ["c", "b"]}) == {"epoch": 2}
    assert m.apply(3, {**cmd, "epoch": 3, "replicas": ["a", "b", "c"]}) == {"epoch": 3}
    assert m.placement["t"][0]["goal"] == ["c", "b"]
    before = m.copy()
    assert err(m.apply(4, {**cmd, "epoch": 4, "goal": []}))[0] == "malformed_command"
    assert m == before and m.placement["t"][0]["epoch"] == 3


def test_set_partitions_applies_each_item_as_a_set_partition() -> None:
    """A batch (a dead node's failovers) applies each item as its own
    set_partition: a stale, missing or malformed item is refused alone and
    changes nothing, the others apply; the result lists each item's result."""
    m, _ = topic(partitions=3)
    item = {"topic": "t", "replicas": ["a", "b"], "leader": "b"}
    items = [
        {**item, "partition": 0, "epoch": 2},
        {**item, "partition": 1, "epoch": 1},  # stale
        {**item, "partition": 2, "epoch": 3, "replicas": "ab"},  # malformed
        {**item, "partition": 7, "epoch": 2},  # no such partition
        "junk",
        {**item, "partition": 2, "epoch": 4},
    ]
    r = m.apply(2, {"op": "set_partitions", "items": items})
    results = r["results"]
    assert results[0] == {"epoch": 2} and results[5] == {"epoch": 4}
    assert [err(x)[0] for x in results[1:5]] == [
        "stale_epoch",
        "malformed_command",
        "partition_not_found",
        "malformed_command",
    ]
    assert [pl["epoch"] for pl in m.placement["t"]] == [2, 1, 4]
    assert m.placement["t"][0] == {"replicas": ["a", "b"], "leader": "b", "epoch": 2}


@pytest.mark.parametrize("items", [None, "x", {"topic": "t"}, [{}] * 16385])
def test_set_partitions_refuses_a_malformed_or_oversized_batch_whole(items: Any) -> None:
    """``items`` that is not a list, or longer than MAX_PARTITION_BATCH, is 400 and changes nothing."""
    m, _ = topic(partitions=1)
    before = m.copy()
    assert err(m.apply(2, {"op": "set_partitions", "items": items})) == ("malformed_command", 400)
    assert m == before


@pytest.mark.parametrize(("t", "p"), [("t", 2), ("t", -1), ("nope", 0)])
def test_set_partition_missing(t: str, p: int) -> None:
    """A partition out of range (or of a missing topic) is 404 partition_not_found."""
    m, _ = topic(partitions=2)
    cmd = {"op": "set_partition", "topic": t, "partition": p, "replicas": [], "leader": "", "epoch": 9}
    assert err(m.apply(2, cmd)) == ("partition_not_found", 404)


@pytest.mark.parametrize("op", ["bogus", "", None, 5, "_place", "__init__"])
def test_unknown_op(op: Any) -> None:
    """An unknown or non-string op (including names of private methods) is 400 unknown_command."""
    m, _ = topic()
    before = m.copy()
    assert err(m.apply(2, {"op": op, "name": "t"})) == ("unknown_command", 400)
    assert m == before


def test_missing_op() -> None:
    """A command without an op is an unknown command, not an exception."""
    assert err(Metadata().apply(1, {}))[0] == "unknown_command"


def row(base: int, last: int, epoch: int = 1, key: str = "") -> list[Any]:
    """A remote segment row (see sprawl.log.manifest.RemoteObject)."""
    k = key or f"pre/t/0/{base:020d}-{last:020d}.t1.e{epoch}"
    return [base, last, 10, 1, 2, k + ".seg", 12, "ab", k + ".idx", 3, "cd", epoch]


def remote(op: str, idx: int = 1, epoch: int = 1, p: int = 0, **kw: Any) -> dict[str, Any]:
    return {"op": op, "topic": "t", "partition": p, "created_index": idx, "epoch": epoch, **kw}


def test_remote_segments_change_only_by_the_current_leader_and_never_leave_a_hole() -> None:
    """The shared remote list of a partition grows only by its leader in the
    current epoch, for this life of the topic, exactly at its end; retention
    trims it and names what it dropped; it goes with the topic."""
    m, _ = topic(partitions=2)
    assert m.remote_state("t", 0).objects == ()
    assert m.apply(2, remote("remote_add", segments=[row(0, 9), row(10, 19)])) == {"end": 20}
    assert err(m.apply(3, remote("remote_add", epoch=2, segments=[row(20, 29)]))) == ("stale_epoch", 409)
    assert err(m.apply(3, remote("remote_add", idx=9, segments=[row(20, 29)]))) == ("topic_not_found", 404)
    assert err(m.apply(3, remote("remote_add", p=2, segments=[row(20, 29)]))) == ("partition_not_found", 404)
    assert err(m.apply(3, remote("remote_add", segments=[row(21, 29)])))[0] == "remote_gap"
    assert err(m.apply(3, remote("remote_add", segments=[row(15, 29)])))[0] == "remote_gap"
    assert [o.last for o in m.remote_state("t", 0).objects] == [9, 19]
    m.apply(
        4, {"op": "set_partition", "topic": "t", "partition": 0, "epoch": 2, "leader": "b", "replicas": ["b"]}
    )
    assert err(m.apply(5, remote("remote_add", segments=[row(20, 29)]))) == ("stale_epoch", 409)
    assert m.apply(5, remote("remote_add", epoch=2, segments=[row(20, 29, epoch=2)])) == {"end": 30}
    r = m.apply(6, remote("remote_trim", epoch=2, start=15))
    assert r == {"start": 15, "dropped": [row(0, 9)]}
    state = m.remote_state("t", 0)
    assert (state.start, [o.base for o in state.objects]) == (15, [10, 20])
    assert m.apply(7, remote("remote_trim", epoch=2, start=3))["dropped"] == [], "the start never moves back"
    assert err(m.apply(8, remote("remote_add", epoch=2, segments=[row(40, 49)])))[0] == "remote_gap"
    assert Metadata.restore(m.snapshot()) == m
    m.apply(9, {"op": "delete_topic", "name": "t"})
    m.apply(10, {"op": "put_topic", "name": "t", "config": {}})
    assert m.remote_state("t", 0).objects == () and "t" not in m.remote


MALFORMED = [
    {"op": "put_topic"},
    {"op": "put_topic", "name": "t"},
    {"op": "put_topic", "name": "t", "config": 5},
    {"op": "put_topic", "name": "t", "config": None},
    {"op": "put_topic", "name": ["unhashable"], "config": {}},
    {"op": "delete_topic"},
    {"op": "put_group", "topic": "t", "group": "g"},
    {"op": "put_group", "topic": "t", "group": "g", "config": "ab"},
    {"op": "put_group", "topic": "t", "group": "g", "config": 3},
    {"op": "delete_group", "topic": "t"},
    {"op": "put_node", "node_id": "a"},
    {"op": "put_node", "node_id": "a", "raft_id": "x"},
    {"op": "set_partition", "topic": "t", "partition": "x", "epoch": 2, "replicas": [], "leader": ""},
    {"op": "set_partition", "topic": "t", "partition": 0, "epoch": 2, "replicas": 5, "leader": ""},
    {"op": "set_partition", "topic": "t", "partition": 0, "epoch": "late", "replicas": [], "leader": ""},
    {"op": "set_partition", "topic": "t", "partition": 0, "epoch": 2, "leader": ""},
    {"op": "remote_add", "topic": "t", "partition": 0, "created_index": 1, "epoch": 1},
    {"op": "remote_add", "topic": "t", "partition": 0, "created_index": 1, "epoch": 1, "segments": [[0, 9]]},
    {"op": "remote_add", "topic": "t", "partition": 0, "created_index": 1, "epoch": 1, "segments": "x"},
    {"op": "remote_add", "topic": "t", "partition": 0, "epoch": 1, "segments": []},
    {"op": "remote_trim", "topic": "t", "partition": 0, "created_index": 1, "epoch": 1},
    {"op": "remote_trim", "topic": "t", "partition": 0, "created_index": 1, "epoch": 1, "start": -5},
    {"op": "remote_trim", "topic": "t", "partition": 0, "created_index": 1, "epoch": "x", "start": 5},
]


@pytest.mark.parametrize("cmd", MALFORMED)
def test_malformed_command_is_an_error_result(cmd: dict[str, Any]) -> None:
    """A malformed command yields a 400 malformed_command result (never an exception)
    and leaves the state unchanged."""
    m, _ = topic()
    before = m.copy()
    assert err(m.apply(2, cmd)) == ("malformed_command", 400)
    assert m == before


PARTIAL = [
    pytest.param({"op": "put_topic", "name": "n", "config": {"partitions": "3"}}, id="create-partitions-str"),
    pytest.param({"op": "put_topic", "name": "n", "config": {}, "placement": 5}, id="create-placement-int"),
    pytest.param(
        {"op": "put_topic", "name": "t", "config": {"partitions": 3}, "placement": [None, None, 7]},
        id="update-placement-bad-entry",
    ),
]


@pytest.mark.parametrize("cmd", PARTIAL)
def test_malformed_put_topic_is_not_half_applied(cmd: dict[str, Any]) -> None:
    """A put_topic whose partitions/placement are malformed is an error result AND changes
    nothing: an error must not leave a topic whose config disagrees with its placement."""
    m, _ = topic(partitions=1)
    before = m.copy()
    assert err(m.apply(2, cmd)) == ("malformed_command", 400)
    assert m == before


def test_decode_command() -> None:
    """decode_command returns maps with a string op and None for anything else."""
    assert decode_command(encode_command({"op": "noop"})) == {"op": "noop"}
    for bad in (b"", b"\xc1", msgspec.msgpack.encode([1]), encode_command({"op": 1}), encode_command({})):
        assert decode_command(bad) is None


def test_snapshot_restore_round_trip() -> None:
    """restore(snapshot()) gives an equal state (topics, placement, nodes, applied)."""
    m, _ = topic(partitions=2, storage="memory")
    m.apply(2, {"op": "put_group", "topic": "t", "group": "g", "config": {"x": [1, 2]}})
    m.apply(3, {"op": "put_node", "node_id": "a", "raft_id": 1, "http": "h"})
    m.apply(
        4, {"op": "set_partition", "topic": "t", "partition": 0, "replicas": ["a"], "leader": "a", "epoch": 2}
    )
    r = Metadata.restore(m.snapshot())
    assert r == m
    assert r.applied == 4
    assert Metadata.restore(b"") == Metadata()
    assert Metadata() != m


def test_restore_refuses_foreign_bytes() -> None:
    """restore refuses a map that is not a version-1 metadata snapshot."""
    with pytest.raises(ValueError):
        Metadata.restore(encode_command({"v": 2}))
    with pytest.raises(ValueError):
        Metadata.restore(msgspec.msgpack.encode([1]))


# -- determinism ---------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
small = st.integers(-1, 4)
anything = st.one_of(st.none(), st.integers(-2, 5), st.text(max_size=2), st.lists(names, max_size=2))
commands = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("put_topic"),
            "name": names,
            "config": st.fixed_dictionaries(
                {},
                optional={
                    "partitions": st.integers(0, 4),
                    "storage": st.sampled_from(["durable", "memory"]),
                    "retention_ms": small,
                    "junk": small,
                },
            ),
        },
        optional={
            "if_absent": st.booleans(),
            "placement": st.lists(st.one_of(st.none(), st.lists(names, max_size=3)), max_size=4),
        },
    ),
    st.fixed_dictionaries({"op": st.just("delete_topic"), "name": names}),
    st.fixed_dictionaries(
        {"op": st.just("put_group"), "topic": names, "group": names, "config": st.dictionaries(names, small)}
    ),
    st.fixed_dictionaries({"op": st.just("delete_group"), "topic": names, "group": names}),
    st.fixed_dictionaries(
        {"op": st.just("put_node"), "node_id": names, "raft_id": small}, optional={"peer": names}
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("set_partition"),
            "topic": names,
            "partition": small,
            "epoch": small,
            "replicas": st.lists(names, max_size=3),
            "leader": names,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("set_partitions"),
            "items": st.lists(
                st.one_of(
                    anything,
                    st.fixed_dictionaries(
                        {
                            "topic": names,
                            "partition": small,
                            "epoch": small,
                            "replicas": st.lists(names, max_size=3),
                            "leader": names,
                        },
                        optional={"goal": anything},
                    ),
                ),
                max_size=4,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("remote_add"),
            "topic": names,
            "partition": small,
            "created_index": small,
            "epoch": small,
            "segments": st.lists(
                st.tuples(st.integers(0, 30), st.integers(0, 5)).map(
                    lambda bl: row(bl[0], bl[0] + bl[1], epoch=1)
                ),
                max_size=3,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("remote_trim"),
            "topic": names,
            "partition": small,
            "created_index": small,
            "epoch": small,
            "start": st.integers(-1, 40),
        }
    ),
    st.fixed_dictionaries({"op": st.sampled_from(["noop", "bogus"])}),
    st.dictionaries(st.sampled_from(["op", "name", "topic", "config", "epoch"]), anything),
    st.fixed_dictionaries(
        {
            "op": st.just("put_pipeline"),
            "name": names,
            "spec": st.fixed_dictionaries(
                {"source": names, "target": names},
                optional={
                    "filter": st.sampled_from(["payload.x", "((", None]),
                    "acks": st.sampled_from(["leader", "x"]),
                },
            ),
            "group_config": st.one_of(st.dictionaries(names, small), anything),
        }
    ),
    st.fixed_dictionaries({"op": st.just("delete_pipeline"), "name": st.one_of(names, anything)}),
)


def wire(cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The commands as a replica decodes them from log entries (None: not a command)."""
    out = []
    for c in cmds:
        d = decode_command(encode_command(c))
        if d is not None:
            out.append(d)
    return out


def replay(m: Metadata, cmds: list[dict[str, Any]], start: int = 1) -> list[dict[str, Any]]:
    return [m.apply(start + i, c) for i, c in enumerate(cmds)]


@given(st.lists(commands, max_size=25))
def test_same_log_same_state_and_results(cmds: list[dict[str, Any]]) -> None:
    """Two fresh replicas applying the same decoded log reach equal state and compute
    equal results; no command raises."""
    log = wire(cmds)
    a, b = Metadata(), Metadata()
    ra, rb = replay(a, log), replay(b, log)
    assert ra == rb
    assert a == b
    assert a.snapshot() == b.snapshot()


@given(st.lists(commands, max_size=25), st.integers(0, 25))
def test_snapshot_at_any_prefix_then_replay_equals_full_replay(cmds: list[dict[str, Any]], cut: int) -> None:
    """Restoring a snapshot taken after any prefix and replaying the rest gives the same
    state and the same results for the rest as replaying the whole log."""
    log = wire(cmds)
    cut = min(cut, len(log))
    full = Metadata()
    full_results = replay(full, log)
    part = Metadata()
    replay(part, log[:cut])
    restored = Metadata.restore(part.snapshot())
    assert restored.applied == part.applied
    rest = replay(restored, log[cut:], start=cut + 1)
    assert rest == full_results[cut:]
    assert restored == full
    assert restored.snapshot() == full.snapshot()


@given(st.lists(commands, max_size=25))
def test_every_reachable_state_makes_a_valid_snapshot(cmds: list[dict[str, Any]]) -> None:
    """Whatever commands a log holds, the state they make snapshots into bytes that
    check_snapshot accepts (a follower would otherwise refuse the leader's snapshot
    forever), and restoring them gives the same state."""
    from sprawl.cluster.metadata import check_snapshot

    m = Metadata()
    replay(m, wire(cmds))
    data = m.snapshot()
    check_snapshot(data, m.applied)
    assert Metadata.restore(data) == m


@pytest.mark.parametrize(
    "state",
    [
        {
            "v": 1,
            "applied": 1,
            "topics": {"../x": {"config": {}, "created_index": 1, "groups": {}}},
            "placement": {},
            "nodes": {},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {},
            "placement": {"t": [{"replicas": [], "leader": "", "epoch": 1}]},
            "nodes": {},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {},
            "placement": {},
            "nodes": {"n": {"raft_id": 0, "peer": "", "http": ""}},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {},
            "placement": {},
            "nodes": {"bad id": {"raft_id": 1, "peer": "", "http": ""}},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {"t": {"config": {"partitions": 0}, "created_index": 1, "groups": {}}},
            "placement": {},
            "nodes": {},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {"t": {"config": {"partitions": [1]}, "created_index": 1, "groups": {}}},
            "placement": {},
            "nodes": {},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {"t": {"config": {}, "created_index": 9, "groups": {}}},
            "placement": {},
            "nodes": {},
        },
        {
            "v": 1,
            "applied": 1,
            "topics": {"t": {"config": {}, "created_index": 1, "groups": {}}},
            "placement": {"t": [{"replicas": ["a b"], "leader": "", "epoch": 1}]},
            "nodes": {},
        },
        {"v": 1, "applied": 1, "topics": {}, "placement": {}},
        {"v": 1, "applied": 1, "topics": {}, "placement": {}, "nodes": {}, "extra": 1},
        {"v": 2, "applied": 1, "topics": {}, "placement": {}, "nodes": {}},
    ],
)
def test_bad_snapshots_are_refused_by_name(state: dict[str, Any]) -> None:
    """Snapshot bytes of the wrong shape, with names the node would never take, a
    partition count or placement that does not add up, raise BadSnapshot."""
    from sprawl.cluster.metadata import BadSnapshot, check_snapshot

    with pytest.raises(BadSnapshot):
        check_snapshot(msgspec.msgpack.encode(state), 5)
    with pytest.raises(ValueError):
        Metadata.restore(msgspec.msgpack.encode(state))


@given(st.binary(max_size=300))
def test_snapshot_check_raises_only_its_error(data: bytes) -> None:
    """Any bytes: accepted or BadSnapshot, nothing else."""
    from sprawl.cluster.metadata import BadSnapshot, check_snapshot

    try:
        check_snapshot(data, 100)
    except BadSnapshot:
        pass


# -- pipelines (issue 17) ---------------------------------------------------------


def _pipeline(name: str = "p", **spec: Any) -> dict[str, Any]:
    body = {"source": "src", "target": "dst", **spec}
    return {"op": "put_pipeline", "name": name, "spec": body, "group_config": {"start": "earliest"}}


def test_a_pipeline_is_declared_with_its_position_group_and_forgotten_with_it() -> None:
    """put_pipeline stores the definition and creates the group ``pipeline.NAME`` on the
    source in the same entry; a re-put keeps the group (its position); delete drops both."""
    m, _ = topic("src")
    m.apply(2, {"op": "put_topic", "name": "dst", "config": {}})
    assert m.apply(3, _pipeline(filter="payload.big")) == {
        "created": True,
        "pipeline": {
            "pipeline": "p",
            "source": "src",
            "target": "dst",
            "filter": "payload.big",
            "fields": None,
            "key": None,
            "acks": "quorum",
        },
    }
    assert m.topics["src"]["groups"]["pipeline.p"] == {"start": "earliest"}
    m.topics["src"]["groups"]["pipeline.p"]["moved"] = 1
    assert m.apply(4, _pipeline(acks="leader"))["created"] is False
    assert m.pipelines["p"]["acks"] == "leader" and m.topics["src"]["groups"]["pipeline.p"]["moved"] == 1
    assert Metadata.restore(m.snapshot()) == m
    assert m.apply(5, {"op": "delete_pipeline", "name": "p"}) == {"deleted": True, "source": "src"}
    assert m.pipelines == {} and "pipeline.p" not in m.topics["src"]["groups"]
    assert err(m.apply(6, {"op": "delete_pipeline", "name": "p"})) == ("pipeline_not_found", 404)


def test_a_bad_pipeline_is_refused_and_changes_nothing() -> None:
    """Unknown topics, a bad shape, a bad name or a changed source are error results (the
    expressions are compiled by the HTTP layer and the loop, not by the state machine)."""
    m, _ = topic("src")
    m.apply(2, {"op": "put_topic", "name": "dst", "config": {}})
    m.apply(3, {"op": "put_topic", "name": "other", "config": {}})
    before = m.copy()
    assert err(m.apply(4, _pipeline(target="nope"))) == ("topic_not_found", 400)
    assert err(m.apply(5, _pipeline(source="nope"))) == ("topic_not_found", 400)
    assert err(m.apply(6, _pipeline(filter="x" * 1025))) == ("invalid_filter", 400)
    assert err(m.apply(7, _pipeline(name="bad name"))) == ("invalid_topic_name", 400)
    assert err(m.apply(8, _pipeline(target="src"))) == ("invalid_field", 400)
    before.applied = m.applied
    assert m == before
    m.apply(9, _pipeline())
    assert err(m.apply(10, _pipeline(source="other", target="dst"))) == ("pipeline_source_change", 409)


def test_a_snapshot_without_pipelines_has_no_pipelines_field() -> None:
    """An older node (no pipelines) reads the snapshot of a cluster that declared none."""
    m, _ = topic("src")
    assert "pipelines" not in msgspec.msgpack.decode(m.snapshot())


def test_pipeline_definitions_the_metadata_keeps_are_ones_the_core_accepts() -> None:
    """The state machine's shape check and the pure core's validation agree on the shape:
    what the core accepts the metadata keeps unchanged (as the core writes it)."""
    from sprawl.cluster.metadata import PIPELINE_FIELDS, pipeline_definition
    from sprawl.pubsub.pipelines import FIELDS, PipelineSpec

    assert set(PIPELINE_FIELDS) == {"pipeline", *FIELDS}
    for body in (
        {"source": "a", "target": "b"},
        {"source": "a", "target": "b", "filter": "payload.x", "fields": "x,y", "key": "key", "acks": "none"},
        {"source": "a", "target": "b", "on_reject": "stall"},
        {"source": "a", "target": "b", "on_reject": "skip"},
        {"source": "a", "target": "b", "on_reject": "dead-letter", "dead_letter_topic": "c"},
    ):
        spec = PipelineSpec.from_body("p", body).to_dict()
        assert pipeline_definition("p", body) == spec == pipeline_definition("p", spec)
    for bad in (
        {"on_reject": "drop"},
        {"on_reject": "dead-letter"},
        {"on_reject": "dead-letter", "dead_letter_topic": "a"},
        {"on_reject": "skip", "dead_letter_topic": "c"},
        {"dead_letter_topic": "c"},
    ):
        assert pipeline_definition("p", {"source": "a", "target": "b", **bad})[0] == "invalid_field", bad


def test_a_dead_letter_topic_must_exist() -> None:
    """As source and target: ``topic_not_found``, nothing changed; kept once it exists."""
    m, _ = topic("src")
    m.apply(2, {"op": "put_topic", "name": "dst", "config": {}})
    dl = {"on_reject": "dead-letter", "dead_letter_topic": "dlq"}
    assert err(m.apply(3, _pipeline(**dl))) == ("topic_not_found", 400)
    assert m.pipelines == {}
    m.apply(4, {"op": "put_topic", "name": "dlq", "config": {}})
    assert m.apply(5, _pipeline(**dl))["pipeline"]["dead_letter_topic"] == "dlq"
    assert Metadata.restore(m.snapshot()) == m
