"""Server-side filters and projections of subscriptions (``?filter=EXPR``, ``?fields=``),
pure: records in, records out, no Twisted.

**Filters** are JMESPath expressions (https://jmespath.org) evaluated over a view of each
message::

    {"key": ..., "headers": {...}, "id": ..., "offset": N, "partition": P,
     "timestamp": MS, "payload": <the payload parsed as JSON, or null>}

and a message is delivered when the result is truthy in JMESPath's sense (not ``false``,
``null``, ``""``, ``[]`` or ``{}``), e.g. ``headers.kind == 'order' && payload.total > `100```.
JMESPath was chosen because it is already installed (a dependency of boto3, which Sprawl
needs for S3), is a specification with compliance tests rather than one library's dialect,
is side-effect free (no ``eval``, no I/O, no loops the expression controls: every operation
walks part of its input once, so its cost grows with the expression times the payload), and
has a well-kept pure-Python implementation.

**Bounds** (a filter comes from any subscriber): the expression at most
:data:`MAX_EXPRESSION_CHARS` characters, :data:`MAX_AST_NODES` nodes and
:data:`MAX_AST_DEPTH` levels deep; payloads larger than :data:`MAX_PAYLOAD_BYTES` are not
parsed (``payload`` is null in their view), so one evaluation walks at most that much JSON.
A bad expression is a :class:`FilterError` naming JMESPath's error (a 400 at the HTTP edge).
An expression that fails on one message (a type error in a function, say) does not select it.

**Projections** (``fields=a,b.c``) keep only those dotted paths of a JSON-object payload;
any other payload passes unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jmespath
import msgspec
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions

from sprawl.log.record import Record

MAX_EXPRESSION_CHARS = 1024
MAX_AST_NODES = 256
MAX_AST_DEPTH = 24
#: Payloads larger than this are not parsed for a filter or a projection.
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_FIELDS = 32
MAX_FIELD_DEPTH = 8
_FIELD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$@")
_FUNCTIONS = frozenset(Functions.FUNCTION_TABLE)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class FilterError(ValueError):
    """A filter or projection that cannot be used; the message says why."""


def _walk(node: Any, depth: int, count: list[int]) -> None:
    count[0] += 1
    if count[0] > MAX_AST_NODES:
        raise FilterError(f"filter too complex: more than {MAX_AST_NODES} nodes")
    if depth > MAX_AST_DEPTH:
        raise FilterError(f"filter nested too deeply: more than {MAX_AST_DEPTH} levels")
    if node.get("type") == "function_expression" and node.get("value") not in _FUNCTIONS:
        raise FilterError(f"invalid filter: unknown function {node.get('value')}()")
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _walk(child, depth + 1, count)


@functools.lru_cache(maxsize=256)
def compile_filter(expression: str) -> Any:
    """The compiled JMESPath expression; :class:`FilterError` when it is too long, too
    complex or not JMESPath."""
    if not expression.strip():
        raise FilterError("filter is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise FilterError(f"filter longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        parsed = jmespath.compile(expression)
    except JMESPathError as exc:
        raise FilterError(f"invalid filter: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise FilterError(f"filter nested too deeply: more than {MAX_AST_DEPTH} levels") from None
    _walk(parsed.parsed, 0, [0])
    return parsed


def parse_fields(spec: str) -> tuple[tuple[str, ...], ...]:
    """``a,b.c`` as paths; :class:`FilterError` for an empty, too long or odd list."""
    paths = []
    for item in spec.split(","):
        item = item.strip()
        parts = tuple(item.split("."))
        if not item or any(not p or not set(p) <= _FIELD_CHARS for p in parts):
            raise FilterError(f"invalid field {item!r}: dotted names of letters, digits, '_', '-'")
        if len(parts) > MAX_FIELD_DEPTH:
            raise FilterError(f"field {item!r} deeper than {MAX_FIELD_DEPTH} levels")
        paths.append(parts)
    if len(paths) > MAX_FIELDS:
        raise FilterError(f"more than {MAX_FIELDS} fields")
    return tuple(paths)


def _payload_json(r: Record) -> Any:
    if not r.is_text or len(r.payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        return _decode(r.payload)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


def view(r: Record, with_payload: bool = True) -> dict[str, Any]:
    """What a filter sees of a record (see the module docstring); ``with_payload=False``
    leaves the payload unparsed (null) for a filter that does not name it."""
    return {
        "key": r.key,
        "headers": r.headers or {},
        "id": r.id,
        "offset": r.offset,
        "partition": r.partition,
        "timestamp": r.timestamp,
        "payload": _payload_json(r) if with_payload else None,
    }


def _truthy(value: Any) -> bool:
    return not (value is None or value is False or value in ("", [], {}))


def _project(value: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        cur: Any = value
        for name in path:
            if not isinstance(cur, dict) or name not in cur:
                break
            cur = cur[name]
        else:
            node = out
            for name in path[:-1]:
                nxt = node.get(name)
                if not isinstance(nxt, dict):
                    nxt = node[name] = {}
                node = nxt
            node[path[-1]] = cur
    return out


class Selection:
    """A compiled ``filter`` and/or ``fields`` of one subscription."""

    def __init__(self, expression: str | None = None, fields: str | None = None) -> None:
        self.expression = expression
        self._filter = compile_filter(expression) if expression is not None else None
        # A filter that never names the payload (on key or headers, say) skips parsing it.
        self._payload = expression is not None and "payload" in expression
        self.fields = parse_fields(fields) if fields is not None else None
        #: Records looked at and records selected, for the caller's accounting.
        self.seen = 0
        self.selected = 0

    @classmethod
    def of(cls, expression: str | None, fields: str | None) -> Selection | None:
        """A selection, or None when neither is given."""
        if expression is None and fields is None:
            return None
        return cls(expression, fields)

    def matches(self, r: Record) -> bool:
        """Whether the filter selects ``r`` (always, without a filter; never a control record)."""
        if r.control:
            return False
        if self._filter is None:
            return True
        try:
            result = self._filter.search(view(r, self._payload))
        except (JMESPathError, TypeError, ValueError, RecursionError):
            return False
        return _truthy(result)

    def shape(self, r: Record) -> Record:
        """``r`` with its payload projected to the fields (unchanged without fields, or when
        the payload is not a JSON object)."""
        if self.fields is None:
            return r
        value = _payload_json(r)
        if not isinstance(value, dict):
            return r
        payload = _encode(_project(value, self.fields))
        return Record(r.offset, r.partition, r.timestamp, r.id, r.key, r.headers, payload, True)

    def one(self, r: Record) -> Record | None:
        """``r`` shaped when selected, else None."""
        self.seen += 1
        if not self.matches(r):
            return None
        self.selected += 1
        return self.shape(r)

    def apply(self, recs: Iterable[Record]) -> list[Record]:
        """The records with every one not selected replaced by a control record at its
        offset (taking no frame, moving cursors past it) and the selected ones shaped."""
        out = []
        for r in recs:
            if r.control:
                out.append(r)
                continue
            got = self.one(r)
            out.append(got if got is not None else _skipped(r))
        return out


def _skipped(r: Record) -> Record:
    return Record(r.offset, r.partition, r.timestamp, None, None, None, b"", False, control=True)
