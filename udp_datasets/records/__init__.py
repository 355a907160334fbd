"""Records: what a protect job leaves beside its data, and what every reader of it needs.

Its level, and so what it may import: ``layout.toml`` at the repository root. A floor of its own so
that ``publish/`` and ``evaluate/`` read a job's records without importing the jobs. This file
imports nothing, so ``records.versions`` stays as light as the package root needs it.
"""
