"""Work units and their codecs: what the shard job cuts a source into, and which format reads each.

Part of :mod:`udp_datasets.formats` (see :mod:`~udp_datasets.formats.codec`). One input
shard (a tar or Parquet file) is one unit, named after it; a ``datasets`` source is cut into
units by :func:`dataset_units`, named after the Hub's Parquet layout from the data alone, so a
resumed job may use another number of processes. :func:`make_codec` gives each unit the codec
of its format.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from ..sources.shards import Shard
from .codec import ShardCodec, WorkUnit
from .parquet import TableCodec
from .webdataset import TarCodec


def make_codec(unit: WorkUnit, batch_size: int, *, image_extensions: frozenset[str], image_column: str | None,
               key_column: str | None, dataset: Any = None, drop_columns: tuple[str, ...] = ()) -> ShardCodec:
    """The codec for ``unit``: tar units by ``image_extensions``, tables by ``image_column``."""
    batch_size = max(batch_size, 1)
    if unit.kind == "tar":
        return TarCodec(unit, batch_size, image_extensions)
    return TableCodec(unit, batch_size, image_column, key_column, dataset=dataset, drop_columns=drop_columns)


def dataset_units(ds: Any, rows_per_shard: int = 10_000, split: str | None = None) -> list[WorkUnit]:
    """Work units for a ``datasets.Dataset`` (contiguous slices of ``rows_per_shard``) or an
    ``IterableDataset`` (its own shards), named like the Hub's Parquet layout:
    ``data/{split}-00000-of-00004.parquet``. The names depend on the data and
    ``rows_per_shard`` only, never on the world size, so a resumed job may use
    another number of processes."""
    import datasets

    split = split or (str(ds.split) if getattr(ds, "split", None) else "train")
    if isinstance(ds, datasets.IterableDataset):
        count = ds.n_shards
    else:
        count = max(1, math.ceil(len(ds) / rows_per_shard))
    return [WorkUnit(name=f"data/{split}-{i:05d}-of-{count:05d}.parquet", kind="hf",
                     source=f"{getattr(ds, 'info', None) and ds.info.dataset_name or 'dataset'}[{split}] "
                            f"shard {i}/{count}", index=i, count=count)
            for i in range(count)]


_DATASET_UNIT = re.compile(r"^(.*)-\d{5}-of-\d{5}\.parquet$")


def stale_dataset_units(marked: Iterable[str], units: list[WorkUnit]) -> list[str]:
    """Units an earlier run wrote for the same dataset split that these ``units`` do not hold
    (``data/train-00000-of-00002.parquet`` beside this run's ``...-of-00004``: another
    ``rows_per_shard``). Left in place they would put every row in the output twice."""
    current = {u.name for u in units}
    prefixes = {m.group(1) for u in units if u.kind == "hf" and (m := _DATASET_UNIT.match(u.name))}
    return sorted(n for n in marked if n not in current and (m := _DATASET_UNIT.match(n)) and m.group(1) in prefixes)


def shard_units(shards: Iterable[Shard]) -> list[WorkUnit]:
    """One work unit per input shard, named after it."""
    return [WorkUnit(name=s.name, kind=s.kind, source=s.url, shard=s) for s in shards]
