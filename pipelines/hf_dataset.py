"""A Hugging Face dataset (Hub id or local folder) -> a protected dataset of Parquet shards.

    python pipelines/make_sample_data.py
    accelerate launch pipelines/hf_dataset.py --config pipelines/hf_dataset.yaml

The source may be a Hub id, a ``save_to_disk`` folder, an image folder or a folder of
data files; ``streaming: true`` reads it as an ``IterableDataset`` (one work unit per
stream shard), otherwise it is cut into slices of ``rows_per_shard`` rows. The output
is ``DESTINATION/data/{split}-00000-of-0000N.parquet`` (the Hub's own layout): load it
with ``load_dataset(DESTINATION)`` or publish it with ``upload_folder``.
"""

import sys

from udp_datasets.cli.pipelines import run_pipeline

if __name__ == "__main__":
    sys.exit(run_pipeline("hf_dataset"))
