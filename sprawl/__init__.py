"""Sprawl: HTTP-native distributed pub/sub on Twisted."""

__version__ = "0.1.0"
