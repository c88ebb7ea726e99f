"""The scale benchmark's retry of a 503 (``benchmarks.scale.send_retrying``):
bounded in time, honouring ``Retry-After``, counted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import scale


class Fake:
    """Answers from a script; a clock that moves only when the retry sleeps."""

    def __init__(self, answers: list[tuple[int, float | None]]) -> None:
        self.answers = list(answers)
        self.t = 0.0
        self.sent = 0
        self.slept: list[float] = []

    def send(self) -> tuple[int, bytes, float | None]:
        self.sent += 1
        status, after = self.answers.pop(0) if self.answers else (503, None)
        return status, b'{"error": {"code": "no_leader"}}' if status == 503 else b"{}", after

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s

    def now(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def counters() -> Iterator[None]:
    """Each test starts from empty retry counters."""
    scale.RETRIED.clear()
    scale.RETRY_WAIT.clear()
    yield
    scale.RETRIED.clear()
    scale.RETRY_WAIT.clear()


def test_six_503s_of_an_election_are_waited_out_and_counted() -> None:
    """The run no longer dies on six fast ``no_leader`` answers: the seventh try succeeds."""
    f = Fake([(503, None)] * 6 + [(201, None)])
    status, _ = scale.send_retrying(f.send, "PUT", sleep=f.sleep, now=f.now)
    assert status == 201
    assert f.sent == 7
    assert f.slept == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]  # doubling, capped at 2 s
    assert scale.RETRIED == {"PUT": 6}
    assert scale.RETRY_WAIT["PUT"] == pytest.approx(5.1)


def test_retry_after_is_honoured() -> None:
    """The server's ``Retry-After`` replaces the backoff."""
    f = Fake([(503, 3.0), (503, 0.0), (200, None)])
    status, _ = scale.send_retrying(f.send, "GET", sleep=f.sleep, now=f.now)
    assert status == 200
    assert f.slept == [3.0, 0.0]


def test_the_retry_gives_up_after_its_bound() -> None:
    """Answers that stay 503 are returned after ``retry_for`` seconds, the
    last wait cut to the deadline (bounded in time and so in tries)."""
    f = Fake([])
    status, _ = scale.send_retrying(f.send, "PUT", retry_for=30.0, sleep=f.sleep, now=f.now)
    assert status == 503
    assert sum(f.slept) == pytest.approx(30.0)
    assert max(f.slept) <= 2.0
    assert f.sent == len(f.slept) + 1 < 30


def test_other_statuses_are_not_retried() -> None:
    """A 4xx (or success) is answered at once."""
    f = Fake([(409, None)])
    assert scale.send_retrying(f.send, "PUT", sleep=f.sleep, now=f.now)[0] == 409
    assert f.slept == [] and scale.RETRIED == {}


def test_retry_after_header_parsing() -> None:
    """Seconds are read; absent or an HTTP date is None."""
    assert scale.retry_after_seconds("2") == 2.0
    assert scale.retry_after_seconds(None) is None
    assert scale.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
