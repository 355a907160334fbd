"""The protection method: tensors in, perturbed tensors and their 8-bit proof out.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""
