"""Registers ``twistd sprawl`` (see ``sprawl.tap``)."""

from twisted.application.service import ServiceMaker

sprawl = ServiceMaker(
    "Sprawl",
    "sprawl.tap",
    "HTTP-native distributed pub/sub broker (partitioned, replicated, tiered)",
    "sprawl",
)
