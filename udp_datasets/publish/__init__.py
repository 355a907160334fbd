"""Publishing: verify a protected folder against its manifest, render its dataset card, push it to the Hub.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""
