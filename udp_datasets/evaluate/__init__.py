"""Efficacy evaluation: does a protected dataset stop a model from learning it?

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""
