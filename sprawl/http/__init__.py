"""Sprawl http package."""
