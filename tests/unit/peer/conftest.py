"""Fixtures of the peer channel's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_twisted

from harness import PeerNet


@pytest_twisted.async_yield_fixture
async def net() -> AsyncIterator[PeerNet]:
    """Peer channels over loopback on OS-chosen ports, every one closed at the end."""
    n = PeerNet()
    try:
        yield n
    finally:
        await n.close()
