"""Rendezvous placement (sprawl/cluster/placement.py): deterministic, k
distinct nodes, and a node joining or leaving moves only the partitions
whose top-k set it enters or leaves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.placement import raft_id_of, replicas

names = st.lists(st.text("abcdefghij", min_size=1, max_size=6), min_size=1, max_size=8, unique=True)


@given(names, st.integers(0, 5))
def test_placement_is_deterministic_and_distinct(nodes: list[str], k: int) -> None:
    """The same inputs in any order give the same k distinct nodes (all, when fewer)."""
    got = replicas("t", 3, nodes, k)
    assert got == replicas("t", 3, list(reversed(nodes)), k)
    assert len(got) == min(k, len(nodes)) and len(set(got)) == len(got)
    assert set(got) <= set(nodes)


@given(names, st.text("xyz", min_size=1, max_size=4), st.integers(1, 4))
def test_a_joining_node_moves_only_the_partitions_it_enters(nodes: list[str], new: str, k: int) -> None:
    """After a join, a partition's set changes only if the new node is in it,
    and then by exactly that node replacing the old set's last one."""
    for p in range(32):
        before = replicas("orders", p, nodes, k)
        after = replicas("orders", p, [*nodes, new], k)
        if new not in after:
            assert after == before
        else:
            assert set(after) - {new} <= set(before)
            assert len(set(before) - set(after)) == (1 if len(before) == k else 0)


@given(names, st.integers(1, 4))
def test_a_leaving_node_moves_only_the_partitions_it_was_in(nodes: list[str], k: int) -> None:
    """Removing a node changes exactly the partitions that had it."""
    gone = nodes[0]
    for p in range(32):
        before = replicas("orders", p, nodes, k)
        after = replicas("orders", p, nodes[1:], k)
        if gone in before:
            assert set(before) - {gone} <= set(after)
        else:
            assert after == before


def test_raft_ids_are_stable_and_nonzero() -> None:
    """Raft ids derive from node ids alone."""
    assert raft_id_of("n1") == raft_id_of("n1") != raft_id_of("n2")
    assert raft_id_of("") > 0
