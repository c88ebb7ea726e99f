"""Sprawl log package."""
