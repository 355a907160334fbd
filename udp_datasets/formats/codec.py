"""What every format's codec shares: the unit of work, a chunk of records, the codec interface, and
the one output-name rule of protected images.

``udp_datasets.formats`` holds one module per format, each
owning its reading, its key rule and its writing: :mod:`~udp_datasets.formats.webdataset` (tar
shards), :mod:`~udp_datasets.formats.parquet` (Parquet shards and ``datasets`` slices written as
Parquet) and :mod:`~udp_datasets.formats.imagefolder` (PNG files + ``metadata.jsonl``);
:mod:`~udp_datasets.formats.units` cuts a source into work units and picks their codec, and
:mod:`~udp_datasets.formats.layouts` reads a protected folder of any of them back (``verify``).

Why a codec layer: the shard job (:mod:`udp_datasets.jobs.shard_job`) must not care whether a
unit of work is a WebDataset tar, a Parquet file or a slice of a ``datasets`` dataset. Each
codec reads its unit as :class:`Chunk` s (a batch of *records*, the things that are kept or
quarantined whole, and the *images* inside them, the payloads to protect) and writes the
records back with the protected PNGs in place of the images, everything else untouched.
Chunks are cut at record boundaries, so a tar sample's images are never split, and are
bounded (``batch_size`` images, 32 MiB or 4096 samples), so memory does not grow with a shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..sources.shards import Shard

MAX_CHUNK_BYTES = 32 << 20  # a tar chunk ends early at this many member bytes...
MAX_CHUNK_SAMPLES = 4096  # ...or samples (image-less samples weigh nothing otherwise)


def png_name(name: str) -> str:
    """The output name of a protected image, in every format: ``KEY.jpg`` -> ``KEY.png``,
    ``dir/KEY.left.jpeg`` -> ``dir/KEY.left.png``; ``.png`` stays, a name without an extension
    gains one. Only the base name's last extension changes (a dot in a folder name is kept)."""
    folder, slash, base = name.rpartition("/")
    head, dot, _ = base.rpartition(".")
    return f"{folder}{slash}{head if dot else base}.png"


@dataclass
class WorkUnit:
    """One shard of work. ``name`` is the output path relative to DST (posix)."""

    name: str
    kind: str  # "tar" | "parquet" | "hf"
    source: str  # where the input comes from (for the manifest and messages)
    shard: Shard | None = None
    index: int = 0  # hf: which slice
    count: int = 1  # hf: how many slices


@dataclass
class Chunk:
    """A batch of records (tar samples or table rows) read from one unit.

    Records are kept or quarantined whole; images are the payloads to protect. A tar sample
    may hold several images or none, so the two are listed apart and ``record_of_image[j]``
    says which record image j belongs to. ``image_keys`` are the images' sample keys (they
    seed the per-sample randomness and name the manifest rows; ``None``: the protector's
    default, the pixel hash). ``problems`` marks records refused before protection.
    """

    record_keys: list[str | None]  # per record: its key in error records (None: unknown)
    images: list[Any]  # per image: the encoded payload
    record_of_image: list[int]  # per image: the index of its record
    image_keys: list[str] | None  # per image
    image_names: list[str]  # per image: how messages name it (member name, "SHARD row N")
    records: Any  # what the codec writes back: the tar samples, or the Arrow table
    row_group: Any = 0  # Parquet: the input row group the records came from
    problems: dict[int, str] = field(default_factory=dict)  # record index -> reason
    rows: list[int] | None = None  # table rows: index within the unit, for error records

    def record_name(self, record: int) -> str:
        """How an error record names a record without a key: its first image's name."""
        for j, owner in enumerate(self.record_of_image):
            if owner == record:
                return self.image_names[j]
        return f"record {record}"


class ShardCodec:
    """What every shard codec shares: reading chunks, and a writer to a temporary file that is
    closed on success or aborted (the caller's :func:`~udp_datasets.sinks.atomic.atomic_file`
    then removes it)."""

    writer: Any = None

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def open(self, tmp: Path) -> None:
        raise NotImplementedError

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        """Write the records of ``chunk`` whose ``ok`` is true, with ``pngs`` (one per image)
        in place of their images."""
        raise NotImplementedError

    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
