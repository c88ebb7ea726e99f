"""The per-partition families of ``/metrics`` written as text directly, each partition's lines
kept while its figures stand (issue 23, metrics40).

Through prometheus_client a 10,000-partition node's render took 450 ms of CPU (in process;
0.5-0.67 s on a loaded node): 70,000 ``add_metric`` calls and as many ``sample_line`` calls,
each validating and escaping the same label names again.  :class:`PartitionExposition`
writes the same text -- names, label order (sorted, as prometheus_client writes them),
label-value escaping and value formatting (:func:`~prometheus_client.utils.floatToGoString`)
identical -- and keeps each partition's lines keyed by the figures they are made of:

* the high watermark, log start, log end and hot tail bytes, read from the log;
* the log's segment list (the object) and its length.  The LMDB and S3 tier bytes are sums
  over the segments: instead of walking them every scrape, the key holds the list, compared
  by identity first (by value if another list).  A :class:`~sprawl.log.partition.PartitionLog`
  changes a segment's bytes or tier only by appending (the log end moves) or by replacing the
  list (truncation, reset, retention, following the remote tier, recovery):
  ``tests/unit/node/test_metrics_exposition.py`` drives each of those and checks the kept
  lines against a fresh render.

A scrape with nothing changed costs a tuple built and compared per partition.  The groups'
families (lag, leased messages) are written every scrape (a group's lag is computed).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from sprawl.topics import Topic

#: The per-partition families, in the order they are written: name, help, labels.
PARTITION_FAMILIES = (
    ("sprawl_partition_high_watermark", "First offset consumers cannot see yet"),
    ("sprawl_partition_log_start_offset", "Oldest offset still stored"),
    ("sprawl_partition_log_end_offset", "Next offset the leader will assign"),
    (
        "sprawl_partition_replication_lag_messages",
        "Messages appended but not yet below the high watermark (log end - HW): "
        "not yet durable here, or (a replicated partition) not yet on a quorum",
    ),
    ("sprawl_partition_tier_bytes", "Bytes of a partition per storage tier"),
)
#: The per-group families: name, help.
GROUP_FAMILIES = (
    ("sprawl_group_lag_messages", "Visible messages a group has not acked"),
    ("sprawl_group_in_flight_messages", "Messages leased to a group's consumers"),
)


def escape_label_value(value: str) -> str:
    """A label value as the text exposition format writes it (backslash, newline and
    double quote escaped; prometheus_client's own rule for label values)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def header(name: str, doc: str) -> str:
    """A gauge family's ``# HELP`` and ``# TYPE`` lines (help escaped as prometheus_client does)."""
    escaped = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {escaped}\n# TYPE {name} gauge\n"


_HEADERS = tuple(header(n, d) for n, d in PARTITION_FAMILIES)
_GROUP_HEADERS = tuple(header(n, d) for n, d in GROUP_FAMILIES)
_COLUMNS = tuple(itemgetter(i) for i in range(len(PARTITION_FAMILIES)))
_NAMES = tuple(n for n, _ in PARTITION_FAMILIES)
_TIER = "sprawl_partition_tier_bytes"


def partition_lines(
    topic: str, partition: int, hw: int, start: int, end: int, hot: int, segments: Any
) -> tuple[str, ...]:
    """The lines of one partition, one string per family of :data:`PARTITION_FAMILIES`, each
    without the family's name in front of its first line (the render puts it there: a
    10,000-partition node keeps 10,000 strings a family, 35 characters fewer each)."""
    lmdb = s3 = 0
    for s in segments:
        if s.remote is None:
            lmdb += s.bytes
        else:
            s3 += s.bytes
    p = escape_label_value(str(partition))
    t = escape_label_value(topic)
    labels = f'{{partition="{p}",topic="{t}"}} '
    tier = f'{{partition="{p}",tier='
    return (
        f"{labels}{floatToGoString(hw)}\n",
        f"{labels}{floatToGoString(start)}\n",
        f"{labels}{floatToGoString(end)}\n",
        f"{labels}{floatToGoString(max(0, end - hw))}\n",
        f'{tier}"memory",topic="{t}"}} {floatToGoString(hot)}\n'
        f'{_TIER}{tier}"lmdb",topic="{t}"}} {floatToGoString(lmdb)}\n'
        f'{_TIER}{tier}"s3",topic="{t}"}} {floatToGoString(s3)}\n',
    )


class PartitionExposition:
    """Writes the per-partition and per-group families of a broker's topics, keeping each
    partition's lines while its figures stand (see the module's docstring)."""

    def __init__(self) -> None:
        #: ``id(log)`` → (key, lines), from the last render (rebuilt each render: a
        #: deleted partition's entry goes at the next).
        self._kept: dict[int, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
        #: Partitions whose lines were (re)built, over this object's life (for tests and benchmarks).
        self.built = 0
        #: The hot tail bytes of every partition, summed by the last :meth:`render`.
        self.hot_bytes = 0
        #: The last render's partition families, encoded, and its partitions in order
        #: (``id(log)``): a render that builds no line and meets the same partitions in the
        #: same order sends these again (no join, no encoding: 5.5 MB at 10,000 partitions).
        self._text = b""
        self._order: list[int] = []
        #: Renders that sent the last partition families again (for tests and benchmarks).
        self.reused = 0

    def render(self, topics: Iterable[Topic]) -> bytes:
        """The text of :data:`PARTITION_FAMILIES` and :data:`GROUP_FAMILIES` for ``topics``, UTF-8."""
        kept = self._kept
        fresh: dict[int, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
        rows: list[tuple[str, ...]] = []
        order: list[int] = []
        lag: list[str] = []
        leased: list[str] = []
        hot_total = 0
        built = 0
        for t in topics:
            name = t.name
            for lg in t.logs:
                segs = lg.segments
                hot = lg.hot_bytes
                hot_total += hot
                key = (
                    name,
                    lg.partition,
                    lg.high_watermark,
                    lg.log_start,
                    lg.next_offset,
                    hot,
                    len(segs),
                    segs,
                )
                was = kept.get(id(lg))
                if was is not None and was[0] == key:
                    lines = was[1]
                else:
                    lines = partition_lines(name, lg.partition, key[2], key[3], key[4], hot, segs)
                    built += 1
                ident = id(lg)
                fresh[ident] = (key, lines)
                rows.append(lines)
                order.append(ident)
            if t.groups:
                hws = t.high_watermarks()
                labels = escape_label_value(name)
                for g in t.groups.values():
                    gl = f'{{group="{escape_label_value(g.name)}",topic="{labels}"}} '
                    lag.append(f"sprawl_group_lag_messages{gl}{floatToGoString(g.lag(hws))}\n")
                    leased.append(f"sprawl_group_in_flight_messages{gl}{floatToGoString(g.in_flight)}\n")
        self._kept = fresh
        self.built += built
        self.hot_bytes = hot_total
        if built == 0 and order == self._order and self._text:
            # (no line built, the same logs in the same order: the same lines, as sent last time)
            text = self._text
            self.reused += 1
        else:
            out: list[str] = []
            for head, name, column in zip(_HEADERS, _NAMES, _COLUMNS, strict=True):
                out.append(head)
                if rows:  # (each kept line lacks its family's name: joined in, C's work)
                    out.append(name)
                    out.append(name.join(map(column, rows)))
            text = self._text = "".join(out).encode("utf-8")
            self._order = order
        groups = [_GROUP_HEADERS[0], *lag, _GROUP_HEADERS[1], *leased]
        return b"".join((text, "".join(groups).encode("utf-8")))


#: The gzip level of a compressed scrape: level 1 packs a 10,000-partition node's 5.5 MB to
#: 315 kB in 12 ms of CPU; level 6 to 266 kB in 27-30 ms (tests/benchmarks/metrics_scrape.py).
GZIP_LEVEL = 1


def accepts_gzip(accept_encoding: bytes | str | None) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (``gzip`` or ``*`` listed without ``q=0``;
    an explicit ``gzip`` entry wins over ``*``)."""
    if not accept_encoding:
        return False
    if isinstance(accept_encoding, bytes):
        accept_encoding = accept_encoding.decode("latin-1")
    star: bool | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        ok = True
        for param in params.split(";"):
            k, _, v = param.partition("=")
            if k.strip().lower() == "q":
                try:
                    ok = float(v) > 0
                except ValueError:
                    ok = False
        if coding == "*":
            star = ok
        else:
            return ok
    return bool(star)
