"""Sprawl delivery package."""
