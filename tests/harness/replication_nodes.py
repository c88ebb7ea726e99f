"""Replication wired end to end in one process, for the tests that need real
parts: three brokers on their own LMDB (``r0``-``r2``), their peer channels on
loopback TCP, and a controller node of its own holding the failover core of
one partition, ``orders``/0, replicated on all three."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from harness.reactor import the_reactor
from sprawl.config import NodeConfig
from sprawl.peer.tcp import PeerChannel
from sprawl.pubsub import Broker
from sprawl.replication.failover import FailoverCore
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore

IDS = ("r0", "r1", "r2")
CONTROLLER = "ctl"  # a node of its own: killing a replica never kills the controller


class Node:
    """A broker (none for the controller), its peer channel and replication service."""

    def __init__(self, nid: str, path: Path) -> None:
        reactor = the_reactor()
        self.id = nid
        self.store: Any = None
        self.broker: Any = None
        if nid != CONTROLLER:
            self.store = LmdbStore(str(path / nid / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
            self.store.open()
            self.broker = Broker(NodeConfig(data_dir=str(path / nid)), self.store, reactor, nid)
            self.broker.recover()
        self.channel = PeerChannel(nid, reactor, random.Random(1), backoff_base=0.01, backoff_max=0.05)
        self.port = reactor.listenTCP(0, self.channel.server_factory(), interface="127.0.0.1")
        self.service = ReplicationService(nid, self.channel, reactor, tick_seconds=0.02)
        self.alive = True

    async def close(self) -> None:
        """Stop the service, the channel, the listener, the broker and its store (once)."""
        if self.alive:
            self.alive = False
            await stop_parts(self)


async def stop_parts(node: Any) -> None:
    """Stop a test node's replication service, peer channel, listener and -- when it
    has one -- broker and store, in that order (the nodes here and the shared-tier
    tests' nodes, which hold the same parts)."""
    node.service.stop()
    await node.channel.close()
    await node.port.stopListening()
    if node.broker is not None:
        await node.broker.stop()
        await node.store.close()


@asynccontextmanager
async def replicated_orders(tmp_path: Path) -> AsyncIterator[dict[str, Node]]:
    """The four nodes, connected, ``orders``/0 placed on ``r0``-``r2`` with the
    controller's failover core, every service started; all closed at the end."""
    nodes = {nid: Node(nid, tmp_path) for nid in (*IDS, CONTROLLER)}
    try:
        for a in nodes.values():
            for b in nodes.values():
                if a is not b:
                    a.channel.set_address(b.id, "127.0.0.1", b.port.getHost().port)
        for nid in IDS:
            n = nodes[nid]
            await n.broker.put_topic("orders", {})
            n.service.replica("orders", 0, n.broker, CONTROLLER)
        nodes[CONTROLLER].service.controllers[("orders", 0)] = FailoverCore(IDS, beat_timeout_ticks=10)
        for n in nodes.values():
            n.service.start()
        yield nodes
    finally:
        for n in nodes.values():
            await n.close()
