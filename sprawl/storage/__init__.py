"""Sprawl storage package."""
