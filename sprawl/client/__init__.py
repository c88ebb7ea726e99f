"""Clients of a Sprawl node's HTTP API, shared by ``sprawlctl``, the bench engine, the
local-cluster launcher and the test harness.

* :mod:`sprawl.client.errors` -- :class:`ClientError`, the error text of an answer and the one
  ``Retry-After`` rule;
* :mod:`sprawl.client.blocking` -- the blocking JSON client (:mod:`http.client`: fail-over over
  several URLs, TLS with a CA bundle, bearer token, 429 retries);
* :mod:`sprawl.client.aio` -- the minimal asyncio HTTP/1.1 client of the bench's hot path;
* :mod:`sprawl.client.sse` -- the server-sent-events parser;
* :mod:`sprawl.client.topics` -- a topic description as ``docs/openapi.yaml`` defines it;
* :mod:`sprawl.client.bench` -- the benchmark engine behind ``sprawlctl bench``.

Nothing here imports the server (layer "clients" of docs/architecture.md).
"""
