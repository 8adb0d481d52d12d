"""Shared wire formats of the chat mesh: the one place a format is defined."""
