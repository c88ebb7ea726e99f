"""The partition manifest: which segments of a partition live in the object store.

Pure: no Twisted, no I/O.  A manifest is a small list of :class:`RemoteObject`
entries, one per spilled segment, oldest first, encoded as JSON.  In this
single-node build it lives in the LMDB ``meta`` database (written in the same
transaction that deletes the segment's records); being a plain structure, the
replication work can carry it to every replica unchanged.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import astuple, dataclass

from sprawl.log.segments import Segment

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class RemoteObject:
    """One spilled segment: its offsets, its two objects and their checksums."""

    base: int
    last: int
    #: Logical bytes of the segment's records (as counted in LMDB).
    bytes: int
    first_ts: int
    last_ts: int
    key: str
    size: int
    sha256: str
    index_key: str
    index_size: int
    index_sha256: str

    def to_segment(self) -> Segment:
        """The sealed segment this object holds, marked remote."""
        return Segment(self.base, self.last, self.bytes, self.first_ts, self.last_ts, True, self)


def encode_manifest(objects: list[RemoteObject]) -> bytes:
    """The manifest as stored (JSON: a version and one array per object)."""
    return json.dumps({"v": MANIFEST_VERSION, "segments": [list(astuple(o)) for o in objects]}).encode()


def decode_manifest(data: bytes) -> list[RemoteObject]:
    """Inverse of :func:`encode_manifest`; raises ``ValueError`` on anything malformed."""
    try:
        doc = json.loads(data)
        if doc.get("v") != MANIFEST_VERSION:
            raise ValueError(f"unknown manifest version {doc.get('v')!r}")
        out = [RemoteObject(*row) for row in doc["segments"]]
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt manifest: {e}") from None
    for a, b in itertools.pairwise(out):
        if b.base <= a.last:
            raise ValueError("corrupt manifest: segments overlap or are out of order")
    return out


def object_keys(
    prefix: str, topic: str, partition: int, base: int, last: int, uid: int, node: str = ""
) -> tuple[str, str]:
    """The segment object's key and its index's key.

    ``PREFIX/TOPIC/PARTITION/BASE-LAST.seg`` as in the design notes, with the
    topic's numeric uid appended to the file name (``BASE-LAST.tUID.seg``): a
    topic deleted and re-created under the same name starts again at offset 0,
    and the old topic's objects (deleted asynchronously) must never be
    confused with the new ones.  Offsets are zero-padded so keys sort.

    ``node`` (the uploading node's id) is appended too (``.tUID.nNODE``):
    until partitions are replicated every node of a cluster holds its own
    copy of a topic's partitions, with its own offsets and uids, so nodes
    sharing a bucket and prefix must never write -- or delete -- each
    other's objects.  Once only a partition's leader uploads (issue 5) the
    node part can go.
    """
    pre = prefix.strip("/")
    stem = f"{topic}/{partition}/{base:020d}-{last:020d}.t{uid}"
    if node:
        stem += f".n{node}"
    if pre:
        stem = f"{pre}/{stem}"
    return stem + ".seg", stem + ".idx"
