"""What one topic creation writes to LMDB (issue 23, create38): the same
pages with 10,000 topics as with a few.

A create on a node is its Raft entry's append (the entry and the hard
state), the entry's apply (the broker's topic record, the next uid, the new
replica's state and control record, the commit index) and, every
``SNAPSHOT_ENTRIES`` entries, a snapshot of the metadata with the log
compacted behind it -- the driver's writes, here made directly on a real
:class:`LmdbStore` (its group commit, its writer thread) through
:class:`LmdbRaftStorage` and the node's :class:`MetadataApply`.  Every commit
of ``CREATES`` creates is diffed page by page (``harness.lmdb_pages``) and
each page written is put to its database and kind.

What may grow with the topic count is the depth of a B-tree (its branch
pages: a level more now and then); what must not is the rest --
the leaves and overflow pages a create dirties in each database, the free
list's pages, the main database's and the meta page.  A value rewritten
whole that grows with the topics (a list of them, the metadata snapshot in
the way of every commit) or a key layout that scatters one create over many
leaves would show there.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest_twisted
from test_create_apply_cost import Node

from harness import lmdb_pages
from sprawl.cluster.metadata import encode_command
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import ConfState, Entry, HardState

#: Creates measured after the idle ones.
CREATES = 24
#: Pages of a (database, kind) by which the window may differ between two counts: where
#: a B-tree's leaf splits (or a range delete ends) is not the same in two trees.
SLACK = 2
#: As the driver's default: a snapshot every this many applied entries, the log kept this far behind it.
SNAPSHOT_ENTRIES = 1024
KEEP_ENTRIES = 256
CONF = ConfState((1, 2, 3))

PageCount = Counter[tuple[str, str]]


class RaftNode(Node):
    """:class:`Node` with its Raft log on the same store, written as the driver does."""

    raft: LmdbRaftStorage

    async def open_raft(self) -> None:
        self.raft = await LmdbRaftStorage.open(self.store, CONF, 7)
        self.index = self.raft.last_index()

    async def create_logged(self, name: str, leader_index: int, snapshot: bool | None = None) -> None:
        """One creation: append its entry (awaited, as a Ready's save), apply
        it, save the commit index with the apply's writes, snapshot when due
        (``snapshot``: now or not, whatever is due)."""
        self.index += 1
        i = self.index
        nodes = ("a", "b", "c")
        reps = [*nodes[leader_index:], *nodes[:leader_index]]
        cmd = {"op": "put_topic", "name": name, "config": {"partitions": 1, "replication_factor": 3}}
        cmd.update(placement=[reps], req=f"r{i}")
        e = Entry(1, i, data=encode_command(cmd))
        await self.raft.save(HardState(1, 1, i - 1), [e], None)
        self.apply.apply(e)
        self.raft.save(HardState(1, 1, i), [], None)
        due = i - self.raft.snapshot().meta.index >= SNAPSHOT_ENTRIES
        if snapshot if snapshot is not None else due:
            await self.raft.create_snapshot(i, CONF, self.metadata.snapshot())
            await self.raft.compact(i - KEEP_ENTRIES)


async def pages_of_creates(path: Path, idle: int) -> tuple[PageCount, int]:
    """(Pages written per (database, kind) by :data:`CREATES` creates after
    ``idle`` idle topics -- one snapshot of the metadata and a compaction
    among them -- and the commits they took)."""
    node = RaftNode(path)
    await node.open_raft()
    commit = node.store._commit
    written: PageCount = Counter()
    commits = 0

    def diffed(ops: list[object], times: list[float] | None = None) -> None:
        nonlocal commits
        before = lmdb_pages.page_hashes(node.store.path)
        commit(ops, times)
        pages = lmdb_pages.written(before, lmdb_pages.page_hashes(node.store.path))
        written.update(lmdb_pages.by_kind(pages, lmdb_pages.page_kinds(node.store.path)))
        commits += 1

    try:
        for i in range(idle):
            await node.create_logged(f"t{i:05d}", i % 3)
        await node.store.write([])
        node.store._commit = diffed  # type: ignore[method-assign]
        for i in range(idle, idle + CREATES):
            # (one snapshot in the window, the same place whatever the count)
            await node.create_logged(f"t{i:05d}", i % 3, snapshot=i == idle + CREATES // 2)
        await node.store.write([])
        return written, commits
    finally:
        node.store._commit = commit  # type: ignore[method-assign]
        await node.close()


def _not_depth(pages: PageCount) -> PageCount:
    return Counter({k: v for k, v in pages.items() if k[1] != "branch"})


@pytest_twisted.ensureDeferred
async def test_a_create_writes_the_same_pages_with_10000_topics(tmp_path: Path) -> None:
    """The pages a create writes (but the B-trees' branch pages) are the
    same with 10,000 topics as with 1,000, database by database (to a leaf
    split: :data:`SLACK`)."""
    few, few_commits = await pages_of_creates(tmp_path / "few", 1000)
    many, many_commits = await pages_of_creates(tmp_path / "many", 10_000)
    print(f"per {CREATES} creates: 1,000 topics {sorted(few.items())} ({few_commits} commits)")
    print(f"                  10,000 topics {sorted(many.items())} ({many_commits} commits)")
    assert many_commits == few_commits
    grown = {k: (few.get(k, 0), v) for k, v in _not_depth(many).items() if v > few.get(k, 0) + SLACK}
    assert not grown, f"pages per {CREATES} creates grew with 10,000 topics (1,000 topics, 10,000): {grown}"
