"""Integration: the system clock stepped back under a live cluster.

Twisted keeps its timers on ``time.time()``: without
:mod:`sprawl.steady_time`, a node whose clock is set back 60 s (NTP at
boot, a resumed VM, ``date -s``) sends no Raft heartbeat, no gossip probe
and ends no long poll for a minute.  The step is made with libfaketime
(Debian's ``faketime``) preloaded into one node only, its wall clock read
from a file the test rewrites (``FAKETIME_DONT_FAKE_MONOTONIC=1``: the
monotonic clock is left alone, as a real step leaves it).  Three nodes; the
stepped one is the Raft leader and leads the partition:

(n1 and n2 are drained, so the partition's leadership moves to n0.)

- its loops started before the step (Raft's, gossip's, the replication
  beats) go on: its look for steps logs the step once, about 5 s later;
- no election follows (the term is the same on every node, and the leader);
- quorum publishes through every node go on, and their timestamps on the
  stepped node do not go backwards;
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import NodeCluster, http_json, poll_until
from harness.acked import publish
from harness.nodes import require_tools
from harness.waits import scaled

pytestmark = pytest.mark.integration

TOPIC = "clock"
#: How far the stepped node's wall clock is set back.
STEP = 60


def _libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[NodeCluster, Path]]:
    """Three nodes, n0 (the founder: the Raft leader) with its wall clock read
    from a file (``+0`` at the start); a topic of one partition led by n0."""
    lib = _libfaketime()
    require_tools([] if lib else ["libfaketime"], "apt-get install faketime")
    assert lib is not None
    spec = tmp_path / "n0.faketime"
    spec.write_text("+0\n")
    c = NodeCluster(tmp_path, 3)
    c.nodes["n0"].env.update(
        LD_PRELOAD=lib,
        FAKETIME_TIMESTAMP_FILE=str(spec),
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        FAKETIME_CACHE_DURATION="1",  # (the file is read again at most once a second)
    )
    try:
        c.start()
        assert c.raft_leader() == "n0", c.raft_views()
        status, body = http_json(
            c.url("n0") + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=30
        )
        assert status in (200, 201), body

        # The partition led by n0 too (its timestamps are n0's): the others drained.
        for n in ("n1", "n2"):
            status, body = http_json(c.url("n0") + f"/v1/cluster/nodes/{n}/drain", "POST", {}, timeout=30)
            assert status == 200, body

        def led_by_n0() -> bool:
            pl = (c.placement("n0").get(TOPIC) or {}).get("0") or {}
            return (
                pl.get("leader") == "n0" and publish(c, "n0", TOPIC, f"warm-{time.monotonic_ns()}")[0] == 200
            )

        assert poll_until(led_by_n0, scaled(30.0)) is not None, c.placement("n0").get(TOPIC)
        yield c, spec
    finally:
        c.close()


def _date_lag(url: str) -> float:
    """How far behind this process's wall clock a node's HTTP ``Date`` header is (seconds)."""
    import email.utils
    import urllib.request

    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        date = email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp()
    return time.time() - date


def _stamps(c: NodeCluster, start: int, n: int) -> dict[int, int]:
    """The timestamps of the first ``n`` messages from offset ``start``, as n0
    serves them: offset -> timestamp.  Waits until n0 shows all ``n`` (an
    ``acks=quorum`` ack may come from the followers' writes a moment before
    the leader's own makes the records visible there)."""
    got: dict[int, int] = {}

    def shown() -> bool:
        status, body = c.get("n0", f"/v1/topics/{TOPIC}/messages?partition=0&from={start}&limit={n}", 10)
        if status == 200:
            got.update((int(m["offset"]), int(m["timestamp"])) for m in body["messages"])
        return len(got) >= n

    assert poll_until(shown, scaled(10.0)) is not None, (start, n, got)
    return got


def _terms(c: NodeCluster) -> dict[str, tuple[int, str | None]]:
    out = {}
    for n, v in c.raft_views().items():
        out[n] = (int(v.get("term") or 0), v.get("leader"))
    return out


def test_a_step_of_the_clock_back_freezes_no_timer(cluster: tuple[NodeCluster, Path]) -> None:
    """60 s back on the Raft and partition leader: its loops go on, nobody
    elects, publishes and their timestamps go on (see the module docstring)."""
    c, spec = cluster
    terms = _terms(c)
    assert len({t for t, _ in terms.values()}) == 1 and all(leader == "n0" for _, leader in terms.values())
    status, body = c.get("n0", f"/v1/topics/{TOPIC}/messages?partition=0&from=latest&limit=1", 10)
    assert status == 200, body
    end = body["next"]
    status, body = publish(c, "n0", TOPIC, "before-step")
    assert status == 200, body
    stamp_before = max(_stamps(c, end, 1).values())

    spec.write_text(f"-{STEP}\n")
    c.note(f"n0's wall clock set back {STEP} s")
    # The step shows (libfaketime reads the file again within a second):
    # n0's HTTP Date header (twisted.web reads time.time() itself) is a minute back.
    assert poll_until(lambda: _date_lag(c.url("n0")) > STEP / 2, scaled(10.0)) is not None, _date_lag(
        c.url("n0")
    )
    # Quorum publishes through every node; their timestamps do not go back.
    for i, n in enumerate(c.names * 3):
        status, body = publish(c, n, TOPIC, f"after-step-{i}", timeout=scaled(10.0))
        assert status == 200, (n, status, body)
    by_offset = _stamps(c, end, 1 + 3 * len(c.names))
    stamps = [by_offset[o] for o in sorted(by_offset)]
    assert stamps == sorted(stamps) and stamps[-1] >= stamp_before, stamps
    # n0's look for steps, a loop started before the step (as Raft's and
    # gossip's ticks were), comes round about 5 s later and logs it, once.
    # Frozen, n0's loops would wait out the step: no heartbeat for a minute,
    # and the followers would elect (an election timeout is 1-2 s).
    assert poll_until(lambda: "stepped back" in c.nodes["n0"].log_text(), scaled(20.0)) is not None
    assert c.nodes["n0"].log_text().count("stepped back") == 1
    # Nobody elected meanwhile: every node names n0 in the same term.
    assert _terms(c) == terms, (terms, _terms(c))
