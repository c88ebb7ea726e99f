"""Derived-topic pipelines, the pure core: what a declared pipeline writes to its target
for a run of source records, and where it goes on from.  No Twisted, no I/O.

A pipeline (``PUT /v1/pipelines/P``) reads every partition of a ``source`` topic and
publishes to a ``target`` topic the records its ``filter`` selects (a
:mod:`sprawl.pubsub.filters` expression), their payloads projected to ``fields``, each
keyed by ``key`` (a JMESPath expression over the same view as the filter; without it
the source key is kept), with the publish durability ``acks`` (``quorum`` unless said).

**Exactly once, by construction of the ids.**  Each target record's id is derived from
(pipeline, source partition, source offset) (:func:`derived_id`), so a retry of a publish
or a new leader re-running the same source offsets after a failover is a duplicate the
target's dedup window drops.  A target record without a key goes to the target partition
its derived id names (:func:`target_partition`), never to a round-robin one, so a re-run
meets the first copy in the same partition's window.  The position (the first source offset not yet handled) is
committed like a consumer group's; the adapter publishes first and commits after, so a
crash in between re-publishes (deduplicated) rather than skips.  The promise holds as
long as a re-run happens within the target's dedup window.

Each target record carries its origin in headers (``sprawl-pipeline``,
``sprawl-source-partition``, ``sprawl-source-offset``), after the source's own.

**A record the target can never take** (bigger than the target's ``max_message_bytes``,
e.g. a smaller target limit or a key remap beyond the origin headers' allowance:
:meth:`PipelineCore.rejects`) is handled as the definition's ``on_reject`` says
(Kafka Connect's ``errors.tolerance`` and dead-letter queue, opt-in):

* ``stall`` (the default): the round fails and is re-run; the pipeline does not move
  past the record until the target can take it (its limit raised), and says why
  (``stalled``);
* ``skip``: the record is left out (counted, logged), the pipeline goes on;
* ``dead-letter``: the source record goes to ``dead_letter_topic`` instead, with the
  origin headers and the reason (``sprawl-reject-reason``) (:func:`dead_letter`), under
  the same derived id (exactly once there too); a record the dead-letter topic cannot
  take either stalls the pipeline.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from jmespath.exceptions import JMESPathError

from sprawl.errors import BadRequest
from sprawl.log.record import Record
from sprawl.pubsub.filters import MAX_EXPRESSION_CHARS, FilterError, Selection, compile_filter, view
from sprawl.pubsub.names import check_topic_name

#: The fields of a pipeline's definition (``PUT /v1/pipelines/P``).
FIELDS = ("source", "target", "filter", "fields", "key", "acks", "on_reject", "dead_letter_topic")
#: What a pipeline does with a record its target can never take (module docstring).
ON_REJECT = ("stall", "skip", "dead-letter")
#: The header of a dead-lettered record that says why the target refused it.
REJECT_HEADER = "sprawl-reject-reason"
#: The publish durabilities a pipeline may ask for (as ``POST .../messages?acks=``).
ACKS = ("quorum", "leader", "none")
#: Pipeline names follow the topic name rule, shorter: the position's group is ``pipeline.NAME``.
MAX_NAME = 200
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class PipelineSpec:
    """A declared pipeline: ``source`` → (``filter``, ``fields``, ``key``) → ``target``."""

    name: str
    source: str
    target: str
    filter: str | None = None
    fields: str | None = None
    key: str | None = None
    acks: str = "quorum"
    on_reject: str = "stall"
    dead_letter_topic: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (as stored in the metadata and shown by ``GET``).  ``on_reject`` and
        ``dead_letter_topic`` only when not the default: a pipeline that does not use them
        stays the definition a node of the release before reads."""
        out = {
            "pipeline": self.name,
            "source": self.source,
            "target": self.target,
            "filter": self.filter,
            "fields": self.fields,
            "key": self.key,
            "acks": self.acks,
        }
        if self.on_reject != "stall":
            out["on_reject"] = self.on_reject
            out["dead_letter_topic"] = self.dead_letter_topic
        return out

    @classmethod
    def from_body(cls, name: str, body: Any) -> PipelineSpec:
        """Validate a ``PUT /v1/pipelines/{name}`` body; :class:`BadRequest` naming the fault."""
        check_topic_name(name)
        if len(name) > MAX_NAME:
            raise BadRequest(f"pipeline names are at most {MAX_NAME} characters", code="invalid_field")
        if not isinstance(body, dict):
            raise BadRequest("a pipeline is a JSON object", code="invalid_field")
        unknown = set(body) - set(FIELDS) - {"pipeline"}
        if unknown:
            raise BadRequest(f"unknown pipeline field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        for need in ("source", "target"):
            if not isinstance(body.get(need), str):
                raise BadRequest(f"{need} must be a topic name", code="invalid_field")
            check_topic_name(body[need])
        if body["source"] == body["target"]:
            raise BadRequest("target must differ from source", code="invalid_field")
        if not isinstance(body.get("pipeline", name), str):
            raise BadRequest("pipeline must be the pipeline's name", code="invalid_field")
        for opt in ("filter", "fields", "key"):
            if body.get(opt) is not None and not isinstance(body[opt], str):
                raise BadRequest(f"{opt} must be a string", code="invalid_field")
            if len(body.get(opt) or "") > MAX_EXPRESSION_CHARS:
                raise BadRequest(
                    f"{opt} is longer than {MAX_EXPRESSION_CHARS} characters", code="invalid_filter"
                )
        acks = body.get("acks") if body.get("acks") is not None else "quorum"
        if acks not in ACKS:
            raise BadRequest(f"acks must be one of {', '.join(ACKS)}", code="invalid_field")
        on_reject = body.get("on_reject") if body.get("on_reject") is not None else "stall"
        if on_reject not in ON_REJECT:
            raise BadRequest(f"on_reject must be one of {', '.join(ON_REJECT)}", code="invalid_field")
        dlq = body.get("dead_letter_topic")
        if on_reject == "dead-letter":
            if not isinstance(dlq, str):
                raise BadRequest('on_reject "dead-letter" needs a dead_letter_topic', code="invalid_field")
            check_topic_name(dlq)
            if dlq in (body["source"], body["target"]):
                raise BadRequest("dead_letter_topic must differ from source and target", code="invalid_field")
        elif dlq is not None:
            raise BadRequest('dead_letter_topic is only for on_reject "dead-letter"', code="invalid_field")
        spec = cls(
            name,
            body["source"],
            body["target"],
            body.get("filter"),
            body.get("fields"),
            body.get("key"),
            acks,
            on_reject,
            dlq,
        )
        try:
            PipelineCore(spec)
        except FilterError as e:
            raise BadRequest(str(e), code="invalid_filter") from None
        return spec


def derived_id(pipeline: str, partition: int, offset: int) -> str:
    """The target id of the record a pipeline derives from one source offset: the same on
    every node, every retry and every leader (at most 60 characters)."""
    tag = hashlib.blake2b(pipeline.encode(), digest_size=8).hexdigest()
    return f"pl-{tag}-{partition}-{offset}"


def target_partition(record: Record, partitions: int) -> int:
    """The target partition of a derived record: by its key (as any publish), else by
    its derived id -- the same on every re-run, so the target's dedup sees it."""
    name = record.key if record.key is not None else record.id or ""
    return zlib.crc32(name.encode()) % partitions if partitions > 1 else 0


def reject_reason(record: Record, max_message_bytes: int) -> str | None:
    """Why a topic of ``max_message_bytes`` can never take ``record`` (as a publish
    measures it: payload, key and headers, the origin headers' allowance aside), or None."""
    size = record.limited_bytes
    if size <= max_message_bytes:
        return None
    return (
        f"message of {size} bytes (payload {len(record.payload)}, key and headers "
        f"{size - len(record.payload)}) exceeds the topic's max_message_bytes {max_message_bytes}"
    )


def dead_letter(pipeline: str, partition: int, source: Record, reason: str) -> Record:
    """The dead-letter record of a ``source`` record (of source ``partition``) the target
    refused: its payload, key and headers, the origin headers and ``reason``
    (:data:`REJECT_HEADER`), under the id the target record would have had (so a re-run
    is deduplicated there too)."""
    headers = dict(source.headers or {})
    headers.update(
        {
            "sprawl-pipeline": pipeline,
            "sprawl-source-partition": str(partition),
            "sprawl-source-offset": str(source.offset),
            REJECT_HEADER: reason[:300],
        }
    )
    rid = derived_id(pipeline, partition, source.offset)
    return Record(-1, 0, 0, rid, source.key, headers, source.payload, source.is_text)


class PipelineCore:
    """One pipeline's mapping of source records to target records."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.selection = Selection(spec.filter, spec.fields)
        self._key = compile_filter(spec.key) if spec.key is not None else None
        self._key_payload = spec.key is not None and "payload" in spec.key

    def step(self, partition: int, position: int, records: Iterable[Record]) -> tuple[list[Record], int]:
        """The target records for the source ``records`` of ``partition`` at or after
        ``position`` (in offset order), and the new position (one past the last record
        looked at; control records and filtered-out ones only move it)."""
        out: list[Record] = []
        for r in records:
            if r.offset < position:
                continue
            position = r.offset + 1
            got = self.selection.one(r) if not r.control else None
            if got is None:
                continue
            headers = dict(got.headers or {})
            headers.update(
                {
                    "sprawl-pipeline": self.spec.name,
                    "sprawl-source-partition": str(r.partition),
                    "sprawl-source-offset": str(r.offset),
                }
            )
            rid = derived_id(self.spec.name, partition, r.offset)
            out.append(Record(-1, 0, 0, rid, self._key_of(r), headers, got.payload, got.is_text))
        return out, position

    def rejects(
        self, derived: list[Record], max_message_bytes: int
    ) -> tuple[list[Record], list[tuple[Record, str]]]:
        """Split :meth:`step`'s records into those a target of ``max_message_bytes``
        takes and those it never will, each with the reason (order kept)."""
        ok: list[Record] = []
        refused: list[tuple[Record, str]] = []
        for r in derived:
            why = reject_reason(r, max_message_bytes)
            if why is None:
                ok.append(r)
            else:
                refused.append((r, why))
        return ok, refused

    def _key_of(self, r: Record) -> str | None:
        if self._key is None:
            return r.key
        try:
            value = self._key.search(view(r, self._key_payload))
        except (JMESPathError, TypeError, ValueError, RecursionError):
            return None
        if value is None:
            return None
        return value if isinstance(value, str) else _encode(value).decode()[:1024]
