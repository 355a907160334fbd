"""Publishing: verify a protected folder against its manifest, render its dataset card, push it to the Hub.

Its level, and so what it may import: ``layout.toml`` at the repository root.

The function that publishes is :func:`udp_datasets.publish.hub.publish`, importable from here
(``from udp_datasets.publish import publish``); ``udp_datasets.publish`` itself is this package.
"""

from .hub import publish

__all__ = ["publish"]
