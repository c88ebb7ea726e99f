"""The clients' bounded splitter (:class:`sprawl.client.lines.BoundedSplitter`),
which the SSE parser and the lean stream decoders share: any cut of a stream
gives the pieces of the whole, the unfinished piece is bounded, and a piece
its consumer refuses leaves nothing of its chunk behind.  Fuzzed with
hypothesis, with the SSE parser fed the same way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.client.lines import BoundedSplitter
from sprawl.client.sse import SseParser, sse_events


class TooLong(Exception):
    pass


def _pieces(splitter: BoundedSplitter, chunks: list[bytes]) -> list[bytes]:
    return [p for c in chunks for p in splitter.feed(c)]


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)], strict=True)]


def test_pieces_between_separators_across_chunks() -> None:
    """A piece split over chunks comes whole once its separator arrives; the rest waits."""
    s = BoundedSplitter(b"\n\n", 100, TooLong)
    assert s.feed(b"a\nb\n") == []
    assert s.feed(b"\nc\n\n\n\nd") == [b"a\nb", b"c", b""]
    assert s.feed(b"\n\n") == [b"d"]


def test_crlf_is_read_as_lf_even_across_a_cut() -> None:
    """With ``crlf`` (SSE events) a CRLF split over two chunks is still a line end; without, a CR stays."""
    s = BoundedSplitter(b"\n\n", 100, TooLong, crlf=True)
    assert s.feed(b"data: 1\r\n\r") == []
    assert s.feed(b"\ndata: 2\r\n\r\n") == [b"data: 1", b"data: 2"]
    plain = BoundedSplitter(b"\n", 100, TooLong)
    assert plain.feed(b"x\r\n") == [b"x\r"]


def test_an_unfinished_piece_over_the_limit_raises() -> None:
    """The bound holds whatever the chunk finished; at the limit the piece is kept."""
    with pytest.raises(TooLong):
        BoundedSplitter(b"\n", 4, TooLong).feed(b"ab\ncdefg")
    s = BoundedSplitter(b"\n", 4, TooLong)
    assert s.feed(b"abcd") == [] and s.pending == 4
    assert s.feed(b"\n") == [b"abcd"] and s.pending == 0


@given(
    data=st.lists(st.sampled_from([b"a", b"\n", b"\r", b"xy", b"\n\n", b"\r\n"]), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    sep=st.sampled_from([b"\n", b"\n\n"]),
)
def test_any_cut_gives_the_pieces_of_the_whole(data: bytes, cuts: list[int], sep: bytes) -> None:
    """Fed in any chunks, the pieces are ``bytes.split``'s but the unfinished last."""
    got = _pieces(BoundedSplitter(sep, 10_000, TooLong), _cuts(data, cuts))
    assert got == data.split(sep)[:-1]
    crlf = _pieces(BoundedSplitter(sep, 10_000, TooLong, crlf=True), _cuts(data, cuts))
    assert crlf == data.replace(b"\r\n", b"\n").split(sep)[:-1]


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8), limit=st.integers(0, 40))
def test_the_unfinished_piece_never_passes_the_limit(data: bytes, cuts: list[int], limit: int) -> None:
    """Whatever arrives, the splitter keeps at most ``limit`` bytes; it raises at the
    first chunk after which the line still open is longer."""
    s = BoundedSplitter(b"\n", limit, TooLong)
    seen = 0
    for c in _cuts(data, cuts):
        seen += len(c)
        over = len(data[:seen].rsplit(b"\n", 1)[-1]) > limit
        if over:
            with pytest.raises(TooLong):
                s.feed(c)
            return
        s.feed(c)
        assert s.pending <= limit


@given(
    data=st.lists(
        st.sampled_from(
            [b"data: 1", b"data:x", b"event: e", b"id: 7", b": c", b"retry: 5", b"\n", b"\r\n", b"\xff"]
        ),
        max_size=30,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_the_sse_parser_reads_any_cut_as_the_whole(data: bytes, cuts: list[int]) -> None:
    """The SSE parser on the splitter: the events of any chunking are those of the
    stream read line by line, and its line bound holds (a ValueError, as before)."""
    whole = list(sse_events(data.splitlines(keepends=True)[: data.count(b"\n")]))
    parser = SseParser()
    got = [e for c in _cuts(data, cuts) for e in parser.feed(c)]
    assert got == whole
    with pytest.raises(ValueError, match="SSE line longer than 8 bytes"):
        SseParser(max_line=8).feed(data + b"z" * 9)
