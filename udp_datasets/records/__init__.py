"""Records: what a protect job leaves beside its data, and what every reader of it needs.

The manifest and its digest (:mod:`~udp_datasets.records.manifest`), the job summary with its
one mergeable tally (:mod:`~udp_datasets.records.summary`), the record's optional keyed signature
(:mod:`~udp_datasets.records.signing`), library versions (:mod:`~udp_datasets.records.versions`)
and the output file names (:mod:`~udp_datasets.records.names`).

Why a floor of its own, below ``jobs/``: the jobs write these records and ``publish/`` and
``evaluate/`` read them; with them in ``jobs/``, every reader imported the jobs. Nothing here
protects or publishes anything. This file imports nothing, so ``records.versions`` stays as light
as the package root needs it.
"""
