"""What a shard job is asked to do, written down once: :class:`ShardJobSpec`.

Why a spec of its own: the command line (``udp-datasets protect``), the ready pipelines (a YAML
file) and Python (:func:`udp_datasets.jobs.shard_job.run_shards`) all start the same job. Each
builds a :class:`ShardJobSpec` and hands it to :func:`udp_datasets.jobs.shard_job.run_shard_job`,
so every default lives here and nowhere else, and a setting one entry point leaves out
(``None``: a flag not given, a YAML key not set) means that default (:meth:`ShardJobSpec.create`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ..config import ConfigError, ProtectionConfig
from ..sources.keys import IMAGE_EXTENSIONS

DEFAULT_ROWS_PER_SHARD = 10_000


@dataclass(frozen=True)
class ShardJobSpec:
    """Protect every shard of ``source`` into ``destination`` (see :mod:`udp_datasets.jobs.shard_job`).

    Args:
        source: a shard spec (tar / Parquet path, brace pattern, glob, folder, URL, or a
            list of them), or a ``datasets.Dataset`` / ``IterableDataset``.
        destination: output folder (created; re-running into it resumes).
        config: the protection recipe; without ``surrogate`` one is fitted once.
        image_column: Parquet / dataset image column (default: the Hugging Face
            ``Image`` feature, else ``image``). Tar samples use ``image_extensions``.
        key_column: Parquet / dataset column whose values seed per-sample randomness
            (default: a ``__key__`` column if present, else the pixel hash, as
            :class:`~udp_datasets.Protector` does). Tar samples use their WebDataset key.
        image_extensions: tar member extensions that are images (any case, with or without the dot).
        drop_columns: image-like columns besides ``image_column`` to leave out of the output; a table
            with others is refused (:mod:`udp_datasets.sources.columns`).
        rows_per_shard: slice size for a ``datasets.Dataset`` source.
        split: the split a ``datasets`` source's output shards are named after (default: its own).
        overwrite: redo shards marked with another config (and write into a non-empty
            DST that is not a shard job's output).
        allow_errors: the error policy of the command line: quarantined samples end the command
            with status 0 instead of 3 (the job itself quarantines them either way).
        prefetch: chunks read ahead and queued for writing.
        progress: a progress bar on the main process.
        image_root: for a ``Dataset`` made from a local image or ``save_to_disk`` folder, that folder:
            its path-only image entries are read inside it only. Shards, Hub and streamed data have none
            (the default): their images come from their bytes, a path-only entry is quarantined unread.
        sign_key: key bytes to sign the job record with (``--sign-key``, :mod:`udp_datasets.records.signing`).
    """

    source: Any
    destination: str | os.PathLike
    config: ProtectionConfig
    image_column: str | None = None
    key_column: str | None = None
    image_extensions: Iterable[str] = IMAGE_EXTENSIONS
    drop_columns: Iterable[str] = ()
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    split: str | None = None
    overwrite: bool = False
    allow_errors: bool = False
    prefetch: int = 2
    progress: bool = True
    image_root: str | os.PathLike | None = None
    sign_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.config.caption_column is not None:  # a ConfigError: the command line says so in one line, exit 2
            raise ConfigError(
                f"caption_column={self.config.caption_column!r}: per-sample captions are read by the datasets path "
                "(`udp-datasets protect` on a dataset or image folder, `ds.map(protector)`), not yet by shard "
                "jobs; use a fixed --prompt template here")
        if isinstance(self.image_extensions, str) or isinstance(self.drop_columns, str):
            raise ConfigError("image_extensions and drop_columns are lists of names, not one string")
        if isinstance(self.rows_per_shard, bool) or not isinstance(self.rows_per_shard, int) or self.rows_per_shard < 1:
            raise ConfigError(f"rows_per_shard={self.rows_per_shard!r}: expected a whole number of rows >= 1")
        object.__setattr__(self, "image_extensions",
                           frozenset(str(e).lower().lstrip(".") for e in self.image_extensions))
        object.__setattr__(self, "drop_columns", tuple(self.drop_columns))

    @classmethod
    def create(cls, source: Any, destination: str | os.PathLike, config: ProtectionConfig,
               **settings: Any) -> ShardJobSpec:
        """A spec from settings where ``None`` means "the default" (a flag not given, a pipeline key
        not set), so the entry points never restate a default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown shard job setting(s) {unknown}")
        return cls(source, destination, config, **{k: v for k, v in settings.items() if v is not None})
