"""Protect jobs: a whole source in, a protected copy out, with a record of what was done.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""
