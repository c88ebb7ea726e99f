"""The cluster metadata state machine that Raft replicates.  Pure.

It holds topics and their configuration, partition placement (replicas,
leader, leader epoch), consumer-group definitions, derived-topic pipelines
(issue 17) and the names of the nodes Raft knows by number.  Voters themselves are Raft's configuration,
not part of this state.

Every command is a msgpack map with an ``op``; :meth:`Metadata.apply` is a
deterministic function of the state and the command, so every node that
applies the same log reaches the same state and computes the same result.
A result is either a map of facts (``{"created": true}``) or
``{"error": {"code", "message", "status"}}`` -- refusals are results, not
exceptions, so a bad command never stops the log.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

import msgspec

from sprawl.cluster.features import MAX_LATCHED, valid_latch
from sprawl.log.manifest import RemoteObject, RemoteState

#: Topic config fields the metadata keeps (the broker's TopicConfig, minus local ones).
TOPIC_FIELDS = (
    "partitions",
    "replication_factor",
    "storage",
    "retention_ms",
    "retention_bytes",
    "max_message_bytes",
    "segment_bytes",
    "segment_ms",
)

Result = dict[str, Any]

#: At most this many partitions in one ``set_partitions`` command (a dead
#: node's leaderships: 10,000 replicas per node is the scale goal, issue 23).
MAX_PARTITION_BATCH = 16384

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}\Z")
_NODE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _NodeRecord(msgspec.Struct, forbid_unknown_fields=True):
    raft_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    peer: Annotated[str, msgspec.Meta(max_length=300)]
    http: Annotated[str, msgspec.Meta(max_length=300)]


class _PartitionRecord(msgspec.Struct, forbid_unknown_fields=True):
    replicas: Annotated[list[str], msgspec.Meta(max_length=1024)]
    leader: str
    epoch: _Count
    goal: Annotated[list[str], msgspec.Meta(min_length=1, max_length=1024)] | None = None


class _TopicRecord(msgspec.Struct, forbid_unknown_fields=True):
    config: dict[str, Any]
    created_index: _Count
    groups: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=249)], dict[str, Any]]


class _SnapshotRecord(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[1]
    applied: _Count
    topics: dict[str, _TopicRecord]
    placement: dict[str, list[_PartitionRecord]]
    nodes: dict[str, _NodeRecord]
    #: The shared remote segments: topic -> partition -> RemoteState doc.
    remote: dict[str, dict[int, dict[str, Any]]] = {}
    #: Drained node ids (issue 24; written only when there is one).
    drained: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_NODE.pattern)]], msgspec.Meta(max_length=1024)
    ] = []
    #: Latched cluster features (issue 24; written only once one is).
    features: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=48)]], msgspec.Meta(max_length=32)
    ] = []
    #: Derived-topic pipelines, name -> definition (issue 17; written only when there is one).
    pipelines: Annotated[dict[str, dict[str, Any]], msgspec.Meta(max_length=10_000)] = {}


_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotRecord)


class BadSnapshot(ValueError):
    """Snapshot bytes that are not a valid metadata snapshot (the only error
    :func:`check_snapshot` raises)."""


def check_snapshot(data: bytes, index: int | None = None) -> None:
    """Check that ``data`` is a metadata snapshot this code can restore and use:
    its shape and types, topic and node names, every topic's partitions and
    placement, and (with ``index``, the Raft index it claims to cover) that it
    applied no entry beyond it.  Raises :class:`BadSnapshot` naming the flaw."""
    if not data:
        return  # the empty state (a bootstrap snapshot)
    try:
        snap = _snapshot_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise BadSnapshot(f"not a metadata snapshot: {str(e)[:200]}") from None
    if index is not None and snap.applied > index:
        raise BadSnapshot(f"snapshot says it applied entry {snap.applied}, beyond its index {index}")
    for name, node in snap.nodes.items():
        if not _NODE.match(name):
            raise BadSnapshot(f"bad node id {name[:80]!r}")
        del node
    for name, t in snap.topics.items():
        if not _topic_name(name):
            raise BadSnapshot(f"bad topic name {name[:80]!r}")
        parts = t.config.get("partitions", 1)
        if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= 1 << 16:
            raise BadSnapshot(f"topic {name!r}: bad partition count {parts!r}"[:200])
        for k, v in t.config.items():
            if k not in TOPIC_FIELDS or not _scalar(v):
                raise BadSnapshot(f"topic {name!r}: bad config field {k[:40]!r}")
        if t.created_index > snap.applied:
            raise BadSnapshot(f"topic {name!r} created after the snapshot's last entry")
        placement = snap.placement.get(name, [])
        if len(placement) > parts:
            raise BadSnapshot(f"topic {name!r}: {len(placement)} placements for {parts} partitions")
    for name, placement in snap.placement.items():
        if name not in snap.topics:
            raise BadSnapshot(f"placement of {name[:80]!r}, a topic the snapshot does not hold")
        for p, pl in enumerate(placement):
            for n in (*pl.replicas, *(pl.goal or ())):
                if not _NODE.match(n):
                    raise BadSnapshot(f"{name}/{p}: bad node id {n[:80]!r} in its placement")
    for name, states in snap.remote.items():
        holder = snap.topics.get(name)
        if holder is None:
            raise BadSnapshot(f"remote segments of {name[:80]!r}, a topic the snapshot does not hold")
        for p, doc in states.items():
            if not 0 <= p < holder.config.get("partitions", 1):
                raise BadSnapshot(f"remote segments of {name}/{p}, a partition the topic does not have")
            try:
                RemoteState.from_doc(doc)
            except (ValueError, TypeError, KeyError) as e:
                raise BadSnapshot(f"{name}/{p}: bad remote segments: {str(e)[:200]}") from None
    for name, doc in snap.pipelines.items():
        if isinstance(pipeline_definition(name, doc), tuple):
            raise BadSnapshot(f"bad pipeline {name[:80]!r}")


#: A pipeline definition's fields (as :data:`sprawl.pubsub.pipelines.FIELDS`, plus its name).
PIPELINE_FIELDS = (
    "pipeline",
    "source",
    "target",
    "filter",
    "fields",
    "key",
    "acks",
    "on_reject",
    "dead_letter_topic",
)
_PIPELINE_ACKS = ("quorum", "leader", "none")
#: ``on_reject`` besides the default ``stall`` (kept only when not the default, so a
#: definition without it is the one a node of the release before keeps).
_PIPELINE_ON_REJECT = ("skip", "dead-letter")


def pipeline_definition(name: Any, spec: Any) -> dict[str, Any] | tuple[str, str]:
    """A pipeline's definition as the metadata keeps it, or ``(code, message)`` of what
    is wrong with it.  Only its shape is checked here (names, types, lengths, acks);
    the expressions are compiled where the pipeline is declared and run
    (:class:`sprawl.pubsub.pipelines.PipelineSpec`), so the state machine stays pure and
    does not depend on the expression language's version."""
    if not isinstance(name, str) or not _topic_name(name) or len(name) > 200:
        return ("invalid_topic_name", "a pipeline name follows the topic name rule, at most 200 characters")
    if not isinstance(spec, dict) or not set(spec) <= set(PIPELINE_FIELDS):
        return ("invalid_field", "a pipeline definition is a map of its fields")
    out: dict[str, Any] = {"pipeline": name}
    for role in ("source", "target"):
        topic = spec.get(role)
        if not isinstance(topic, str) or not _topic_name(topic):
            return ("invalid_field", f"{role} must be a topic name")
        out[role] = topic
    if out["source"] == out["target"]:
        return ("invalid_field", "target must differ from source")
    for opt in ("filter", "fields", "key"):
        v = spec.get(opt)
        if v is not None and (not isinstance(v, str) or len(v) > 1024):
            return ("invalid_filter", f"{opt} must be an expression of at most 1024 characters")
        out[opt] = v
    acks = spec.get("acks") if spec.get("acks") is not None else "quorum"
    if acks not in _PIPELINE_ACKS:
        return ("invalid_field", f"acks must be one of {', '.join(_PIPELINE_ACKS)}")
    out["acks"] = acks
    on_reject = spec.get("on_reject") if spec.get("on_reject") is not None else "stall"
    dlq = spec.get("dead_letter_topic")
    if on_reject in _PIPELINE_ON_REJECT:
        if on_reject == "dead-letter" and (
            not isinstance(dlq, str) or not _topic_name(dlq) or dlq in (out["source"], out["target"])
        ):
            return ("invalid_field", "dead_letter_topic must be a topic name other than source and target")
        if on_reject == "skip" and dlq is not None:
            return ("invalid_field", 'dead_letter_topic is only for on_reject "dead-letter"')
        out["on_reject"] = on_reject
        out["dead_letter_topic"] = dlq
    elif on_reject != "stall" or dlq is not None:
        return ("invalid_field", "on_reject must be one of stall, skip, dead-letter")
    return out


def _topic_name(name: str) -> bool:
    return bool(_TOPIC.match(name)) and name not in (".", "..")


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _node_ids(value: Any, what: str) -> list[str]:
    """``value`` as a list of valid node ids (TypeError otherwise)."""
    if not isinstance(value, list) or not all(isinstance(r, str) and _NODE.match(r) for r in value):
        raise TypeError(f"{what} must be a list of node ids")
    return list(value)


def _error(code: str, message: str, status: int) -> Result:
    return {"error": {"code": code, "message": message, "status": status}}


def encode_command(cmd: dict[str, Any]) -> bytes:
    """The bytes of a command, as stored in a Raft entry."""
    return msgspec.msgpack.encode(cmd)


def decode_command(data: bytes) -> dict[str, Any] | None:
    """A command from an entry, or None when the bytes are not one."""
    try:
        cmd = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    return cmd if isinstance(cmd, dict) and isinstance(cmd.get("op"), str) else None


class Metadata:
    """The replicated cluster metadata (see the module docstring)."""

    def __init__(self) -> None:
        #: name -> {"config": {...}, "created_index": int, "groups": {name: config}}
        self.topics: dict[str, dict[str, Any]] = {}
        #: name -> [ {"replicas": [...], "leader": str, "epoch": int} per partition ]
        self.placement: dict[str, list[dict[str, Any]]] = {}
        #: node id -> {"raft_id": int, "peer": str, "http": str}
        self.nodes: dict[str, dict[str, Any]] = {}
        #: topic -> {partition: {"start": int, "segments": [row, ...]}}: the
        #: partition's remote segments in the object store (the S3 tier,
        #: shared by its replicas; see :class:`sprawl.log.manifest.RemoteState`).
        self.remote: dict[str, dict[int, dict[str, Any]]] = {}
        #: Parsed remote states, by partition: (the doc it was parsed from, the state).
        self._remote_parsed: dict[tuple[str, int], tuple[Any, RemoteState]] = {}
        self.applied = 0
        #: Node ids the operator drained (``sprawlctl cluster drain``), sorted:
        #: they lead nothing and get no new replicas (:mod:`sprawl.cluster.drain`).
        self.drained: list[str] = []
        #: Cluster features latched on, sorted (:mod:`sprawl.cluster.features`):
        #: they stay on, and a node lacking one is refused.
        self.features: list[str] = []
        #: Derived-topic pipelines (``PUT /v1/pipelines/P``): name -> definition
        #: (:meth:`PipelineSpec.to_dict <sprawl.pubsub.pipelines.PipelineSpec.to_dict>`).
        self.pipelines: dict[str, dict[str, Any]] = {}

    # -- applying ------------------------------------------------------------

    def apply(self, index: int, cmd: dict[str, Any]) -> Result:
        """Apply the command of entry ``index``; return its result."""
        self.applied = index
        op = cmd.get("op")
        fn = getattr(self, "_op_" + op, None) if isinstance(op, str) else None
        if fn is None:
            return _error("unknown_command", f"unknown metadata command {op!r}", 400)
        try:
            return fn(index, cmd)  # type: ignore[no-any-return]
        except (KeyError, TypeError, ValueError) as e:
            return _error("malformed_command", f"malformed {op} command: {e}", 400)

    def _op_put_topic(self, index: int, cmd: dict[str, Any]) -> Result:
        # Validate everything first: a refused command changes nothing.
        name = cmd["name"]
        if not isinstance(name, str) or not _topic_name(name):
            raise ValueError("name must be a topic name")
        raw = cmd["config"]
        if not isinstance(raw, dict):
            raise TypeError("config must be a map")
        config = {k: raw[k] for k in TOPIC_FIELDS if k in raw}
        if not all(_scalar(v) for v in config.values()):
            raise TypeError("config values must be numbers, strings or null")
        partitions = config.get("partitions", 1)
        if not isinstance(partitions, int) or isinstance(partitions, bool) or not 1 <= partitions <= 1 << 16:
            raise ValueError("partitions must be a positive integer (at most 65536)")
        existing = self.topics.get(name)
        if existing is not None and cmd.get("if_absent"):
            return {"created": False, "created_index": existing["created_index"]}
        before = existing["config"].get("partitions", 1) if existing is not None else 0
        if existing is not None:
            old = existing["config"]
            if partitions < before:
                return _error("partitions_shrink", "partitions can only grow", 409)
            if config.get("storage", "durable") != old.get("storage", "durable"):
                return _error("storage_change", "storage of an existing topic cannot change", 409)
        new_parts = self._placements(before, partitions, cmd.get("placement") or [])
        if existing is None:
            existing = self.topics[name] = {"config": config, "created_index": index, "groups": {}}
            self.placement[name] = new_parts
            self.remote.pop(name, None)
            return {"created": True, "created_index": index}
        existing["config"] = config
        self.placement.setdefault(name, []).extend(new_parts)
        return {"created": False, "created_index": existing["created_index"]}

    @staticmethod
    def _placements(lo: int, hi: int, proposed: Any) -> list[dict[str, Any]]:
        """Placement records of partitions ``lo..hi-1`` (epoch 1), validated.

        Epoch 1 is a partition's first (``replication.partition.FIRST_EPOCH``):
        every later placement of it has a later epoch, so its leader in epoch 1
        leads an empty log, and its followers derive that leader's control
        record at offset 0 (issue 23, create41)."""
        if not isinstance(proposed, list):
            raise TypeError("placement must be a list")
        out = []
        for p in range(lo, hi):
            reps = _node_ids(proposed[p] if p < len(proposed) and proposed[p] else [], f"placement of {p}")
            out.append({"replicas": reps, "leader": reps[0] if reps else "", "epoch": 1})
        return out

    def _op_delete_topic(self, index: int, cmd: dict[str, Any]) -> Result:
        name = cmd["name"]
        if name not in self.topics:
            return _error("topic_not_found", f"topic {name!r} does not exist", 404)
        del self.topics[name]
        self.placement.pop(name, None)
        self.remote.pop(name, None)
        return {"deleted": True}

    def _op_put_group(self, index: int, cmd: dict[str, Any]) -> Result:
        topic, group = cmd["topic"], cmd["group"]
        if not isinstance(group, str) or not 0 < len(group) <= 249:
            raise TypeError("group must be a name")
        t = self.topics.get(topic)
        if t is None:
            return _error("topic_not_found", f"topic {topic!r} does not exist", 404)
        config = dict(cmd["config"])
        if not all(isinstance(k, str) for k in config):
            raise TypeError("group config keys must be strings")
        created = group not in t["groups"]
        t["groups"][group] = config
        return {"created": created}

    def _op_delete_group(self, index: int, cmd: dict[str, Any]) -> Result:
        topic, group = cmd["topic"], cmd["group"]
        t = self.topics.get(topic)
        if t is None or group not in t["groups"]:
            return _error("group_not_found", f"group {group!r} does not exist on topic {topic!r}", 404)
        del t["groups"][group]
        return {"deleted": True}

    def _op_put_node(self, index: int, cmd: dict[str, Any]) -> Result:
        node_id, raft_id = cmd["node_id"], int(cmd["raft_id"])
        if not isinstance(node_id, str) or not _NODE.match(node_id):
            raise ValueError("node_id must be a node id")
        if not 0 < raft_id < 1 << 63:
            raise ValueError("raft_id must be a positive 63-bit integer")
        peer, http = str(cmd.get("peer", "")), str(cmd.get("http", ""))
        if len(peer) > 300 or len(http) > 300:
            raise ValueError("peer and http addresses are at most 300 characters")
        self.nodes[node_id] = {"raft_id": raft_id, "peer": peer, "http": http}
        return {"ok": True}

    def _op_set_partition(self, index: int, cmd: dict[str, Any]) -> Result:
        """Commit a partition's replicas, leader and epoch; the epoch must grow (fencing)."""
        name, p = cmd["topic"], int(cmd["partition"])
        parts = self.placement.get(name)
        if parts is None or not 0 <= p < len(parts):
            return _error("partition_not_found", f"topic {name!r} has no partition {p}", 404)
        cur = parts[p]
        epoch = int(cmd["epoch"])
        if epoch >= 1 << 63:
            raise ValueError("epoch out of range")
        if epoch <= cur["epoch"]:
            return _error("stale_epoch", f"epoch {epoch} is not above {cur['epoch']}", 409)
        entry: dict[str, Any] = {
            "replicas": _node_ids(cmd["replicas"], "replicas"),
            "leader": str(cmd["leader"]),
            "epoch": epoch,
        }
        # The replica set the controller steers towards instead of rendezvous
        # hashing's choice (a load move); kept until a command replaces it.
        goal = cmd["goal"] if "goal" in cmd else cur.get("goal")
        if goal is not None:
            if not _node_ids(goal, "goal"):
                raise TypeError("goal must be a non-empty list of node ids")
            entry["goal"] = list(goal)
        parts[p] = entry
        return {"epoch": epoch}

    def _op_set_partitions(self, index: int, cmd: dict[str, Any]) -> Result:
        """Several ``set_partition`` commands in one entry (``items``, at most
        :data:`MAX_PARTITION_BATCH`): the controller commits a dead node's
        failovers in one proposal (issue 23).  Each item is applied exactly as
        a ``set_partition`` of its own -- its epoch must grow (fencing), a
        refused or malformed item changes nothing and does not stop the
        others; the result lists each item's result in order."""
        items = cmd["items"]
        if not isinstance(items, list) or len(items) > MAX_PARTITION_BATCH:
            raise TypeError(f"items must be a list of at most {MAX_PARTITION_BATCH} partitions")
        results: list[Result] = []
        for item in items:
            if not isinstance(item, dict):
                results.append(_error("malformed_command", "malformed set_partitions item", 400))
                continue
            try:
                results.append(self._op_set_partition(index, item))
            except (KeyError, TypeError, ValueError) as e:
                results.append(_error("malformed_command", f"malformed set_partitions item: {e}", 400))
        return {"results": results}

    def _remote_target(self, cmd: dict[str, Any]) -> tuple[str, int, RemoteState] | Result:
        """The partition a remote-segment command is for and its current state,
        or the refusal: the topic (this incarnation of it: ``created_index``)
        and partition must exist, and ``epoch`` must be the partition's
        current leader epoch -- only its leader changes the list."""
        name, p = cmd["topic"], int(cmd["partition"])
        t = self.topics.get(name)
        parts = self.placement.get(name)
        if t is None or parts is None or int(cmd["created_index"]) != t["created_index"]:
            return _error("topic_not_found", f"topic {name!r} does not exist", 404)
        if not 0 <= p < len(parts):
            return _error("partition_not_found", f"topic {name!r} has no partition {p}", 404)
        epoch = int(cmd["epoch"])
        if epoch != parts[p]["epoch"]:
            return _error("stale_epoch", f"epoch {epoch} is not the current {parts[p]['epoch']}", 409)
        return name, p, self.remote_state(name, p)

    def _op_remote_add(self, index: int, cmd: dict[str, Any]) -> Result:
        """The leader uploaded (or adopted) segments: append them to the
        partition's remote list, which they must continue exactly."""
        target = self._remote_target(cmd)
        if isinstance(target, dict):
            return target
        name, p, state = target
        rows = cmd["segments"]
        if not isinstance(rows, list):
            raise TypeError("segments must be a list")
        objs = [RemoteObject.from_row(r) for r in rows]
        try:
            new = state.added(objs)
        except ValueError as e:
            return _error("remote_gap", str(e), 409)
        self.remote.setdefault(name, {})[p] = new.to_doc()
        return {"end": new.end}

    def _op_remote_trim(self, index: int, cmd: dict[str, Any]) -> Result:
        """Retention (by the leader): the partition's log starts at ``start``;
        remote segments wholly below it leave the list.  The result names
        them, so the proposer deletes their objects -- once."""
        target = self._remote_target(cmd)
        if isinstance(target, dict):
            return target
        name, p, state = target
        start = int(cmd["start"])
        if start < 0:
            raise ValueError("start must not be negative")
        new, gone = state.trimmed(start)
        self.remote.setdefault(name, {})[p] = new.to_doc()
        return {"start": new.start, "dropped": [o.to_row() for o in gone]}

    def remote_state(self, topic: str, partition: int) -> RemoteState:
        """A partition's shared remote state (empty when nothing moved to the object store)."""
        doc = self.remote.get(topic, {}).get(partition)
        if doc is None:
            return RemoteState()
        cached = self._remote_parsed.get((topic, partition))
        if cached is not None and cached[0] is doc:
            return cached[1]
        state = RemoteState.from_doc(doc)
        self._remote_parsed[(topic, partition)] = (doc, state)
        return state

    def _op_set_drained(self, index: int, cmd: dict[str, Any]) -> Result:
        """Mark a registered node drained (``drained: true``) or not."""
        node_id, drained = cmd["node_id"], cmd["drained"]
        if not isinstance(node_id, str) or not _NODE.match(node_id) or not isinstance(drained, bool):
            raise ValueError("node_id must be a node id and drained a boolean")
        if node_id not in self.nodes:
            return _error("node_not_found", f"node {node_id!r} is not a member of the cluster", 404)
        was = node_id in self.drained
        if drained and not was:
            self.drained = sorted([*self.drained, node_id])
        elif not drained and was:
            self.drained = [n for n in self.drained if n != node_id]
        return {"node_id": node_id, "drained": drained, "changed": drained != was}

    def _op_latch_features(self, index: int, cmd: dict[str, Any]) -> Result:
        """Latch cluster features on (they are never unlatched)."""
        new = valid_latch(cmd["features"])
        merged = sorted(set(self.features) | set(new))
        if len(merged) > MAX_LATCHED:
            raise ValueError(f"at most {MAX_LATCHED} features can be latched")
        changed = merged != self.features
        self.features = merged
        return {"features": merged, "changed": changed}

    def _op_put_pipeline(self, index: int, cmd: dict[str, Any]) -> Result:
        """Declare (or change) a pipeline; a new one also gets its position, the group
        ``pipeline.NAME`` on the source (``group_config``), in the same entry.  Its
        source cannot change (the position is a group of the source)."""
        name = cmd["name"]
        spec = pipeline_definition(name, cmd["spec"])
        if isinstance(spec, tuple):
            return _error(spec[0], spec[1], 400)
        for role in ("source", "target", "dead_letter_topic"):
            if spec.get(role) is not None and spec[role] not in self.topics:
                return _error("topic_not_found", f"{role} topic {spec[role]!r} does not exist", 400)
        old = self.pipelines.get(name)
        if old is not None and old["source"] != spec["source"]:
            return _error("pipeline_source_change", "a pipeline's source cannot change: delete it first", 409)
        group_config = cmd["group_config"]
        if not isinstance(group_config, dict) or not all(isinstance(k, str) for k in group_config):
            raise TypeError("group_config must be a map")
        groups = self.topics[spec["source"]]["groups"]
        group = f"pipeline.{name}"
        if group not in groups:
            groups[group] = dict(group_config)
        self.pipelines[name] = spec
        return {"created": old is None, "pipeline": dict(spec)}

    def _op_delete_pipeline(self, index: int, cmd: dict[str, Any]) -> Result:
        """Forget a pipeline and its position (the group ``pipeline.NAME``)."""
        name = cmd["name"]
        old = self.pipelines.pop(name, None) if isinstance(name, str) else None
        if old is None:
            return _error("pipeline_not_found", f"pipeline {str(name)[:200]!r} does not exist", 404)
        t = self.topics.get(old["source"])
        if t is not None:
            t["groups"].pop(f"pipeline.{name}", None)
        return {"deleted": True, "source": old["source"]}

    def _op_noop(self, index: int, cmd: dict[str, Any]) -> Result:
        return {"ok": True}

    # -- views ---------------------------------------------------------------

    def node_name(self, raft_id: int) -> str | None:
        """The node id Raft knows as ``raft_id``, if registered."""
        for name, n in self.nodes.items():
            if n["raft_id"] == raft_id:
                return name
        return None

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (a Raft snapshot's data)."""
        doc: dict[str, Any] = {
            "v": 1,
            "applied": self.applied,
            "topics": self.topics,
            "placement": self.placement,
            "nodes": self.nodes,
            "remote": self.remote,
        }
        if self.drained:  # absent while none is: an older node reads the snapshot as before
            doc["drained"] = self.drained
        if self.features:  # likewise: absent until a feature is latched
            doc["features"] = self.features
        if self.pipelines:  # likewise (and the cluster feature `pipelines` is on before one exists)
            doc["pipelines"] = self.pipelines
        return msgspec.msgpack.encode(doc)

    @classmethod
    def restore(cls, data: bytes) -> Metadata:
        """The state a :meth:`snapshot` holds (empty bytes: the empty state);
        :class:`BadSnapshot` (a ``ValueError``) when it does not check out
        (:func:`check_snapshot`)."""
        m = cls()
        if not data:
            return m
        check_snapshot(data)
        raw = msgspec.msgpack.decode(data)
        m.applied = int(raw["applied"])
        m.topics = raw["topics"]
        m.placement = raw["placement"]
        m.nodes = raw["nodes"]
        m.remote = raw.get("remote") or {}
        m.drained = sorted(raw.get("drained") or [])
        m.features = sorted(raw.get("features") or [])
        m.pipelines = raw.get("pipelines") or {}
        return m

    def copy(self) -> Metadata:
        """A deep copy (tests compare replicas)."""
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Metadata):
            return NotImplemented
        return (
            self.topics,
            self.placement,
            self.nodes,
            self.remote,
            self.drained,
            self.features,
            self.pipelines,
        ) == (
            other.topics,
            other.placement,
            other.nodes,
            other.remote,
            other.drained,
            other.features,
            other.pipelines,
        )

    __hash__ = None  # type: ignore[assignment]
