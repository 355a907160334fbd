"""Formats: one codec per format, owning its reading, its key rule, its output names and its writing.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""
