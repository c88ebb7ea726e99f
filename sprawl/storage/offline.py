"""``sprawlctl verify DATA_DIR``: every damaged range of a stopped node's data.

Opens the LMDB environment read-only (the node must be stopped: a running
node's commits would move pages under the scan), rebuilds each partition's
view the way a starting node does (topics, segments, the S3 manifest, the
log start, ranges an operator skipped) and checks every stored record with
the same scan reads use (:func:`sprawl.storage.verify.find_damage`).  With S3
settings it also fetches every object the manifests name and checks its
index, size, SHA-256, chunk checksums and record checksums.

Blocking code for the CLI; no reactor.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import lmdb

from sprawl.log.damage import SKIPPED, DamageMap
from sprawl.log.manifest import RemoteObject, decode_manifest
from sprawl.log.record import CorruptRecord, check_stored
from sprawl.log.segments import Segment
from sprawl.storage import keys
from sprawl.storage.lmdb import DBS, UNCHECKED_KEY, decode_unchecked, last_sound_offset
from sprawl.storage.segment_format import CorruptSegment, SegmentIndex, decode_chunk
from sprawl.storage.verify import dense_ranges, find_damage


@dataclass
class Finding:
    """One damaged range."""

    topic: str
    partition: int
    first: int
    last: int
    tier: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """As ``sprawlctl verify --json`` prints it."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first,
            "last_offset": self.last,
            "tier": self.tier,
            "reason": self.reason,
        }


@dataclass
class Report:
    """What a verification found and covered."""

    findings: list[Finding] = field(default_factory=list)
    partitions: int = 0
    lmdb_bytes: int = 0
    s3_objects: int = 0
    s3_bytes: int = 0
    #: Ranges an operator skipped earlier (not damage any more, but listed).
    skipped: list[Finding] = field(default_factory=list)
    #: Problems that stopped part of the check (a topic record that does not decode...).
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "damaged": [f.to_dict() for f in self.findings],
            "skipped": [f.to_dict() for f in self.skipped],
            "partitions": self.partitions,
            "lmdb_bytes": self.lmdb_bytes,
            "s3_objects": self.s3_objects,
            "s3_bytes": self.s3_bytes,
            "errors": self.errors,
        }


def verify_data_dir(data_dir: str, s3: Any = None) -> Report:
    """Check every partition of ``data_dir`` (``s3``: a boto3 S3 client and
    its bucket, ``(client, bucket)``, to check the objects too)."""
    path = os.path.join(data_dir, "lmdb")
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise FileNotFoundError(f"no LMDB environment in {path}")
    report = Report()
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=len(DBS) + 2, readahead=False, subdir=True)
    try:
        dbs = {name: env.open_db(name.encode(), create=False) for name in ("meta", "records", "segments")}
        with env.begin(db=dbs["meta"]) as txn:
            raw = txn.get(UNCHECKED_KEY)
            unchecked = decode_unchecked(bytes(raw)) if raw is not None else None
            topics = [(bytes(k), bytes(v)) for k, v in _prefixed(txn, b"topic/")]
        for k, v in topics:
            try:
                cfg = json.loads(v)
                name, uid, parts = str(cfg["name"]), int(cfg["uid"]), int(cfg["partitions"])
                durable = cfg.get("storage", "durable") == "durable"
            except (ValueError, KeyError, TypeError) as e:
                report.errors.append(f"topic record {k!r} does not decode: {e}")
                continue
            for p in range(parts):
                report.partitions += 1
                try:
                    _partition(env, dbs, report, name, uid, p, durable, unchecked, s3)
                except lmdb.Error as e:
                    report.findings.append(
                        Finding(name, p, 0, 0, "lmdb", f"LMDB cannot read the partition: {e}")
                    )
    finally:
        env.close()
    return report


def _prefixed(txn: Any, prefix: bytes, db: Any = None) -> Any:
    cur = txn.cursor(db=db) if db is not None else txn.cursor()
    if not cur.set_range(prefix):
        return
    for k, v in cur:
        if not bytes(k).startswith(prefix):
            break
        yield k, v


def _partition(
    env: Any,
    dbs: dict[str, Any],
    report: Report,
    name: str,
    uid: int,
    p: int,
    durable: bool,
    unchecked: dict[tuple[int, int], int] | None,
    s3: Any,
) -> None:
    """One partition, rebuilt as :meth:`sprawl.pubsub.catalog.Catalog._recover_partition` does."""
    # Before the first open by a version with checksums, every record is unchecked.
    below = (unchecked or {}).get((uid, p), 0) if unchecked is not None else 1 << 62
    last = last_sound_offset(env, dbs["records"], uid, p, below)
    stored_end = last + 1 if last is not None else 0
    with env.begin() as txn:
        segs = [
            Segment.from_tuple(json.loads(bytes(v)))
            for _k, v in _prefixed(txn, keys.partition_prefix(uid, p), dbs["segments"])
        ]
        meta_raw = txn.get(keys.partition_meta_key(uid, p), db=dbs["meta"])
        manifest_raw = txn.get(keys.manifest_key(uid, p), db=dbs["meta"])
        damage_raw = txn.get(keys.damage_key(uid, p), db=dbs["meta"])
    meta = json.loads(bytes(meta_raw)) if meta_raw else {}
    if durable and segs and segs[-1].last >= stored_end:
        stored_end = segs[-1].last + 1
    segs = [s for s in segs if s.base < stored_end]
    if segs:
        segs[-1].last = min(segs[-1].last, stored_end - 1)
    remote: list[RemoteObject] = decode_manifest(bytes(manifest_raw)).objects if manifest_raw else []
    if remote:
        segs = [s for s in segs if s.base > remote[-1].last]
    log_start = max(
        remote[0].base if remote else (segs[0].base if segs else stored_end), int(meta.get("log_start", 0))
    )
    skipped: list[tuple[int, int]] = []
    if damage_raw:
        dm = DamageMap()
        dm.load((uid, p), bytes(damage_raw))
        for e in dm.entries((uid, p)):
            if e.state == SKIPPED:
                skipped.append((e.first, e.last))
                report.skipped.append(Finding(name, p, e.first, e.last, e.tier, e.reason))
    low = max(log_start, remote[-1].last + 1 if remote else 0)
    dense = dense_ranges([(s.base, s.last) for s in segs], low, stored_end, skipped)
    with env.begin(buffers=False) as txn:
        found, nbytes = find_damage(
            txn, dbs["records"], uid, p, low, stored_end, dense=dense, unchecked_below=below, env=env
        )
    report.lmdb_bytes += nbytes
    for d in found:
        report.findings.append(Finding(name, p, d.first, d.last, "lmdb", d.reason))
    if s3 is not None:
        for o in remote:
            if o.last >= log_start:
                _check_object(report, s3, name, p, o)


def _check_object(report: Report, s3: Any, topic: str, p: int, o: RemoteObject) -> None:
    """Fetch one segment object and its index and check everything they carry."""
    client, bucket = s3

    def get(key: str) -> bytes | None:
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception as e:
            report.findings.append(Finding(topic, p, o.base, o.last, "s3", f"cannot fetch {key}: {e}"))
            return None

    idx_bytes = get(o.index_key)
    if idx_bytes is None:
        return
    report.s3_objects += 1
    if len(idx_bytes) != o.index_size or hashlib.sha256(idx_bytes).hexdigest() != o.index_sha256:
        report.findings.append(
            Finding(
                topic, p, o.base, o.last, "s3", f"index {o.index_key} does not match the manifest's checksum"
            )
        )
        return
    try:
        index = SegmentIndex.from_bytes(idx_bytes)
    except CorruptSegment as e:
        report.findings.append(Finding(topic, p, o.base, o.last, "s3", str(e)))
        return
    blob = get(o.key)
    if blob is None:
        return
    report.s3_objects += 1
    report.s3_bytes += len(blob)
    whole_ok = len(blob) == o.size and hashlib.sha256(blob).hexdigest() == o.sha256
    bad_chunks = 0
    for i, chunk in enumerate(index.chunks):
        first = chunk[0]
        last = index.chunks[i + 1][0] - 1 if i + 1 < len(index.chunks) else index.last
        try:
            for off, value in decode_chunk(blob[chunk[1] : chunk[1] + chunk[2]], chunk):
                check_stored(p, off, value)
        except (CorruptSegment, CorruptRecord) as e:
            bad_chunks += 1
            report.findings.append(Finding(topic, p, first, last, "s3", f"object {o.key}: {e}"))
    if not whole_ok and not bad_chunks:
        report.findings.append(
            Finding(
                topic,
                p,
                o.base,
                o.last,
                "s3",
                f"object {o.key} does not match the manifest's size or SHA-256",
            )
        )
