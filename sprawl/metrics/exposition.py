"""The per-partition families of ``/metrics`` written as text directly, each partition's lines
kept while its figures stand (issue 23, metrics40, tidy41).

Through prometheus_client a 10,000-partition node's render took 450 ms of CPU (in process;
0.5-0.67 s on a loaded node): 70,000 ``add_metric`` calls and as many ``sample_line`` calls,
each validating and escaping the same label names again.  :class:`PartitionExposition`
writes the same text -- names, label order (sorted, as prometheus_client writes them),
label-value escaping and value formatting (:func:`~prometheus_client.utils.floatToGoString`)
identical -- and keeps each partition's lines while the log's change counter
(:attr:`~sprawl.log.partition.PartitionLog.changes`, bumped by every change of the log that can
move one of its figures) and its high watermark (also set from outside the log, by the
replication adapters) stand.  The key holds no object of the log's: nothing is kept alive
by it, and a list changed in place cannot hide a change.

A render can be taken in steps (:meth:`PartitionExposition.steps`): the lines of at most
:data:`SLICE` partitions are built between two steps, so a caller on the reactor can let it
turn between them (the first scrape after a start builds every partition's lines: 185-775 ms
in one turn at 10,000 partitions before, tidy41).  The groups' families (lag, leased
messages) are written every render, in its last step (a group's lag is computed).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
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


#: The most partitions whose lines one step of a render builds (:meth:`PartitionExposition.steps`):
#: ~6 ms of CPU in process, 10,000 partitions in ten steps.
SLICE = 1000
#: The most partitions a step looks at whose lines it keeps (a counter and a high watermark
#: compared each: ~0.3 us).
LOOKED_SLICE = 20_000

#: A partition's kept lines: the log's change counter and high watermark they were built at,
#: and the lines.
Kept = tuple[int, int, tuple[str, ...]]


class PartitionExposition:
    """Writes the per-partition and per-group families of a broker's topics, keeping each
    partition's lines while its figures stand (see the module's docstring)."""

    def __init__(self) -> None:
        #: ``id(log)`` → (changes, high watermark, lines), from the last render (rebuilt each
        #: render: a deleted partition's entry goes at the next).
        self._kept: dict[int, Kept] = {}
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
        #: The memory pools the last render's walk summed on the way (see :meth:`pools`).
        self._pools: tuple[int, int, int] | None = None
        #: Steps taken by renders that had to stop for the caller at least once (for tests
        #: and benchmarks: a render that fits one step counts none).
        self.steps_taken = 0

    def pools(self) -> tuple[int, int, int] | None:
        """``(hot records, encodings, dedup)``: the bytes of the memory budget's pools summed
        over the partitions by the last render's walk, as
        :meth:`~sprawl.pubsub.memory.MemoryBudget.memory_pools` counts them (None before the
        first).  ``/metrics``'s memory collector reads them instead of walking every
        partition again (~16 % of a scrape at 10,000, tidy41)."""
        return self._pools

    def render(self, topics: Iterable[Topic]) -> bytes:
        """The text of :data:`PARTITION_FAMILIES` and :data:`GROUP_FAMILIES` for ``topics``, UTF-8,
        all at once."""
        steps = self.steps(topics, slice_size=0)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def steps(self, topics: Iterable[Topic], slice_size: int = SLICE) -> Generator[None, None, bytes]:
        """:meth:`render` in steps: each ``next()`` builds the lines of at most ``slice_size``
        partitions (0: no limit) and looks at most :data:`LOOKED_SLICE` whose lines stand;
        the text is the generator's return value.  ``topics`` is taken as it is at the first
        step; a topic deleted before its turn is left out."""
        topics = list(topics)
        kept = self._kept
        fresh: dict[int, Kept] = {}
        rows: list[tuple[str, ...]] = []
        order: list[int] = []
        hot_total = records = encodings = dedup = 0
        built = counted = 0
        budget = slice_size or -1
        looked = LOOKED_SLICE if slice_size else -1
        stopped = 0
        grouped: list[Topic] = []
        for t in topics:
            if t.deleted:
                continue
            name = t.name
            if t.groups:
                grouped.append(t)
            dedup += t.dedup.memory + t.recent.memory
            for lg in t.logs:
                ident = id(lg)
                hot_total += lg.hot_bytes
                records += lg.hot_records_memory
                encodings += lg.account.encoded
                changes = lg.changes
                hw = lg.high_watermark
                was = kept.get(ident)
                if was is not None and was[0] == changes and was[1] == hw:
                    fresh[ident] = was
                    rows.append(was[2])
                    looked -= 1
                else:
                    lines = partition_lines(
                        name, lg.partition, hw, lg.log_start, lg.next_offset, lg.hot_bytes, lg.segments
                    )
                    fresh[ident] = (changes, hw, lines)
                    rows.append(lines)
                    built += 1
                    budget -= 1
                order.append(ident)
                if budget == 0 or looked == 0:
                    # (the caller's turn: the logs may change meanwhile -- a line built before
                    # a change keeps that change's counter, so the next render builds it again)
                    budget = slice_size
                    looked = LOOKED_SLICE
                    stopped += 1
                    self.built += built - counted
                    counted = built
                    yield
        self.steps_taken += stopped + 1 if stopped else 0
        lag: list[str] = []
        leased: list[str] = []
        for t in grouped:
            if not t.deleted:
                hws = t.high_watermarks()
                labels = escape_label_value(t.name)
                for g in t.groups.values():
                    gl = f'{{group="{escape_label_value(g.name)}",topic="{labels}"}} '
                    lag.append(f"sprawl_group_lag_messages{gl}{floatToGoString(g.lag(hws))}\n")
                    leased.append(f"sprawl_group_in_flight_messages{gl}{floatToGoString(g.in_flight)}\n")
        self._kept = fresh
        self.built += built - counted
        self.hot_bytes = hot_total
        self._pools = (records, encodings, dedup)
        if built == 0 and order == self._order and self._text:
            # (no line built, the same logs in the same order: the same lines, as sent last time)
            text = self._text
            self.reused += 1
        else:
            out: list[str] = []
            for head, fam, column in zip(_HEADERS, _NAMES, _COLUMNS, strict=True):
                out.append(head)
                if rows:  # (each kept line lacks its family's name: joined in, C's work)
                    out.append(fam)
                    out.append(fam.join(map(column, rows)))
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
