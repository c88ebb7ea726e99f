"""The benchmark engine behind ``sprawlctl bench``.

The engine publishes ``messages`` payloads of ``size`` bytes to a topic in batches from
``publishers`` concurrent keep-alive connections while ``subscribers`` SSE streams read the topic
from ``latest``, and measures:

* publish throughput (msgs/s, MB/s where MB = 10**6 bytes) and per-request publish latency;
* delivered throughput summed over all subscribers;
* end-to-end latency: every payload starts with its send time (``time.time_ns()`` as 19 ASCII
  digits) and is padded to ``size`` bytes, so a subscriber computes ``receive - send``.

The client must not be the bottleneck, so the hot path avoids general-purpose HTTP libraries:
a tiny HTTP/1.1 client on :mod:`asyncio` protocols writes pre-built requests and parses responses
with bytes operations, and the SSE reader never decodes the message JSON — one precompiled regular
expression pulls every send timestamp out of a received block at C speed. Subscribers run in a
child process by default (:mod:`multiprocessing`, spawn) so that parsing the fan-out does not
delay the publishers and their timestamps.

Use :func:`run_bench` from Python, or ``sprawlctl bench`` from a shell.
"""

from sprawl.client.bench.results import (
    MIN_SIZE,
    BenchConfig,
    BenchError,
    BenchResult,
    LatencySummary,
    make_payload,
    percentile,
)
from sprawl.client.bench.run import run_bench

__all__ = [
    "MIN_SIZE",
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "LatencySummary",
    "make_payload",
    "percentile",
    "run_bench",
]
