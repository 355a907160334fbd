"""Protect jobs: a whole source in, a protected copy out, with a record of what was done.

Two jobs because data comes in two sizes: :mod:`~udp_datasets.jobs.dataset_job` maps a
``datasets`` source with the protector into one atomic output folder, and
:mod:`~udp_datasets.jobs.shard_job` protects sharded data shard by shard, resumable and on
many processes (over :mod:`~udp_datasets.jobs.codecs`, :mod:`~udp_datasets.jobs.background`
and :mod:`~udp_datasets.jobs.distributed`). Both write the same manifest
(:mod:`~udp_datasets.jobs.manifest`) and the same record (:mod:`~udp_datasets.jobs.summary`).
"""
