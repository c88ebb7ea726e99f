"""Remote segments: the shared metadata of a partition's segments in the object
store, a node's manifest of them, and the object key layout.

Pure: no Twisted, no I/O.

* :class:`RemoteObject` -- one segment in the object store: its offsets, its
  two objects (segment and index) with their checksums, and the leader epoch
  it was uploaded in.  Defined in :mod:`sprawl.log.segments` beside
  :class:`~sprawl.log.segments.Segment` (each refers to the other) and
  importable from here.
* :class:`RemoteState` -- the partition's *shared* remote metadata, the one
  list every replica follows (replicated through the cluster metadata; on a
  single node it is the node's own): the log start (offsets below it were
  deleted by retention) and the remote segments, contiguous, oldest first.
  :meth:`RemoteState.added` and :meth:`RemoteState.trimmed` are the only two
  ways it changes, and they refuse what would leave a hole.
* :class:`Manifest` -- what one node stores in LMDB ``meta``: the remote
  segments at the front of its log (the shared ones it installed), the log
  start, and its *legacy* objects: segments it uploaded itself under the old
  per-node keys, kept readable until the shared list covers them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sprawl.log.segments import RemoteObject

MANIFEST_VERSION = 2


def _contiguous(objs: Sequence[RemoteObject]) -> bool:
    return all(b.base == a.last + 1 for a, b in itertools.pairwise(objs))


@dataclass(frozen=True)
class RemoteState:
    """A partition's shared remote metadata: ``start`` (offsets below it are
    deleted) and its remote segments, contiguous and oldest first."""

    start: int = 0
    objects: tuple[RemoteObject, ...] = ()

    @property
    def end(self) -> int:
        """One past the last offset in the object store (``start`` when none is)."""
        return self.objects[-1].last + 1 if self.objects else self.start

    def keys(self) -> set[str]:
        """Every object key the state names (segments and indexes)."""
        return {k for o in self.objects for k in (o.key, o.index_key)}

    def added(self, objs: Sequence[RemoteObject]) -> RemoteState:
        """The state with ``objs`` appended; ``ValueError`` unless they are
        contiguous, continue the list exactly (or, on an empty list, reach the
        start) and hold something at or past the start."""
        if not objs:
            raise ValueError("no segments to add")
        if not _contiguous(objs):
            raise ValueError("the segments to add are not contiguous")
        if objs[-1].last < self.start:
            raise ValueError(f"segments {objs[0].base}-{objs[-1].last} lie below the log start {self.start}")
        if self.objects and objs[0].base != self.end:
            raise ValueError(f"segment {objs[0].base} does not continue the remote log at {self.end}")
        return RemoteState(self.start, (*self.objects, *objs))

    def trimmed(self, start: int) -> tuple[RemoteState, list[RemoteObject]]:
        """Retention: the state starting at ``start`` (never moving back), and
        the segments that drops (wholly below it)."""
        start = max(self.start, start)
        gone = [o for o in self.objects if o.last < start]
        return RemoteState(start, self.objects[len(gone) :]), gone

    def to_doc(self) -> dict[str, object]:
        """The form kept in the cluster metadata."""
        return {"start": self.start, "segments": [o.to_row() for o in self.objects]}

    @classmethod
    def from_doc(cls, doc: object) -> RemoteState:
        """Inverse of :meth:`to_doc`; ``ValueError`` on anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError("remote state is not a map")
        start = doc.get("start", 0)
        rows = doc.get("segments", [])
        if not isinstance(start, int) or isinstance(start, bool) or start < 0 or not isinstance(rows, list):
            raise ValueError("malformed remote state")
        objs = tuple(RemoteObject.from_row(r) for r in rows)
        if not _contiguous(objs):
            raise ValueError("remote state segments are not contiguous")
        return cls(start, objs)


@dataclass
class Manifest:
    """One node's record of the remote segments at the front of its log."""

    #: The log start the node last followed.
    start: int = 0
    #: The remote segments at the front of this node's log, oldest first.
    objects: list[RemoteObject] = field(default_factory=list)
    #: Segments this node uploaded under its own (old layout) keys that the
    #: shared list does not name yet; deleted by this node once it covers them.
    legacy: list[RemoteObject] = field(default_factory=list)


def encode_manifest(m: Manifest) -> bytes:
    """The manifest as stored (JSON: a version, the start and one row per object)."""
    return json.dumps(
        {
            "v": MANIFEST_VERSION,
            "start": m.start,
            "segments": [o.to_row() for o in m.objects],
            "legacy": [o.to_row() for o in m.legacy],
        }
    ).encode()


def decode_manifest(data: bytes) -> Manifest:
    """Inverse of :func:`encode_manifest`; raises ``ValueError`` on anything malformed.

    A version 1 manifest (written before the tier was shared) holds only this
    node's own uploads: every one of them is legacy."""
    try:
        doc = json.loads(data)
        v = doc.get("v")
        if v == 1:
            objs = [RemoteObject.from_row(row) for row in doc["segments"]]
            m = Manifest(objs[0].base if objs else 0, objs, list(objs))
        elif v == MANIFEST_VERSION:
            m = Manifest(
                int(doc["start"]),
                [RemoteObject.from_row(row) for row in doc["segments"]],
                [RemoteObject.from_row(row) for row in doc.get("legacy", [])],
            )
        else:
            raise ValueError(f"unknown manifest version {v!r}")
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt manifest: {e}") from None
    for a, b in itertools.pairwise(m.objects):
        if b.base <= a.last:
            raise ValueError("corrupt manifest: segments overlap or are out of order")
    return m


def partition_key_prefix(prefix: str, topic: str, partition: int) -> str:
    """The key prefix every object of one partition starts with (ends in ``/``)."""
    pre = prefix.strip("/")
    stem = f"{topic}/{partition}/"
    return f"{pre}/{stem}" if pre else stem


def object_keys(
    prefix: str, topic: str, partition: int, base: int, last: int, incarnation: int, epoch: int
) -> tuple[str, str]:
    """The segment object's key and its index's key.

    ``PREFIX/TOPIC/PARTITION/BASE-LAST.tINCARNATION.eEPOCH.seg`` (and
    ``.idx``), as in the design notes with two parts added and no node:

    * ``tINCARNATION`` -- which life of the topic name: a topic deleted and
      re-created starts again at offset 0, and the old topic's objects
      (deleted asynchronously) must never be confused with the new ones.  In
      a cluster it is the Raft index that created the topic (the same on
      every node); on a lone broker, its local uid.
    * ``eEPOCH`` -- the leader epoch of the upload.  Two leaders never write
      the same key, so an upload a deposed leader left behind can be told
      from the current leader's and deleted safely (see
      :func:`parse_key` and the orphan sweep).

    Offsets are zero-padded so keys sort.
    """
    stem = partition_key_prefix(prefix, topic, partition) + f"{base:020d}-{last:020d}.t{incarnation}.e{epoch}"
    return stem + ".seg", stem + ".idx"


@dataclass(frozen=True)
class KeyInfo:
    """What an object's key says about it."""

    base: int
    last: int
    #: The topic incarnation (new layout) or the uploading node's topic uid (old layout).
    incarnation: int
    #: The upload's leader epoch (new layout), None for the old layout.
    epoch: int | None
    #: The uploading node (old layout only: ``.tUID.nNODE``).
    node: str | None
    #: The index object rather than the segment.
    index: bool


_KEY = re.compile(r"^(\d{20})-(\d{20})\.t(\d+)(?:\.e(\d+)|\.n(.+))?\.(seg|idx)$")


def parse_key(name: str) -> KeyInfo | None:
    """The parts of an object key's last path element (None: not a segment object of ours)."""
    m = _KEY.match(name.rsplit("/", 1)[-1])
    if m is None:
        return None
    base, last, inc, epoch, node, kind = m.groups()
    return KeyInfo(
        int(base),
        int(last),
        int(inc),
        int(epoch) if epoch is not None else None,
        node,
        kind == "idx",
    )
