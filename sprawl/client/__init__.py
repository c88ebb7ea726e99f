"""The Python client library of Sprawl, and the client code ``sprawlctl``, the bench engine,
the local-cluster launcher and the test harness share.  The guide is ``docs/client.md``.

Public API (import from ``sprawl.client``):

* :class:`SprawlClient` (:mod:`sprawl.client.api`) -- the blocking client: publish, fetch,
  subscribe with automatic resume, consumer groups, topics admin, fail-over, retries, TLS,
  tokens;
* :class:`TxSprawlClient` (:mod:`sprawl.client.txclient`) -- the same API on Twisted
  (Deferreds, through treq);
* :class:`Message`, :class:`Published`, :class:`FetchResult`, :func:`outgoing`
  (:mod:`sprawl.client.messages`) -- what the calls take and give;
* :class:`ClientError` (:mod:`sprawl.client.errors`) -- every failure.

Internals the tools share: :mod:`sprawl.client.calls` (each request as data),
:mod:`sprawl.client.blocking` (the JSON-over-HTTP transport), :mod:`sprawl.client.sse`,
:mod:`sprawl.client.topics`, :mod:`sprawl.client.aio` (the bench's minimal asyncio HTTP
client), :mod:`sprawl.client.aiows` (its pipelined WebSocket publisher) and :mod:`sprawl.client.bench` (the engine behind ``sprawlctl bench``).

Nothing here imports the server (layer "clients" of docs/architecture.md).
"""

from sprawl.client.api import SprawlClient, Subscription
from sprawl.client.errors import ClientError
from sprawl.client.messages import FetchResult, Message, Published, outgoing

__all__ = [
    "ClientError",
    "FetchResult",
    "Message",
    "Published",
    "SprawlClient",
    "Subscription",
    "TxSprawlClient",
    "outgoing",
]


def __getattr__(name: str) -> object:
    # The Twisted client imports treq and the reactor's machinery: only when asked for.
    if name == "TxSprawlClient":
        from sprawl.client.txclient import TxSprawlClient

        return TxSprawlClient
    raise AttributeError(name)
