"""How records become what a stream writes: frames in order up to a byte
bound (:func:`batch`), one SSE event per batch of messages (:func:`batch_event`,
the ``batch`` stream format), one NDJSON line per batch (:func:`ndjson_batch`,
the ``ndjson`` format) and the node's shared cache of those (:class:`BatchEvents`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import msgspec

from sprawl.log.record import RECORD_OVERHEAD, Record

if TYPE_CHECKING:
    from sprawl.topics import Topic


def batch(
    recs: list[Record], encode: Callable[[Record], bytes], max_bytes: int
) -> tuple[list[bytes], int, int, int]:
    """Encode ``recs`` in order until the frames reach ``max_bytes`` (at least
    one frame is always taken, however large).  Control records take no frame.

    Returns ``(frames, used, delivered, message_bytes)``: the frames, how many
    of ``recs`` they cover (control records included; the cursor moves past
    ``recs[used - 1]``), how many messages they carry and those messages'
    :attr:`~sprawl.log.record.Record.message_bytes`."""
    frames = [encode(r) for r in recs if not r.control]
    if sum(map(len, frames)) <= max_bytes:
        # The common case, all of it (at C speed: this is the fan-out path).
        n = len(frames)
        size = sum(map(_size, recs))
        if n < len(recs):
            size -= sum(r.size for r in recs if r.control)
        return frames, len(recs), n, size - RECORD_OVERHEAD * n
    frames = []
    append = frames.append
    total = 0
    size = 0
    used = 0
    for r in recs:
        if not r.control:
            f = encode(r)
            total += len(f)
            if total > max_bytes and frames:
                break
            append(f)
            size += r.size
        used += 1
    return frames, used, len(frames), size - RECORD_OVERHEAD * len(frames)


_size = attrgetter("size")


_encode = msgspec.json.Encoder().encode


class _Message(msgspec.Struct, gc=False):
    """The keys every message has, in :meth:`Record.to_dict`'s order (a subclass's
    fields come after these: the payload last)."""

    offset: int
    partition: int
    id: str | None
    timestamp: int
    key: str | None
    headers: dict[str, str]


class _Text(_Message, gc=False):
    """A text message as :meth:`Record.to_dict` has it (the same keys in the same order)."""

    payload: str


class _Binary(_Message, gc=False):
    """A binary message as :meth:`Record.to_dict` has it (msgspec writes bytes as base64)."""

    payload_b64: bytes


def _shown(r: Record) -> _Text | _Binary:
    """``r`` as the encoder writes it, byte for byte its :meth:`Record.to_json`."""
    if r.is_text:
        return _Text(
            r.offset,
            r.partition,
            r.id,
            r.timestamp,
            r.key,
            r.headers or {},
            r.payload.decode("utf-8", "replace"),
        )
    return _Binary(r.offset, r.partition, r.id, r.timestamp, r.key, r.headers or {}, r.payload)


#: Records up to which :func:`json_array` encodes a batch in one call (a caught-up stream's
#: writes are small; a backlog read of more goes record by record, cut at the byte bound).
ONE_CALL_RECORDS = 1000


def json_array(recs: list[Record], max_bytes: int) -> tuple[bytes, int, int, int]:
    """The messages of ``recs`` as one JSON array (each as :meth:`Record.to_json` has it),
    cut where :func:`batch` cuts; returns ``(array, used, delivered, message_bytes)``.
    Up to :data:`ONE_CALL_RECORDS` records it is one encoder call over them (as structs with
    the dicts' keys: byte for byte the joined frames, a fifth to a quarter of the CPU, and no
    per-record encoding cached);
    when that is over ``max_bytes``, or for more records, :func:`batch`'s frames joined."""
    if len(recs) <= ONE_CALL_RECORDS:
        msgs = [_shown(r) for r in recs if not r.control]
        out = _encode(msgs)
        if len(out) - 1 - len(msgs) <= max_bytes or len(msgs) <= 1:
            # (the frames alone, without the brackets and commas, as batch counts them)
            n = len(msgs)
            size = sum(map(_size, recs))
            if n < len(recs):
                size -= sum(r.size for r in recs if r.control)
            return out, len(recs), n, size - RECORD_OVERHEAD * n
    frames, used, n, nbytes = batch(recs, Record.to_json, max_bytes)
    return b"[" + b",".join(frames) + b"]", used, n, nbytes


def batch_event(p: int, recs: list[Record], max_bytes: int) -> tuple[bytes, int, int, int]:
    """``recs`` as one SSE event of the ``batch`` stream format: ``event: batch``,
    ``id: P:OFFSET`` (the last offset covered, so ``Last-Event-ID`` resumes after
    it) and ``data:`` a JSON array of the messages (each as in the default
    format).  Returns ``(event, used, delivered, message_bytes)`` as :func:`batch`
    does; the event is empty when the records were control records only."""
    array, used, n, nbytes = json_array(recs, max_bytes)
    if not n:
        return b"", used, 0, 0
    head = b"event: batch\nid: %d:%d\ndata: " % (p, recs[used - 1].offset)
    return head + array + b"\n\n", used, n, nbytes


def ndjson_batch(p: int, recs: list[Record], max_bytes: int) -> tuple[bytes, int, int, int]:
    """``recs`` as one line of the ``ndjson`` stream format:
    ``{"id": "P:OFFSET", "partition": P, "messages": [...]}`` and a newline (``id``
    as the ``batch`` event's, the messages as in the default format).  Returns what
    :func:`batch_event` does; the line is empty when the records were control records only."""
    array, used, n, nbytes = json_array(recs, max_bytes)
    if not n:
        return b"", used, 0, 0
    head = b'{"id":"%d:%d","partition":%d,"messages":' % (p, recs[used - 1].offset, p)
    return head + array + b"}\n", used, n, nbytes


#: How each batched stream format encodes a batch (``format=`` -> encoder).
BATCH_ENCODERS: dict[str, Callable[[int, list[Record], int], tuple[bytes, int, int, int]]] = {
    "batch": batch_event,
    "ndjson": ndjson_batch,
}


class BatchEvents:
    """The ``batch`` events encoded lately, shared by every stream of the node.

    Subscribers of a partition that are caught up read the same records when
    its high watermark moves, so the first encodes the event and the others
    reuse it.  A hit needs the same topic object and the very record objects at
    both ends (the hot tail's), so a recreated topic or a re-read from storage
    is encoded afresh.  Bounded by ``max_bytes`` of events (oldest dropped)."""

    def __init__(self, max_bytes: int = 8 * 1000**2) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._events: OrderedDict[
            tuple[str, int, str], tuple[Any, Record, Record, int, int, tuple[bytes, int, int, int]]
        ] = OrderedDict()

    def event(
        self, topic: Topic, p: int, recs: list[Record], max_bytes: int, fmt: str = "batch"
    ) -> tuple[bytes, int, int, int]:
        """:func:`batch_event` (or the encoder of ``fmt``, :data:`BATCH_ENCODERS`) of
        ``recs``, from the cache where it can be."""
        key = (topic.name, p, fmt)
        hit = self._events.get(key)
        if (
            hit is not None
            and hit[0] is topic
            and hit[1] is recs[0]
            and hit[2] is recs[-1]
            and hit[3] == len(recs)
            and hit[4] == max_bytes
        ):
            self.hits += 1
            return hit[5]
        out = BATCH_ENCODERS[fmt](p, recs, max_bytes)
        if hit is not None:
            self.bytes -= len(hit[5][0])
            del self._events[key]
        if len(out[0]) <= self.max_bytes:
            self._events[key] = (topic, recs[0], recs[-1], len(recs), max_bytes, out)
            self.bytes += len(out[0])
            while self.bytes > self.max_bytes:
                _, old = self._events.popitem(last=False)
                self.bytes -= len(old[5][0])
        return out


#: The stream formats of ``GET .../stream?format=``: one SSE event per message
#: (the default), one per batch of messages, or one NDJSON line per batch.
STREAM_FORMATS = ("sse", "batch", "ndjson")


def deliverable(recs: list[Record]) -> list[Record]:
    """``recs`` without control records (which take offsets but are never delivered)."""
    for r in recs:
        if r.control:
            return [r for r in recs if not r.control]
    return recs
